"""Reading the audit log for people: filtered pages newest first, and the dashboard's counts.

Rule: every query here walks an index, so its cost follows the page (or the time window), not
the size of the log. Pages are newest first by seq; each filter has an index that yields its
records in seq order (migration 0011, docs/audit.md): actor, route, rare event types and
denials (partial indexes), reasons (`audit_reasons`). A partial index is used only when the
query repeats its condition literally: add `IS_RARE_TYPE` or `IS_DENIED` (public for that) to
a query of your own. The cursor is the seq of the last record shown and the next page
continues below it, so paging while events are appended neither repeats nor skips a record
that existed when the first page was read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    Table,
    and_,
    func,
    literal_column,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from sekisho.audit.chain import GENESIS, StoredRecord, VerifyResult, verify
from sekisho.audit.columns import SearchColumns, mismatch
from sekisho.errors import StorageError
from sekisho.storage.audit_log import ACTOR_MAX, read_head
from sekisho.storage.models import Base

EVENTS: Table = Base.metadata.tables["audit_events"]
REASONS: Table = Base.metadata.tables["audit_reasons"]
PAGE_MAX = 500
NARROW = 50_000  # records read before a time range is judged wide (`_sort_range`)
DECISIONS = ("allow", "deny")
ACCESS = "access.decision"
DENIAL_TYPES = (ACCESS, "websocket.closed")
# The partial indexes' conditions (storage.models.RARE / DENIED), written as literals.
IS_DENIED: ColumnElement[bool] = EVENTS.c.decision == literal_column("'deny'")
IS_RARE_TYPE: ColumnElement[bool] = EVENTS.c.event_type != literal_column(f"'{ACCESS}'")


@dataclass(frozen=True, slots=True)
class Filters:
    """What to search for; every given filter must hold. Times: `since` inclusive, `until`
    exclusive. `reason` finds denials and failures (reasons of allowed decisions are not
    indexed, see `audit.columns`)."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    route: str | None = None
    decision: str | None = None  # "allow" | "deny"
    reason: str | None = None
    event_type: str | None = None


class Row(NamedTuple):
    seq: int
    occurred_at: datetime  # aware, UTC
    event_type: str
    actor: str
    route: str
    decision: str
    body: str  # canonical JSON, exactly as hashed
    prev_hash: str
    hash: str

    def document(self) -> dict[str, Any]:
        parsed = json.loads(self.body)
        return parsed if isinstance(parsed, dict) else {}


_COLUMNS = (EVENTS.c.seq, EVENTS.c.occurred_at, EVENTS.c.event_type, EVENTS.c.actor,
            EVENTS.c.route, EVENTS.c.decision, EVENTS.c.body, EVENTS.c.prev_hash,
            EVENTS.c.hash)


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"監査ログを読めません / the audit log cannot be read: "
                        f"{type(exc).__name__}")


def utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _bind(engine: Engine, moment: datetime) -> datetime:
    # SQLite keeps naive UTC text; a bound aware value would compare as different text.
    moment = utc(moment)
    return moment.replace(tzinfo=None) if engine.dialect.name == "sqlite" else moment


def _row(row: Any) -> Row:
    return Row(int(row.seq), utc(row.occurred_at), row.event_type, row.actor, row.route,
               row.decision, row.body, row.prev_hash, row.hash)


def _time_only(filters: Filters) -> bool:
    return (filters.since is not None or filters.until is not None) and all(
        value is None for value in (filters.actor, filters.route, filters.decision,
                                    filters.reason, filters.event_type))


def _count(connection: Any, conditions: list[ColumnElement[bool]]) -> int:
    """How many records match, counted through the time index and stopped at `NARROW`."""
    capped = select(EVENTS.c.occurred_at).where(*conditions).limit(NARROW).subquery()
    return int(connection.execute(select(func.count()).select_from(capped)).scalar_one())


def _sort_range(engine: Engine, connection: Any, filters: Filters) -> bool:
    """Whether to read a time range through the time index and keep its newest (its records,
    index entries only) rather than walk the newest records down into it (every record newer
    than its end): whichever reads fewer, judged by two capped counts."""
    conditions = []
    if filters.since is not None:
        conditions.append(EVENTS.c.occurred_at >= _bind(engine, filters.since))
    if filters.until is not None:
        conditions.append(EVENTS.c.occurred_at < _bind(engine, filters.until))
    if _count(connection, conditions) < NARROW:
        return True
    if filters.until is None:
        return False  # the range reaches the newest records: walking finds a page at once
    return _count(connection, [EVENTS.c.occurred_at >= _bind(engine, filters.until)]) >= NARROW


def _query(engine: Engine, filters: Filters, before: int | None, limit: int, *,
           sort: bool | None = None) -> Select[Any]:
    """The page query: driven by the reasons table when a reason is given, else by the
    events table (the planner picks the index of the most selective condition). `sort`
    True reads a time range through the time index and keeps its newest (`seq + 0` is not an
    indexed column: no planner walks it); False walks the newest records down into the range
    (`coalesce(occurred_at)` matches no index: no planner reads the whole range and sorts it)."""
    conditions: list[ColumnElement[bool]] = []
    if filters.actor is not None:
        conditions.append(EVENTS.c.actor == filters.actor[:ACTOR_MAX])
    if filters.route is not None:
        conditions.append(EVENTS.c.route == filters.route)
    if filters.event_type is not None:
        conditions.append(EVENTS.c.event_type == filters.event_type)
        if filters.event_type != ACCESS:
            conditions.append(IS_RARE_TYPE)
    if filters.decision == "deny":
        conditions.append(IS_DENIED)
    elif filters.decision is not None:
        conditions.append(EVENTS.c.decision == filters.decision)
    driver = REASONS if filters.reason is not None else EVENTS
    moment: ColumnElement[datetime] = driver.c.occurred_at
    if sort is False:
        moment = func.coalesce(moment, moment)
    if filters.since is not None:
        conditions.append(moment >= _bind(engine, filters.since))
    if filters.until is not None:
        conditions.append(moment < _bind(engine, filters.until))
    if before is not None:
        conditions.append(driver.c.seq < before)
    query = select(*_COLUMNS)
    if filters.reason is not None:
        query = query.select_from(REASONS.join(EVENTS, EVENTS.c.seq == REASONS.c.seq))
        conditions.append(REASONS.c.reason == filters.reason)
    if sort:
        # The newest seqs of the range from the (occurred_at, seq) index alone, then those few
        # records by primary key.
        newest = (select(EVENTS.c.seq).where(*conditions).order_by((EVENTS.c.seq + 0).desc())
                  .limit(limit))
        return (select(*_COLUMNS).where(EVENTS.c.seq.in_(newest))
                .order_by(EVENTS.c.seq.desc()))
    return query.where(*conditions).order_by(driver.c.seq.desc()).limit(limit)


def search(engine: Engine, filters: Filters, *, before: int | None = None,
           limit: int = 50) -> tuple[list[Row], int | None]:
    """One page, newest first: (rows, cursor of the next page or None).

    `before` is the cursor of the previous page (the seq of its last record).
    """
    size = max(1, min(limit, PAGE_MAX))
    try:
        with engine.connect() as connection:
            # A time range far back (a day last month) would otherwise be reached by walking
            # every newer record.
            sort = _sort_range(engine, connection, filters) if _time_only(filters) else None
            rows = connection.execute(_query(engine, filters, before, size + 1,
                                             sort=sort)).all()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    page = [_row(row) for row in rows[:size]]
    return page, (page[-1].seq if len(rows) > size else None)


def iterate(engine: Engine, filters: Filters, *, batch: int = PAGE_MAX) -> Iterator[Row]:
    """Every matching record newest first, page by page (short reads, bounded memory)."""
    cursor: int | None = None
    while True:
        rows, cursor = search(engine, filters, before=cursor, limit=batch)
        yield from rows
        if cursor is None:
            return


# -- the dashboard ---------------------------------------------------------------------------


def _hour(engine: Engine, column: Any) -> Any:
    """The UTC hour of a time column, computed (and grouped on) by the database."""
    if engine.dialect.name == "sqlite":
        return func.substr(column, 1, 13)  # stored as "YYYY-MM-DD HH:MM:SS.ffffff", UTC
    return func.date_trunc("hour", func.timezone("UTC", column))


def _hour_start(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC)
    return datetime.strptime(str(value), "%Y-%m-%d %H").replace(tzinfo=UTC)


def _hours(engine: Engine, connection: Any, condition: ColumnElement[bool], since: datetime,
           until: datetime) -> dict[datetime, int]:
    hour = _hour(engine, EVENTS.c.occurred_at).label("hour")
    rows = connection.execute(
        select(hour, func.count()).where(
            condition, EVENTS.c.occurred_at >= _bind(engine, since),
            EVENTS.c.occurred_at < _bind(engine, until)).group_by(hour)).all()
    return {_hour_start(value): int(count) for value, count in rows}


class HourlyCounts(NamedTuple):
    """Counts per UTC hour (keys: the hour's start, aware UTC) in [since, until)."""

    signins: dict[datetime, int]
    signin_failures: dict[datetime, int]
    denials: dict[datetime, int]


def hourly_counts(engine: Engine, since: datetime, until: datetime, *,
                  failure_types: Sequence[str]) -> HourlyCounts:
    """Sign-ins, failed sign-in steps and access denials per hour: three covering range scans
    of the partial time indexes (rare types, denials), grouped by the database."""
    try:
        with engine.connect() as connection:
            return HourlyCounts(
                _hours(engine, connection,
                       and_(EVENTS.c.event_type == "signin.success", IS_RARE_TYPE), since, until),
                _hours(engine, connection, and_(EVENTS.c.event_type.in_(list(failure_types)),
                                                IS_RARE_TYPE), since, until),
                _hours(engine, connection, IS_DENIED, since, until))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def top_denial_reasons(engine: Engine, since: datetime, *, limit: int = 10
                       ) -> list[tuple[str, int]]:
    """The most frequent reasons of denials since `since`, most frequent first."""
    count = func.count().label("n")
    query = (select(REASONS.c.reason, count)
             .where(REASONS.c.occurred_at >= _bind(engine, since),
                    REASONS.c.event_type.in_(DENIAL_TYPES))
             .group_by(REASONS.c.reason).order_by(count.desc(), REASONS.c.reason).limit(limit))
    try:
        with engine.connect() as connection:
            return [(str(reason), int(n)) for reason, n in connection.execute(query).all()]
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def latest(engine: Engine, event_type: str) -> Row | None:
    """The newest record of one type (the last chain verification, …)."""
    rows, _ = search(engine, Filters(event_type=event_type), limit=1)
    return rows[0] if rows else None


def head_time(engine: Engine, seq: int) -> datetime | None:
    try:
        with engine.connect() as connection:
            found = connection.execute(select(EVENTS.c.occurred_at).where(
                EVENTS.c.seq == seq)).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return None if found is None else utc(found.occurred_at)


# -- verification ----------------------------------------------------------------------------


def records_with_columns(engine: Engine, *, batch: int = 5000
                         ) -> Iterator[tuple[StoredRecord, SearchColumns]]:
    """Every record in seq order with its stored search columns (reasons sorted), streamed
    in short reads: what the verification compares with the hashed bodies."""
    columns = (*_COLUMNS,)
    last = 0
    while True:
        try:
            with engine.connect() as connection:
                rows = connection.execute(select(*columns).where(EVENTS.c.seq > last)
                                          .order_by(EVENTS.c.seq).limit(batch)).all()
                found: dict[int, list[str]] = {}
                if rows:
                    # A record's reason rows carry its own time: the batch's time span finds
                    # them through the reasons' time index.
                    low = min(row.occurred_at for row in rows)
                    high = max(row.occurred_at for row in rows)
                    for reason, seq in connection.execute(
                            select(REASONS.c.reason, REASONS.c.seq).where(
                                REASONS.c.occurred_at >= low, REASONS.c.occurred_at <= high,
                                REASONS.c.seq > last, REASONS.c.seq <= rows[-1].seq)).all():
                        found.setdefault(int(seq), []).append(str(reason))
        except SQLAlchemyError as exc:
            raise _fail(exc) from None
        for row in rows:
            record = StoredRecord(int(row.seq), row.body, row.prev_hash, row.hash,
                                  row.event_type, utc(row.occurred_at), row.actor)
            yield record, SearchColumns(row.route, row.decision,
                                        tuple(sorted(found.get(record.seq, ()))))
        if len(rows) < batch:
            return
        last = int(rows[-1].seq)


def verify_stored(engine: Engine) -> tuple[VerifyResult, int]:
    """(result, head seq): the chain from seq 1 to the head row, and every record's search
    columns against its hashed body — a tampered `route`, `decision`, `actor` or reason row
    would hide a record from a search while the chain itself still verifies. The one
    verification of the database, for `sekisho audit verify` and the console alike."""
    head = read_head(engine) or (0, GENESIS)
    column_problem: list[tuple[int, str]] = []

    def records() -> Iterator[StoredRecord]:
        for record, stored in records_with_columns(engine):
            if not column_problem:
                problem = mismatch(record.body, stored)
                if problem:
                    column_problem.append((record.seq, problem))
            yield record

    result = verify(records(), head=head)
    if column_problem:
        seq, problem = column_problem[0]
        if result.ok or (result.first_broken_seq or 0) > seq:
            result = VerifyResult(False, seq - 1, seq, problem, seq - 1, "")
    return result, head[0]
