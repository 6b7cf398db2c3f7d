"""`email: ADDRESS | [ADDRESSES]` — the user's e-mail address, compared case-insensitively.

Each listed address must have exactly one '@' with text on both sides, so a typo such as
`tanaka.city.lg.jp` is a compile error rather than a rule that silently never matches.
"""

from __future__ import annotations

from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, expect, string_list, timeless
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts


def _address(value: str, path: Path) -> str:
    local, at, domain = value.partition("@")
    if not at or not local or not domain or "@" in domain:
        raise expect(
            path,
            f"expected an e-mail address like 'tanaka@city.example.lg.jp', got {value!r}",
            f"'tanaka@city.example.lg.jp' のようなメールアドレスを指定してください。"
            f"指定値: {value!r}",
        )
    return value.lower()


def _compile(argument: Any, path: Path) -> Predicate:
    addresses = frozenset(
        string_list(argument, path, "an e-mail address", "メールアドレス", _address)
    )

    def email(facts: Facts) -> bool:
        return facts.authenticated is True and facts.email.lower() in addresses

    return email


CRITERION = Criterion(
    name="email",
    passed_reason="email-authorized",
    failed_reason="email-unauthorized",
    summary_ja="メールアドレスが一覧のいずれかと一致します（大文字・小文字を区別しない）。",
    summary_en="Matches when the e-mail address is one of those listed (case-insensitive).",
    compile=_compile,
    reads_clock=timeless,
)
