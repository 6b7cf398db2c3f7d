"""Server-side sessions: rows keyed by the SHA-256 of the cookie token, read with their user.

Only digests are stored, so a copy of the database hands out no live session. The
repository decides nothing about validity (that is `identity.sessions`); it reads and writes
rows and returns plain values, joined with the user and the user's groups in two cheap
indexed queries on one connection.

`proofs` keeps, per authentication method, when it was last proven (JSON text; migration
0013), so a policy can ask for one method proven recently rather than any.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from sekisho.errors import StorageError
from sekisho.storage import changes
from sekisho.storage.models import Group, GroupMember, Session, User
from sekisho.storage.users import utc


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str  # sha256 hex of the token
    user_id: int
    username: str
    display_name: str
    email: str
    user_disabled: bool
    groups: frozenset[str]
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    auth_time: datetime
    auth_methods: frozenset[str]
    source_ip: str
    user_agent: str
    revoked_at: datetime | None
    revoked_reason: str
    mfa_time: datetime | None = None
    idp: str = ""
    # method → UTC time of its last proof (read-only); empty when none is known
    proofs: Mapping[str, datetime] = field(default_factory=lambda: _NONE, hash=False)


_NONE: Mapping[str, datetime] = MappingProxyType({})
MAX_PROOFS = 16  # methods per session: a handful exist; more is a corrupt or forged row

_COLUMNS = (
    Session.id, Session.user_id, User.username, User.display_name, User.email, User.disabled,
    Session.created_at, Session.last_seen_at, Session.expires_at, Session.auth_time,
    Session.auth_methods, Session.source_ip, Session.user_agent, Session.revoked_at,
    Session.revoked_reason, Session.mfa_time, Session.idp, Session.proofs,
)


def encode_proofs(proofs: Mapping[str, datetime]) -> str:
    """The stored form: compact JSON, methods sorted, times ISO 8601 in UTC."""
    return json.dumps({name: utc(when).isoformat() for name, when in sorted(proofs.items())},
                      separators=(",", ":"))


def decode_proofs(text: str | None) -> Mapping[str, datetime]:
    """The stored form read back, read-only. Entries that do not parse are left out: a
    method without a known time satisfies no timed policy (fail closed), and a step-up
    records a fresh one."""
    try:
        raw = json.loads(text or "{}")
    except ValueError:
        return _NONE
    if not isinstance(raw, dict) or len(raw) > MAX_PROOFS:
        return _NONE
    found: dict[str, datetime] = {}
    for name, when in raw.items():
        if not isinstance(when, str) or not 0 < len(name) <= 32:
            continue
        try:
            found[name] = utc(datetime.fromisoformat(when))
        except ValueError:
            continue
    return MappingProxyType(found)


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"セッションを読み書きできません / session storage failed: "
                        f"{type(exc).__name__}")


def _groups(conn: Connection, user_ids: Iterable[int]) -> dict[int, set[str]]:
    ids = sorted(set(user_ids))
    result: dict[int, set[str]] = {uid: set() for uid in ids}
    if not ids:
        return result
    rows = conn.execute(
        select(GroupMember.user_id, Group.name)
        .join(Group, Group.id == GroupMember.group_id)
        .where(GroupMember.user_id.in_(ids))
    ).all()
    for user_id, name in rows:
        result[user_id].add(name)
    return result


def _record(r: Sequence[Any], groups: set[str]) -> SessionRecord:
    return SessionRecord(
        id=r[0], user_id=r[1], username=r[2], display_name=r[3], email=r[4],
        user_disabled=bool(r[5]), groups=frozenset(groups), created_at=utc(r[6]),
        last_seen_at=utc(r[7]), expires_at=utc(r[8]), auth_time=utc(r[9]),
        auth_methods=frozenset(m for m in r[10].split(",") if m), source_ip=r[11],
        user_agent=r[12], revoked_at=None if r[13] is None else utc(r[13]),
        revoked_reason=r[14], mfa_time=None if r[15] is None else utc(r[15]), idp=r[16],
        proofs=decode_proofs(r[17]),
    )


def create_session(
    engine: Engine, *, session_id: str, user_id: int, now: datetime, expires_at: datetime,
    auth_time: datetime, methods: Iterable[str], source_ip: str = "", user_agent: str = "",
    mfa_time: datetime | None = None, idp: str = "", proofs: Mapping[str, datetime] = _NONE,
) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(insert(Session).values(
                id=session_id, user_id=user_id, created_at=now, last_seen_at=now,
                expires_at=expires_at, auth_time=auth_time,
                auth_methods=",".join(sorted(set(methods))), source_ip=source_ip[:64],
                user_agent=user_agent[:512], revoked_at=None, revoked_reason="",
                mfa_time=mfa_time, idp=idp[:128], proofs=encode_proofs(proofs),
            ))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def load_session(engine: Engine, session_id: str) -> SessionRecord | None:
    """The session row with its user and groups (two primary-key/indexed queries)."""
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(*_COLUMNS).join(User, User.id == Session.user_id)
                .where(Session.id == session_id)
            ).first()
            if row is None:
                return None
            groups = _groups(conn, [row[1]])
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return _record(row, groups[row[1]])


def touch(engine: Engine, session_id: str, now: datetime) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(update(Session).where(Session.id == session_id)
                         .values(last_seen_at=now))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def revoke(engine: Engine, session_id: str, now: datetime, reason: str) -> bool:
    """Mark one session revoked; False if unknown or already revoked.

    Announced on the change feed in the same transaction: every gateway process drops it
    from its cache and closes its open WebSockets at once (`storage.changes`).
    """
    try:
        with engine.begin() as conn:
            result = conn.execute(
                update(Session)
                .where(Session.id == session_id, Session.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason=reason[:128]))
            if result.rowcount > 0:
                changes.record(conn, changes.SESSION, [session_id], now)
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return result.rowcount > 0


def revoke_user(engine: Engine, user_id: int, now: datetime, reason: str) -> list[str]:
    """Revoke every live session of a user (announced as a change of the user); returns the
    revoked session ids."""
    try:
        with engine.begin() as conn:
            ids = list(conn.execute(
                select(Session.id).where(Session.user_id == user_id,
                                         Session.revoked_at.is_(None))).scalars())
            if ids:
                conn.execute(update(Session).where(Session.id.in_(ids))
                             .values(revoked_at=now, revoked_reason=reason[:128]))
                changes.record(conn, changes.USER, [user_id], now)
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return ids


def list_active(
    engine: Engine, now: datetime, idle_timeout: float, *, user_id: int | None = None,
    limit: int | None = None,
) -> list[SessionRecord]:
    """Sessions neither revoked nor past their absolute or idle limit, newest first (at most
    `limit` of them when given: the admin listing of a large installation)."""
    query = (
        select(*_COLUMNS).join(User, User.id == Session.user_id)
        .where(Session.revoked_at.is_(None), Session.expires_at > now,
               Session.last_seen_at > now - timedelta(seconds=idle_timeout))
        .order_by(Session.created_at.desc())
    )
    if user_id is not None:
        query = query.where(Session.user_id == user_id)
    if limit is not None:
        query = query.limit(limit)
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
            groups = _groups(conn, (row[1] for row in rows))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return [_record(row, groups[row[1]]) for row in rows]


def count_active(engine: Engine, now: datetime, idle_timeout: float) -> int:
    """How many sessions are live now (for the `sekisho_active_sessions` gauge)."""
    query = select(func.count()).select_from(Session).where(
        Session.revoked_at.is_(None), Session.expires_at > now,
        Session.last_seen_at > now - timedelta(seconds=idle_timeout))
    try:
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def find_by_prefix(engine: Engine, prefix: str, *, limit: int = 10) -> list[str]:
    """Session ids starting with a hex prefix (the CLI names sessions by their short id)."""
    prefix = prefix.lower()
    if not prefix or any(c not in "0123456789abcdef" for c in prefix):
        return []
    try:
        with engine.connect() as conn:
            return list(conn.execute(
                select(Session.id).where(Session.id.like(prefix + "%"))
                .order_by(Session.id).limit(limit)).scalars())
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
