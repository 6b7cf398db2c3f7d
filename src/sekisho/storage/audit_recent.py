"""The newest audit records of one actor, or of one rare event type, read newest first.

`audit_log.search_records` streams oldest first, which is right for exports and wrong for
"my last ten sign-ins": on a log of millions of records it would read a user's whole history
to keep its tail. Here one query asks `actor = ? AND event_type IN (…) [AND occurred_at >= ?]
ORDER BY seq DESC LIMIT n`, the order of the search indexes of migration 0011 (`actor, seq`;
the partial `event_type, seq` index of the rare types, whose condition `IS_RARE_TYPE` is
repeated literally so that SQLite and PostgreSQL use it): the database walks the user's own
entries backwards from now and stops after `n` hits or at `since`.

A user's own page calls this on every visit: the cost must not grow with the size of the
log, only with the user's own records since their n-th newest match.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from sekisho.audit.chain import StoredRecord
from sekisho.errors import StorageError
from sekisho.storage.audit_log import ACTOR_MAX, EVENTS
from sekisho.storage.audit_query import ACCESS, IS_RARE_TYPE

MAX_LIMIT = 1000
_COLUMNS = (EVENTS.c.seq, EVENTS.c.body, EVENTS.c.prev_hash, EVENTS.c.hash,
            EVENTS.c.event_type, EVENTS.c.occurred_at, EVENTS.c.actor)


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"監査ログを読めません / the audit log cannot be read: "
                        f"{type(exc).__name__}")


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _bind(engine: Engine, moment: datetime) -> datetime:
    moment = _utc(moment)  # SQLite stores naive UTC
    return moment.replace(tzinfo=None) if engine.dialect.name == "sqlite" else moment


def _newest(engine: Engine, conditions: list[object], limit: int) -> list[StoredRecord]:
    query = (select(*_COLUMNS).where(*conditions)  # type: ignore[arg-type]
             .order_by(EVENTS.c.seq.desc())
             .limit(max(0, min(limit, MAX_LIMIT))))
    try:
        with engine.connect() as connection:
            rows = connection.execute(query).all()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return [StoredRecord(int(r.seq), r.body, r.prev_hash, r.hash, r.event_type,
                         _utc(r.occurred_at), r.actor) for r in rows]


def recent_by_actor(engine: Engine, actor: str, event_types: Iterable[str], *,
                    limit: int = 10, since: datetime | None = None) -> list[StoredRecord]:
    """The newest `limit` records whose actor is exactly `actor` and whose type is one of
    `event_types`, newest first."""
    types = sorted(set(event_types))
    if not types:
        return []
    conditions: list[object] = [EVENTS.c.actor == actor[:ACTOR_MAX],
                                EVENTS.c.event_type.in_(types)]
    if since is not None:
        conditions.append(EVENTS.c.occurred_at >= _bind(engine, since))
    return _newest(engine, conditions, limit)


def recent_of_type(engine: Engine, event_type: str, *, limit: int,
                   since: datetime | None = None) -> list[StoredRecord]:
    """The newest `limit` records of one event type, whoever the actor (for rare events whose
    actor column is empty, such as lockouts, which the caller filters by body)."""
    conditions: list[object] = [EVENTS.c.event_type == event_type]
    if event_type != ACCESS:
        conditions.append(IS_RARE_TYPE)  # lets the partial index of rare types serve it
    if since is not None:
        conditions.append(EVENTS.c.occurred_at >= _bind(engine, since))
    return _newest(engine, conditions, limit)
