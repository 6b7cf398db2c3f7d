"""`always: true` — matches every request (a public route, or a deny-everything switch)."""

from __future__ import annotations

from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, timeless, true_only
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts

_check = true_only("always")


def _always(facts: Facts) -> bool:
    return True


def _compile(argument: Any, path: Path) -> Predicate:
    _check(argument, path)
    return _always


CRITERION = Criterion(
    name="always",
    passed_reason="always",
    failed_reason="always",
    summary_ja="すべてのリクエストに一致します。",
    summary_en="Matches every request.",
    compile=_compile,
    reads_clock=timeless,
)
