"""`never: true` — matches no request (switches a route off without deleting its policy)."""

from __future__ import annotations

from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, timeless, true_only
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts

_check = true_only("never")


def _never(facts: Facts) -> bool:
    return False


def _compile(argument: Any, path: Path) -> Predicate:
    _check(argument, path)
    return _never


CRITERION = Criterion(
    name="never",
    passed_reason="never",
    failed_reason="never",
    summary_ja="どのリクエストにも一致しません。",
    summary_en="Matches no request.",
    compile=_compile,
    reads_clock=timeless,
)
