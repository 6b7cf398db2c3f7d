"""`group: NAME | [NAMES]` — the signed-in user belongs to at least one listed group."""

from __future__ import annotations

from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, string_list, timeless
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts


def _compile(argument: Any, path: Path) -> Predicate:
    disjoint = frozenset(string_list(argument, path, "a group name", "グループ名")).isdisjoint

    def group(facts: Facts) -> bool:
        # Only a verified session's groups count (see user.py for the attack).
        return facts.authenticated is True and not disjoint(facts.groups)

    return group


CRITERION = Criterion(
    name="group",
    passed_reason="group-authorized",
    failed_reason="group-unauthorized",
    summary_ja="ユーザーが一覧のいずれかのグループに所属していれば一致します。",
    summary_en="Matches when the user is a member of any group listed.",
    compile=_compile,
    reads_clock=timeless,
)
