"""`user: NAME | [NAMES]` — the signed-in user's name is one of the listed names (exact).

Identity criteria match only when `facts.authenticated` is true: if the gateway ever filled
a user name from a session it had not verified, the policy still refuses (defence in depth
against a session-confusion bug in the PEP).
"""

from __future__ import annotations

from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, string_list, timeless
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts


def _compile(argument: Any, path: Path) -> Predicate:
    names = frozenset(string_list(argument, path, "a user name", "ユーザー名"))

    def user(facts: Facts) -> bool:
        return facts.authenticated is True and facts.user in names

    return user


CRITERION = Criterion(
    name="user",
    passed_reason="user-authorized",
    failed_reason="user-unauthorized",
    summary_ja="ユーザー名が一覧のいずれかと一致します（大文字・小文字を区別）。",
    summary_en="Matches when the user name is one of those listed (case-sensitive).",
    compile=_compile,
    reads_clock=timeless,
)
