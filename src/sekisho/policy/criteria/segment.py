"""`segment: internet | lgwan | mynumber | [SEGMENTS]` — the route's 三層 segment.

The segment is a property of the route, not of the request, so this criterion lets one
policy shared by several routes treat them differently (e.g. deny `mynumber` outright).
Names are checked at compile time against the closed list: a misspelt `lgwn` in a `deny`
block would otherwise never match and silently open the segment it meant to close.
"""

from __future__ import annotations

from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, expect, string_list, timeless
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts

SEGMENTS = ("internet", "lgwan", "mynumber")


def _segment(value: str, path: Path) -> str:
    if value not in SEGMENTS:
        raise expect(
            path,
            f"unknown segment {value!r} (expected one of: {', '.join(SEGMENTS)})",
            f"不明なセグメント {value!r} です（{', '.join(SEGMENTS)} のいずれか）",
        )
    return value


def _compile(argument: Any, path: Path) -> Predicate:
    allowed = frozenset(string_list(argument, path, "a segment name", "セグメント名", _segment))

    def segment(facts: Facts) -> bool:
        return facts.segment in allowed

    return segment


CRITERION = Criterion(
    name="segment",
    passed_reason="segment-allowed",
    failed_reason="segment-denied",
    summary_ja="ルートのセグメント (internet・lgwan・mynumber) が一覧のいずれかなら一致します。",
    summary_en="Matches when the route's segment (internet, lgwan, mynumber) is one listed.",
    compile=_compile,
    reads_clock=timeless,
)
