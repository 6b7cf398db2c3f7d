"""Throttle counters repository on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from sekisho.storage import throttle

T0 = datetime(2026, 4, 1, tzinfo=UTC)


def _bump(old):
    return dataclasses.replace(old, failures=old.failures + 1, last_failure_at=T0,
                               locked_until=T0 if old.failures >= 1 else None)


def test_read_apply_reset(engine):
    empty = throttle.read_states(engine, ["account:x", "ip:1"])
    assert empty["account:x"] == throttle.ThrottleRecord("account:x")
    first = throttle.apply_failure(engine, "account:x", _bump)
    assert first.failures == 1 and first.locked_until is None
    second = throttle.apply_failure(engine, "account:x", _bump)
    assert second.failures == 2 and second.locked_until == T0
    state = throttle.read_states(engine, ["account:x"])["account:x"]
    assert state == throttle.ThrottleRecord("account:x", 2, T0, T0)
    throttle.reset(engine, "account:x")
    assert throttle.read_states(engine, ["account:x"])["account:x"].failures == 0
