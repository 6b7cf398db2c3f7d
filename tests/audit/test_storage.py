"""The repository: appends under the chain-head lock, streaming reads, several processes."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, func, select, text

from sekisho.audit.chain import GENESIS, canonical_json, verify
from sekisho.audit.log import utc_text
from sekisho.errors import StorageError
from sekisho.storage.audit_log import (
    ROWS_PER_STATEMENT,
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


def test_a_large_batch_goes_in_as_few_multi_row_statements(engine: Engine) -> None:
    """SQLite: multi-row INSERTs, never executemany. The sqlite3 module gives up the GIL
    around every executemany row, and a writer thread beside a busy event loop then waits a
    switch interval per row (~600 rows/s: `bench/bench_audit.py --busy`). PostgreSQL: no
    INSERT at all, the rows go by COPY (a multi-row INSERT was parsed and planned by the
    server each time: 16,000 events/s against 35,000–49,000 by COPY)."""
    statements: list[tuple[str, bool]] = []

    def seen(_conn: object, _cursor: object, statement: str, _parameters: object,
             _context: object, executemany: bool) -> None:
        if statement.startswith(("INSERT INTO audit_events", "INSERT INTO audit_reasons")):
            statements.append((statement.split(" (", maxsplit=1)[0], executemany))

    reasons = ["mfa-required", "source-ip-denied"]
    items = []
    for i in range(250):
        fields = {"route": "app", "decision": "deny", "reasons": reasons, "user": f"u{i}"}
        items.append(PendingRecord("access.decision", T0, f"u{i}",
                                   canonical_json("access.decision", T0, fields)))
    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert append_batch(engine, items) == 250
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    records = list(iter_records(engine))
    assert [r.actor for r in records] == [f"u{i}" for i in range(250)]
    assert verify(records, head=read_head(engine)).ok
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT route, decision FROM audit_events")).all()
        reason_rows = connection.execute(select(func.count()).select_from(
            text("audit_reasons"))).scalar()
    assert set(stored) == {("app", "deny")}
    assert reason_rows == 500
    per = ROWS_PER_STATEMENT
    if engine.dialect.name == "postgresql":
        assert statements == []  # COPY goes to the driver, not through INSERT statements
        return
    assert statements == ([("INSERT INTO audit_events", False)] * -(-250 // per)
                          + [("INSERT INTO audit_reasons", False)] * -(-500 // per))


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


def test_a_relayed_time_is_stored_exactly_as_the_column_type_stores_it(engine: Engine) -> None:
    """Relayed records carry their time as text; on SQLite the writer cuts the stored text
    from it instead of formatting the datetime again. Both ways must store the same value
    (and PostgreSQL, which takes the datetime, must store the same instant)."""
    moments = [datetime(2024, 4, 1, tzinfo=UTC), datetime(1999, 12, 31, 23, 59, 59, 999_999,
                                                          tzinfo=UTC),
               datetime(2026, 11, 26, 18, 33, 29, 492_526, tzinfo=UTC),
               datetime(2030, 2, 28, 7, 5, 3, 7, tzinfo=UTC)]
    items = []
    for index, moment in enumerate(moments):
        body = canonical_json("signout", moment, {"user": f"u{index}"})
        items.append(PendingRecord("signout", moment, f"u{index}", body))
        items.append(PendingRecord("signout", moment, f"u{index}", body, None,
                                   utc_text(moment)))
    items.append(PendingRecord("signout", T0, "odd", canonical_json("signout", T0, {}), None,
                               "not a utc_text"))  # not of the shape: formatted as before
    append_batch(engine, items)
    with engine.connect() as connection:
        stored = connection.execute(text(
            "SELECT occurred_at FROM audit_events ORDER BY seq")).scalars().all()
    assert stored[0::2][:len(moments)] == stored[1::2][:len(moments)]
    records = list(iter_records(engine))
    assert [r.occurred_at for r in records][:-1] == [m for m in moments for _ in (0, 1)]
    assert records[-1].occurred_at == T0
    assert search_records(engine, since=moments[2], until=moments[2] + timedelta(seconds=1))
