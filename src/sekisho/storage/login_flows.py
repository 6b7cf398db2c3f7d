"""Pending sign-in flows: the rows between a first proof and the second factor.

A flow is keyed by the SHA-256 of the random value in the `__Host-sekisho-flow` cookie, so a
copy of the database cannot resume anybody's flow. Consuming a flow is one conditional
UPDATE (`consumed_at IS NULL AND expires_at > now`): of two workers that race to finish the
same flow, exactly one wins (replay of a finished flow). The decisions live in
`identity.flow`; this module only reads and writes rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from sekisho.errors import StorageError
from sekisho.storage.models import LoginFlow
from sekisho.storage.users import utc

_PURGE_AFTER = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class FlowRecord:
    id: str
    user_id: int
    mode: str
    primary_method: str
    idp: str
    methods: tuple[str, ...]
    rd: str
    session_id: str
    agent_hash: str
    source_ip: str
    auth_time: datetime
    created_at: datetime
    expires_at: datetime
    consumed_at: datetime | None
    failures: int


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"サインインの途中状態を読み書きできません / login flow storage failed: "
                        f"{type(exc).__name__}")


def create_flow(
    engine: Engine, *, flow_id: str, user_id: int, mode: str, primary_method: str, idp: str,
    methods: Iterable[str], rd: str, session_id: str, agent_hash: str, source_ip: str,
    auth_time: datetime, now: datetime, expires_at: datetime,
) -> None:
    """Store a new flow; flows that ended over an hour ago are purged on the way."""
    try:
        with engine.begin() as conn:
            conn.execute(delete(LoginFlow).where(LoginFlow.expires_at < now - _PURGE_AFTER))
            conn.execute(insert(LoginFlow).values(
                id=flow_id, user_id=user_id, mode=mode, primary_method=primary_method,
                idp=idp[:128], methods=",".join(dict.fromkeys(methods)), rd=rd[:4096],
                session_id=session_id, agent_hash=agent_hash, source_ip=source_ip[:64],
                auth_time=auth_time, created_at=now, expires_at=expires_at, consumed_at=None,
                failures=0))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def load_flow(engine: Engine, flow_id: str) -> FlowRecord | None:
    try:
        with engine.connect() as conn:
            row = conn.execute(select(LoginFlow.__table__)
                               .where(LoginFlow.id == flow_id)).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    if row is None:
        return None
    return FlowRecord(
        id=row.id, user_id=row.user_id, mode=row.mode, primary_method=row.primary_method,
        idp=row.idp, methods=tuple(m for m in row.methods.split(",") if m), rd=row.rd,
        session_id=row.session_id, agent_hash=row.agent_hash, source_ip=row.source_ip,
        auth_time=utc(row.auth_time), created_at=utc(row.created_at),
        expires_at=utc(row.expires_at),
        consumed_at=None if row.consumed_at is None else utc(row.consumed_at),
        failures=row.failures)


def consume_flow(engine: Engine, flow_id: str, now: datetime) -> bool:
    """Mark the flow used; False when it was already used or has expired (single use)."""
    try:
        with engine.begin() as conn:
            result = conn.execute(
                update(LoginFlow)
                .where(LoginFlow.id == flow_id, LoginFlow.consumed_at.is_(None),
                       LoginFlow.expires_at > now)
                .values(consumed_at=now))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return result.rowcount == 1


def record_failure(engine: Engine, flow_id: str, now: datetime, max_failures: int) -> int:
    """Count a wrong code; at `max_failures` the flow is ended. Returns the new count."""
    try:
        with engine.begin() as conn:
            conn.execute(update(LoginFlow).where(LoginFlow.id == flow_id)
                         .values(failures=LoginFlow.failures + 1))
            failures = conn.execute(select(LoginFlow.failures)
                                    .where(LoginFlow.id == flow_id)).scalar() or 0
            if failures >= max_failures:
                conn.execute(update(LoginFlow)
                             .where(LoginFlow.id == flow_id, LoginFlow.consumed_at.is_(None))
                             .values(consumed_at=now))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return int(failures)
