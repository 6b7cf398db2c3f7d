"""Posture rows on SQLite and PostgreSQL: a stored report is announced on the change feed in
its own transaction, and a refused one (replay, older report) announces nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from sekisho.storage import changes, posture
from sekisho.storage.posture import PostureReplayed

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


def _store(engine: Engine, nonce: str, reported_at: datetime, profile: str = "standard") -> None:
    posture.record(engine, device_id="dev-1", nonce=nonce, reported_at=reported_at,
                   received_at=reported_at + timedelta(seconds=1),
                   nonce_expires=reported_at + timedelta(minutes=10),
                   report='{"device_id":"dev-1"}', profile=profile)


def _feed(engine: Engine, after: int) -> list[tuple[str, str]]:
    return [(row.kind, row.subject) for row in changes.since(engine, after)]


def test_every_stored_report_is_announced_and_a_refused_one_is_not(engine: Engine) -> None:
    start = changes.latest_id(engine)
    _store(engine, "n1", T0)  # first report: inserted
    _store(engine, "n2", T0 + timedelta(minutes=1), "quarantine")  # newer: updated
    # Open WebSockets of this device are re-checked on each (gateway.watch).
    assert _feed(engine, start) == [("device", "dev-1"), ("device", "dev-1")]
    stored = posture.latest(engine, "dev-1")
    assert stored is not None and stored.profile == "quarantine"

    after = changes.latest_id(engine)
    with pytest.raises(PostureReplayed):
        _store(engine, "n2", T0 + timedelta(minutes=2))  # spent nonce
    with pytest.raises(PostureReplayed):
        _store(engine, "n3", T0)  # older than the stored report
    # Nothing was stored, so nothing is announced (the row shares the rolled-back transaction).
    assert _feed(engine, after) == []
