"""`email_domain: DOMAIN | [DOMAINS]` — the e-mail address's domain is one of those listed.

The domain is everything after the address's only '@', compared exactly (case-insensitive):
`city.example.lg.jp` does not match `evil-city.example.lg.jp` or `sub.city.example.lg.jp`.
An address with no '@' or several never matches, so `a@evil.example@city.example.lg.jp`
cannot pass as the city's domain (the ambiguity attack on naive `split('@')[-1]`).
"""

from __future__ import annotations

from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, expect, string_list, timeless
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts


def _domain(value: str, path: Path) -> str:
    if "@" in value or value.startswith(".") or value.endswith(".") or " " in value:
        raise expect(
            path,
            f"expected a domain like 'city.example.lg.jp' (no '@', no leading or trailing "
            f"dot), got {value!r}",
            f"'city.example.lg.jp' のようなドメインを指定してください（'@' や先頭・末尾の"
            f"'.' は不要です）。指定値: {value!r}",
        )
    return value.lower()


def _compile(argument: Any, path: Path) -> Predicate:
    domains = frozenset(string_list(argument, path, "a domain", "ドメイン", _domain))

    def email_domain(facts: Facts) -> bool:
        if facts.authenticated is not True:
            return False
        # Split at the FIRST '@': with several, the "domain" keeps an '@' and so can never
        # equal a listed domain (compile refuses '@' in them), unlike split('@')[-1].
        local, _, domain = facts.email.partition("@")
        return bool(local) and domain.lower() in domains

    return email_domain


CRITERION = Criterion(
    name="email_domain",
    passed_reason="email-authorized",
    failed_reason="email-unauthorized",
    summary_ja="メールアドレスの '@' 以降のドメインが一覧のいずれかと完全に一致します。",
    summary_en="Matches when the e-mail domain (after the only '@') is exactly one listed.",
    compile=_compile,
    reads_clock=timeless,
)
