"""`Policy.clock`: whether a decision can change with the time of the request alone. The
gateway reuses decisions only of policies without it, so a wrong "no" would let a decision
outlive office hours or an auth-age limit; these tables pin it down."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest

from sekisho.policy import CRITERIA, compile_policy
from sekisho.policy.criteria import _base
from sekisho.policy.engine import guard


@pytest.mark.parametrize(("document", "clock"), [
    ({"allow": {"and": [{"group": ["staff"]}]}}, False),
    ({"allow": {"and": [{"mfa": True}, {"source_ip": ["192.0.2.0/24"]}]}}, False),
    ({"allow": {"and": [{"mfa": ["webauthn_uv"]}]}}, False),
    ({"allow": {"and": [{"mfa": {"methods": ["webauthn_uv"], "within": "15m"}}]}}, True),
    ({"allow": {"and": [{"auth_age": "8h"}]}}, True),
    ({"allow": {"and": [{"time": {"hours": ["08:30-17:15"]}}]}}, True),
    ({"allow": {"or": [{"group": ["staff"]}, {"not": [{"time": {"weekdays": ["sun"]}}]}]}},
     True),
    ({"allow": {"and": [{"group": ["staff"]}]},
      "deny": {"or": [{"time": {"weekdays": ["sat"], "holidays": "only"}}]}}, True),
    ({"deny": {"and": [{"always": True}]}}, False),
])
def test_a_policy_reads_the_clock_when_any_criterion_does(document: dict[str, Any],
                                                          clock: bool) -> None:
    assert compile_policy("p", document).clock is clock


def test_a_guarded_policy_reads_the_clock_when_either_part_does() -> None:
    timeless = compile_policy("p", {"allow": {"and": [{"group": ["staff"]}]}})
    timed = compile_policy("g", {"allow": {"and": [{"auth_age": 60}]}})
    assert guard(timed, timeless).clock and guard(
        compile_policy("g", {"allow": {"and": [{"mfa": True}]}}), timed).clock
    assert not guard(compile_policy("g", {"allow": {"and": [{"mfa": True}]}}), timeless).clock


def test_a_criterion_that_reads_the_time_never_claims_it_does_not() -> None:
    """Every criterion declared `timeless` must not touch `Facts.now` (or the proof times
    measured against it); one that does not say is taken to read the clock."""
    for name, criterion in CRITERIA.items():
        source = inspect.getsource(inspect.getmodule(criterion.compile))  # type: ignore[arg-type]
        reads_time = re.search(r"\bnow\b|\.proofs\b|\bauth_time\b|\bholidays\b", source)
        if criterion.reads_clock is _base.timeless:
            assert not reads_time, f"{name} reads the time but says it does not"
        else:
            assert reads_time, f"{name} says it may read the time: does it?"
    assert _base.Criterion("x", "a", "b", "", "", lambda a, p: lambda f: True).reads_clock(None)
