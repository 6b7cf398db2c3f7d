"""OIDC federation rows: sign-in transactions, replay ledger, IdP identities, session links.

Four small tables (migration 0005), all read and written here and nowhere else:
- `oidc_transactions`: one authorization request between the redirect to the IdP and its
  callback, keyed by the SHA-256 of `state`; taken exactly once (one DELETE wins), so a
  replayed callback finds nothing.
- `oidc_replay`: digests of values that may be used once (ID-token `nonce`, logout-token
  `jti`) until they expire; a second insert of the same digest fails (replay).
- `oidc_identities`: (IdP, `sub`) → Sekisho user, so a user keeps their account when their
  e-mail changes at the IdP; `oidc_group_links` remembers which group memberships an IdP
  granted, so that the IdP can take them away again without touching manual memberships.
- `oidc_sessions`: Sekisho session (or pending second-factor flow) → IdP `sub`/`sid` and the
  ID token (for RP-initiated logout's `id_token_hint`), for back-channel logout.
Secrets kept here (nonce, code verifier) live at most the transaction lifetime.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    Row,
    String,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from sekisho.errors import StorageError
from sekisho.storage.models import Base, Group, GroupMember, User
from sekisho.storage.users import utc

_UTC = DateTime(timezone=True)


class OidcTransaction(Base):
    __tablename__ = "oidc_transactions"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    browser_hash: Mapped[str] = mapped_column(String(64))
    idp: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[str] = mapped_column(String(128))
    code_verifier: Mapped[str] = mapped_column(String(128))
    redirect_uri: Mapped[str] = mapped_column(String(1024))
    rd: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(_UTC)
    expires_at: Mapped[datetime] = mapped_column(_UTC, index=True)


class OidcReplay(Base):
    __tablename__ = "oidc_replay"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(_UTC, index=True)


class OidcIdentity(Base):
    __tablename__ = "oidc_identities"

    idp: Mapped[str] = mapped_column(String(64), primary_key=True)
    sub: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[datetime] = mapped_column(_UTC)
    last_login_at: Mapped[datetime] = mapped_column(_UTC)


class OidcGroupLink(Base):
    __tablename__ = "oidc_group_links"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    idp: Mapped[str] = mapped_column(String(64), primary_key=True)


class OidcSession(Base):
    __tablename__ = "oidc_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    flow_id: Mapped[str] = mapped_column(String(64), default="")  # pending 2nd factor
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    idp: Mapped[str] = mapped_column(String(64))
    sub: Mapped[str] = mapped_column(String(255))
    sid: Mapped[str] = mapped_column(String(255), default="")
    id_token: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(_UTC)
    expires_at: Mapped[datetime] = mapped_column(_UTC)

    __table_args__ = (
        Index("ix_oidc_sessions_idp_sub", "idp", "sub"),
        Index("ix_oidc_sessions_idp_sid", "idp", "sid"),
    )


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    idp: str
    browser_hash: str
    nonce: str
    code_verifier: str
    redirect_uri: str
    rd: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SessionLink:
    id: int
    session_id: str  # "" while the second factor is pending
    flow_id: str
    user_id: int
    idp: str
    sub: str
    sid: str
    id_token: str
    created_at: datetime


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"OIDC の状態を読み書きできません / OIDC storage failed: "
                        f"{type(exc).__name__}")


# -- transactions ---------------------------------------------------------------------------

def create_transaction(engine: Engine, *, state: str, browser: str, idp: str, nonce: str,
                       code_verifier: str, redirect_uri: str, rd: str, now: datetime,
                       expires_at: datetime) -> None:
    """Store a new authorization request; expired ones are purged on the way."""
    try:
        with engine.begin() as conn:
            conn.execute(delete(OidcTransaction).where(OidcTransaction.expires_at < now))
            conn.execute(insert(OidcTransaction).values(
                state_hash=digest(state), browser_hash=digest(browser), idp=idp, nonce=nonce,
                code_verifier=code_verifier, redirect_uri=redirect_uri, rd=rd[:4096],
                created_at=now, expires_at=expires_at))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def take_transaction(engine: Engine, state: str, now: datetime) -> TransactionRecord | None:
    """The live transaction for `state`, removed in the same step (single use)."""
    key = digest(state)
    try:
        with engine.begin() as conn:
            row = conn.execute(select(OidcTransaction)
                               .where(OidcTransaction.state_hash == key)).first()
            if row is None:
                return None
            record = TransactionRecord(
                idp=row.idp, browser_hash=row.browser_hash, nonce=row.nonce,
                code_verifier=row.code_verifier, redirect_uri=row.redirect_uri, rd=row.rd,
                created_at=utc(row.created_at), expires_at=utc(row.expires_at))
            # Two workers racing on one replayed callback: only one DELETE removes the row.
            taken = conn.execute(delete(OidcTransaction)
                                 .where(OidcTransaction.state_hash == key)).rowcount
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    if taken != 1 or record.expires_at <= now:
        return None
    return record


# -- replay ledger --------------------------------------------------------------------------

def count_transactions(engine: Engine) -> int:
    """Stored authorization transactions (live or not yet swept)."""
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(OidcTransaction))
                       .scalar_one())
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def use_once(engine: Engine, kind: str, value: str, *, now: datetime,
             expires_at: datetime) -> bool:
    """Record that `value` was used; False if it was used before and has not yet expired."""
    try:
        with engine.begin() as conn:
            conn.execute(delete(OidcReplay).where(OidcReplay.kind == kind,
                                                  OidcReplay.expires_at < now))
        with engine.begin() as conn:
            conn.execute(insert(OidcReplay).values(kind=kind, digest=digest(value),
                                                   expires_at=expires_at))
    except IntegrityError:
        return False
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return True


# -- identities and groups ------------------------------------------------------------------

def find_identity(engine: Engine, idp: str, sub: str) -> int | None:
    try:
        with engine.connect() as conn:
            value = conn.execute(select(OidcIdentity.user_id).where(
                OidcIdentity.idp == idp, OidcIdentity.sub == sub)).scalar()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return None if value is None else int(value)


def users_with_email(engine: Engine, email: str) -> list[str]:
    """Usernames whose account e-mail is `email` (compared case-insensitively)."""
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(User.username).where(
                func.lower(User.email) == email.lower()).limit(5)).scalars())
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def idp_subs_of_user(engine: Engine, idp: str, user_id: int) -> list[str]:
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(OidcIdentity.sub).where(
                OidcIdentity.idp == idp, OidcIdentity.user_id == user_id)).scalars())
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def record_identity(engine: Engine, *, idp: str, sub: str, user_id: int, email: str,
                    now: datetime) -> None:
    """Link (IdP, sub) to the user, or refresh the link's e-mail and last sign-in."""
    try:
        with engine.begin() as conn:
            changed = conn.execute(update(OidcIdentity).where(
                OidcIdentity.idp == idp, OidcIdentity.sub == sub).values(
                email=email[:320], last_login_at=now)).rowcount
            if not changed:
                conn.execute(insert(OidcIdentity).values(
                    idp=idp, sub=sub, user_id=user_id, email=email[:320], created_at=now,
                    last_login_at=now))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def sync_groups(engine: Engine, *, user_id: int, idp: str,
                desired: frozenset[str]) -> tuple[list[str], list[str]]:
    """Make the IdP-granted memberships equal `desired` (existing groups only).

    Returns (added, removed) group names. Memberships an administrator gave by hand are
    never removed; a group that does not exist in Sekisho is never created.
    """
    added: list[str] = []
    removed: list[str] = []
    try:
        with engine.begin() as conn:
            groups = dict(conn.execute(select(Group.name, Group.id)
                                       .where(Group.name.in_(sorted(desired)))).all())
            linked = dict(conn.execute(
                select(Group.name, Group.id).join(OidcGroupLink, OidcGroupLink.group_id == Group.id)
                .where(OidcGroupLink.user_id == user_id, OidcGroupLink.idp == idp)).all())
            member = set(conn.execute(select(GroupMember.group_id)
                                      .where(GroupMember.user_id == user_id)).scalars())
            for name, group_id in sorted(groups.items()):
                if group_id in member:
                    continue  # already a member (maybe by hand): not this IdP's to take away
                conn.execute(insert(GroupMember).values(group_id=group_id, user_id=user_id))
                if name not in linked:
                    conn.execute(insert(OidcGroupLink).values(
                        user_id=user_id, group_id=group_id, idp=idp))
                added.append(name)
            for name, group_id in sorted(linked.items()):
                if name in groups:
                    continue
                conn.execute(delete(OidcGroupLink).where(
                    OidcGroupLink.user_id == user_id, OidcGroupLink.group_id == group_id,
                    OidcGroupLink.idp == idp))
                conn.execute(delete(GroupMember).where(
                    GroupMember.user_id == user_id, GroupMember.group_id == group_id))
                removed.append(name)
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return added, removed


# -- session links --------------------------------------------------------------------------

def link_session(engine: Engine, *, session_id: str = "", flow_id: str = "", user_id: int,
                 idp: str, sub: str, sid: str, id_token: str, now: datetime,
                 expires_at: datetime) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(delete(OidcSession).where(OidcSession.expires_at < now))
            conn.execute(insert(OidcSession).values(
                session_id=session_id, flow_id=flow_id, user_id=user_id, idp=idp,
                sub=sub[:255], sid=sid[:255], id_token=id_token, created_at=now,
                expires_at=expires_at))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def _link(row: Row[Any]) -> SessionLink:
    return SessionLink(id=row.id, session_id=row.session_id, flow_id=row.flow_id,
                       user_id=row.user_id, idp=row.idp, sub=row.sub, sid=row.sid,
                       id_token=row.id_token, created_at=utc(row.created_at))


def links_for_logout(engine: Engine, idp: str, sub: str, sid: str) -> list[SessionLink]:
    """Links a logout token names: by `sid` when given (and `sub` too if both are given)."""
    query = select(OidcSession).where(OidcSession.idp == idp)
    if sid:
        query = query.where(OidcSession.sid == sid)
    if sub:
        query = query.where(OidcSession.sub == sub)
    try:
        with engine.connect() as conn:
            return [_link(row) for row in conn.execute(query).all()]
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def link_for_session(engine: Engine, session_id: str) -> SessionLink | None:
    """The link of exactly this session (set at sign-in, or when its flow completed)."""
    try:
        with engine.connect() as conn:
            row = conn.execute(select(OidcSession).where(
                OidcSession.session_id == session_id)).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return None if row is None else _link(row)


def attach_session(engine: Engine, flow_id: str, session_id: str) -> int:
    """The pending flow `flow_id` became `session_id`: record it on its link (rows changed)."""
    try:
        with engine.begin() as conn:
            result = conn.execute(update(OidcSession).where(
                OidcSession.flow_id == flow_id, OidcSession.session_id == "")
                .values(session_id=session_id))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return int(result.rowcount)


def delete_links(engine: Engine, ids: list[int]) -> None:
    if not ids:
        return
    try:
        with engine.begin() as conn:
            conn.execute(delete(OidcSession).where(OidcSession.id.in_(ids)))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


@dataclass(frozen=True, slots=True)
class IdentityLink:
    """One (IdP, sub) bound to a Sekisho user, as the admin console shows it."""

    idp: str
    sub: str
    email: str
    created_at: datetime
    last_login_at: datetime


def identities_of_user(engine: Engine, user_id: int) -> list[IdentityLink]:
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(OidcIdentity.idp, OidcIdentity.sub, OidcIdentity.email,
                       OidcIdentity.created_at, OidcIdentity.last_login_at)
                .where(OidcIdentity.user_id == user_id)
                .order_by(OidcIdentity.idp, OidcIdentity.sub)).all()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return [IdentityLink(r[0], r[1], r[2], utc(r[3]), utc(r[4])) for r in rows]


def remove_identities(engine: Engine, user_id: int, idp: str) -> int:
    """Unbind every `sub` of `idp` from the user (an administrator's decision): the next
    sign-in through that IdP is matched again from scratch. Returns how many were bound."""
    try:
        with engine.begin() as conn:
            result = conn.execute(delete(OidcIdentity).where(
                OidcIdentity.user_id == user_id, OidcIdentity.idp == idp))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return int(result.rowcount or 0)
