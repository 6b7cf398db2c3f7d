"""The audit chain's repository: append a batch under the chain-head lock, read records back.

Rule: every append takes the single chain-head lock first (SQLite: the database write lock via
`BEGIN IMMEDIATE`; PostgreSQL: `SELECT … FOR UPDATE` on the `audit_head` row), computes the
links from the locked head and commits rows and head together. Gateway workers and the CLI
append from several processes at once; without this lock two writers could link to the same
predecessor and fork the chain.

Rows go in as multi-row INSERTs, not `executemany`: the sqlite3 module releases the GIL around
every row's step, and a writer thread sharing its process with a busy event loop then waits a
whole switch interval to get it back — about 600 rows a second instead of tens of thousands
(`bench/bench_audit.py --busy`). PostgreSQL takes the same statements (equal speed measured).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from functools import lru_cache
from itertools import chain
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, select, text

from sekisho.audit.chain import GENESIS, StoredRecord
from sekisho.audit.rows import ACTOR_MAX as ACTOR_MAX  # noqa: PLC0414 (re-exported)
from sekisho.audit.rows import PendingRecord as PendingRecord  # noqa: PLC0414 (re-exported)
from sekisho.audit.rows import chain_rows, utc
from sekisho.errors import StorageError
from sekisho.storage.models import Base

_NO_AUTOCHECKPOINT = "sekisho_no_autocheckpoint"  # connection.info key: pragma already set
EVENTS: Table = Base.metadata.tables["audit_events"]
HEAD: Table = Base.metadata.tables["audit_head"]


def _lock_head(connection: Connection, autocheckpoint: bool = True) -> tuple[int, str]:
    """Begin the transaction holding the chain-head lock; return (last seq, last hash)."""
    if connection.dialect.name == "sqlite":
        if not autocheckpoint and not connection.info.get(_NO_AUTOCHECKPOINT):
            # Checkpoints are run by the writer's `WalCheckpointer`, not inside its commits.
            connection.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
            connection.info[_NO_AUTOCHECKPOINT] = True
        # The database-wide write lock, taken before we read the head, so no other writer can
        # read the same head between our read and our commit.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        row = connection.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1)).first()
        if row is None:
            _check_no_records(connection)
            connection.execute(HEAD.insert().values(id=1, seq=0, hash=GENESIS))
            return 0, GENESIS
        return int(row.seq), str(row.hash)
    locked = select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1).with_for_update()
    row = connection.execute(locked).first()
    if row is None:
        # First append ever: create the row race-free, then lock it like everyone else.
        connection.execute(text(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :genesis) "
            "ON CONFLICT (id) DO NOTHING"), {"genesis": GENESIS})
        row = connection.execute(locked).one()
        if int(row.seq) == 0:
            _check_no_records(connection)
    return int(row.seq), str(row.hash)


def _check_no_records(connection: Connection) -> None:
    # Defence: a deleted head row must not silently restart the chain at seq 1.
    if connection.execute(select(func.max(EVENTS.c.seq))).scalar() is not None:
        raise StorageError(
            "監査ログの先頭行 (audit_head) がありません / the audit chain head row is missing "
            "while records exist; run `sekisho audit verify`", code="audit-head-missing")


def append_batch(engine: Engine, items: Sequence[PendingRecord], *,
                 autocheckpoint: bool = True) -> int:
    """Append `items` in order, in one transaction; return the seq of the last one.

    `autocheckpoint=False` (SQLite): this connection never checkpoints inside a commit; the
    caller runs a `storage.checkpoint.WalCheckpointer`."""
    if not items:
        raise ValueError("append_batch needs at least one item")
    with engine.connect() as connection:
        seq, prev = _lock_head(connection, autocheckpoint)
        # Rows go to the driver as plain tuples (`_insert`), times through the column type's
        # own bind processor: the per-row Core parameter handling was most of the audit
        # writer's CPU time.
        rows = chain_rows(items, seq, prev, sqlite=connection.dialect.name == "sqlite",
                          to_db=_time_binder(connection))
        _insert(connection, "audit_events", _EVENT_COLUMNS, rows.events)
        if rows.reasons:
            _insert(connection, "audit_reasons", _REASON_COLUMNS, rows.reasons)
        connection.execute(HEAD.update().where(HEAD.c.id == 1).values(seq=rows.seq,
                                                                      hash=rows.head))
        connection.commit()
    return rows.seq


_EVENT_COLUMNS = ("seq", "occurred_at", "event_type", "actor", "body", "prev_hash", "hash",
                  "route", "decision")
_REASON_COLUMNS = ("reason", "occurred_at", "seq", "event_type")
# Rows per statement: 100 × 9 columns stays under 999 parameters, the limit of the oldest
# SQLite builds, and a batch of 1,000 events still needs only ten statements.
ROWS_PER_STATEMENT = 100


def _insert(connection: Connection, table: str, columns: tuple[str, ...],
            rows: list[tuple[Any, ...]]) -> None:
    """Insert `rows` at the driver level (values already in their database form)."""
    if connection.dialect.name == "postgresql":
        _copy(connection, table, columns, rows)
        return
    mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        part = rows[start:start + ROWS_PER_STATEMENT]
        connection.exec_driver_sql(_statement(table, columns, len(part), mark),
                                   tuple(chain.from_iterable(part)))


def _copy(connection: Connection, table: str, columns: tuple[str, ...],
          rows: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: the rows by `COPY … FROM STDIN` in this transaction (psycopg 3 writes them
    in its C code; a multi-row INSERT had the server parse and plan every statement)."""
    driver = connection.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(
            f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:  # our constants
        for row in rows:
            copy.write_row(row)


@lru_cache(maxsize=256)
def _statement(table: str, columns: tuple[str, ...], count: int, mark: str) -> str:
    row = "(" + ", ".join([mark] * len(columns)) + ")"
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608 (our constants)
    return sql + ", ".join([row] * count)


def _time_binder(connection: Connection) -> Callable[[datetime], Any]:
    """The bind processor of `occurred_at` (one value for both tables, so their times
    compare equal), so times are stored exactly as a Core insert would store them."""
    dialect = connection.dialect
    processor = EVENTS.c.occurred_at.type.dialect_impl(dialect).bind_processor(dialect)
    return processor if processor is not None else _identity


def _identity(value: datetime) -> Any:
    return value


def check_writable(engine: Engine) -> None:
    """Take the chain-head lock and touch the records table, then roll back; raises if the
    append path is broken (used to decide that a failed audit log has recovered)."""
    with engine.connect() as connection:
        _lock_head(connection)
        connection.execute(select(EVENTS.c.seq).order_by(EVENTS.c.seq.desc()).limit(1)).all()
        connection.rollback()


def read_head(engine: Engine) -> tuple[int, str] | None:
    """The chain head (last seq, last hash), or None before the first append."""
    with engine.connect() as connection:
        row = connection.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1)).first()
    return None if row is None else (int(row.seq), str(row.hash))


def _bind_time(engine: Engine, moment: datetime) -> datetime:
    moment = utc(moment)
    return moment.replace(tzinfo=None) if engine.dialect.name == "sqlite" else moment


def search_records(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    event_type: str | None = None,
    actor: str | None = None,
    batch: int = 5000,
) -> Iterator[StoredRecord]:
    """Records in seq order, filtered; `since` inclusive, `until` exclusive.

    Streams page by page (keyset on seq, one short read per page), so exporting millions of
    records never holds them all in memory nor keeps one long transaction open.
    """
    conditions = []
    if since is not None:
        conditions.append(EVENTS.c.occurred_at >= _bind_time(engine, since))
    if until is not None:
        conditions.append(EVENTS.c.occurred_at < _bind_time(engine, until))
    if event_type is not None:
        conditions.append(EVENTS.c.event_type == event_type)
    if actor is not None:
        conditions.append(EVENTS.c.actor == actor[:ACTOR_MAX])
    columns = (EVENTS.c.seq, EVENTS.c.body, EVENTS.c.prev_hash, EVENTS.c.hash,
               EVENTS.c.event_type, EVENTS.c.occurred_at, EVENTS.c.actor)
    last = 0
    while True:
        query = (select(*columns).where(EVENTS.c.seq > last, *conditions)
                 .order_by(EVENTS.c.seq).limit(batch))
        with engine.connect() as connection:
            rows = connection.execute(query).all()
        for row in rows:
            yield StoredRecord(int(row.seq), row.body, row.prev_hash, row.hash, row.event_type,
                               utc(row.occurred_at), row.actor)
        if len(rows) < batch:
            return
        last = int(rows[-1].seq)


def iter_records(
    engine: Engine,
    since: datetime | None = None,
    until: datetime | None = None,
    batch: int = 5000,
) -> Iterator[StoredRecord]:
    """Every record (optionally within a time range) in seq order, streamed."""
    return search_records(engine, since=since, until=until, batch=batch)
