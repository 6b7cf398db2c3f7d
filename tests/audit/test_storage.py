"""The repository: appends under the chain-head lock, streaming reads, several processes."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from sekisho.audit.chain import GENESIS, canonical_json, verify
from sekisho.errors import StorageError
from sekisho.storage.audit_log import (
    PendingRecord,
    append_batch,
    iter_records,
    read_head,
    search_records,
)

CHILD = Path(__file__).with_name("_child.py")
T0 = datetime(2024, 4, 1, 0, 0, tzinfo=UTC)


def _item(user: str, at: datetime = T0, kind: str = "signout") -> PendingRecord:
    fields = {"user": user, "session": "s"}
    return PendingRecord(kind, at, user, canonical_json(kind, at, fields))


def test_batches_extend_one_chain(engine: Engine) -> None:
    assert read_head(engine) is None
    assert append_batch(engine, [_item("a"), _item("b")]) == 2
    assert append_batch(engine, [_item("c")]) == 3
    records = list(iter_records(engine, batch=2))
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].prev_hash == GENESIS
    assert records[0].occurred_at == T0
    head = read_head(engine)
    assert head == (3, records[-1].hash)
    assert verify(records, head=head).ok


def test_search_filters_by_time_type_and_actor(engine: Engine) -> None:
    append_batch(engine, [_item("a", T0), _item("b", T0 + timedelta(hours=1)),
                          _item("a", T0 + timedelta(hours=2), "signin.success")])
    found = search_records(engine, since=T0 + timedelta(minutes=30), batch=1)
    assert [r.seq for r in found] == [2, 3]
    assert [r.seq for r in search_records(engine, until=T0 + timedelta(hours=1))] == [1]
    assert [r.seq for r in search_records(engine, actor="a")] == [1, 3]
    assert [r.seq for r in search_records(engine, event_type="signin.success")] == [3]


def test_a_deleted_head_row_does_not_restart_the_chain(engine: Engine) -> None:
    append_batch(engine, [_item("a")])
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_head"))
    with pytest.raises(StorageError) as caught:
        append_batch(engine, [_item("b")])
    assert caught.value.code == "audit-head-missing"


@pytest.mark.slow
def test_two_processes_appending_at_once_keep_the_chain_linear(
        engine: Engine, database_url: str) -> None:
    batches, size = 300, 5
    start_at = str(time.time() + 3.0)
    children = [subprocess.Popen([sys.executable, str(CHILD), database_url, "append", name,
                                  str(batches), str(size), start_at]) for name in ("p1", "p2")]
    for child in children:
        assert child.wait(timeout=90) == 0
    records = list(iter_records(engine))
    assert len(records) == 2 * batches * size
    assert verify(records, head=read_head(engine)).ok
    actors = [r.actor for r in records]
    assert actors.count("p1") == actors.count("p2") == batches * size
    # Both really ran at once: their batches interleave in the chain.
    switches = sum(1 for a, b in itertools.pairwise(actors) if a != b)
    assert switches > 2
