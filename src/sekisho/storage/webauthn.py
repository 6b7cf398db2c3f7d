"""Passkey rows: registered credentials and outstanding challenges (migration 0004).

Two atomic checks live here, in the database rather than in a process, so that several
gateway workers agree:
- `take_challenge` / `finish_assertion`: a challenge is deleted by one conditional DELETE
  that matches its purpose, its browser binding and its expiry; only the request whose
  DELETE removed the row succeeds (replay of an assertion, or a challenge carried to
  another browser, finds nothing).
- `finish_assertion`: the signature counter moves only forwards, by
  one conditional UPDATE; a counter that did not grow (a cloned authenticator) updates no
  row. It consumes the challenge in the same transaction (one commit per sign-in).
Credential ids and public keys are stored as base64url text; they are not secrets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from sekisho.errors import StorageError
from sekisho.storage.models import Base
from sekisho.storage.users import utc

_UTC = DateTime(timezone=True)
_COUNT = BigInteger().with_variant(Integer, "sqlite")


class WebAuthnCredential(Base):
    __tablename__ = "webauthn_credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    credential_id: Mapped[str] = mapped_column(String(1400), unique=True)  # base64url
    public_key: Mapped[str] = mapped_column(Text)  # COSE key, base64url
    sign_count: Mapped[int] = mapped_column(_COUNT, default=0)
    name: Mapped[str] = mapped_column(String(64), default="")
    transports: Mapped[str] = mapped_column(String(128), default="")  # comma-separated
    aaguid: Mapped[str] = mapped_column(String(36), default="")
    user_verified: Mapped[bool] = mapped_column(Boolean, default=False)  # at registration
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False)  # a synced passkey
    created_at: Mapped[datetime] = mapped_column(_UTC)
    last_used_at: Mapped[datetime | None] = mapped_column(_UTC, nullable=True)


class WebAuthnChallenge(Base):
    __tablename__ = "webauthn_challenges"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the challenge
    purpose: Mapped[str] = mapped_column(String(16))  # "register" | "mfa" | "passwordless"
    binding: Mapped[str] = mapped_column(String(64))  # sha256 of the flow/session/browser
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(_UTC)
    expires_at: Mapped[datetime] = mapped_column(_UTC, index=True)


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    id: int
    user_id: int
    credential_id: str
    public_key: str
    sign_count: int
    name: str
    transports: tuple[str, ...]
    aaguid: str
    user_verified: bool
    backed_up: bool
    created_at: datetime
    last_used_at: datetime | None


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"パスキーを読み書きできません / passkey storage failed: "
                        f"{type(exc).__name__}")


def _record(row: WebAuthnCredential) -> CredentialRecord:
    return CredentialRecord(
        id=row.id, user_id=row.user_id, credential_id=row.credential_id,
        public_key=row.public_key, sign_count=int(row.sign_count), name=row.name,
        transports=tuple(t for t in row.transports.split(",") if t), aaguid=row.aaguid,
        user_verified=bool(row.user_verified), backed_up=bool(row.backed_up),
        created_at=utc(row.created_at),
        last_used_at=None if row.last_used_at is None else utc(row.last_used_at))


_COLUMNS = tuple(WebAuthnCredential.__table__.columns)


def add_credential(engine: Engine, *, user_id: int, credential_id: str, public_key: str,
                   sign_count: int, name: str, transports: tuple[str, ...], aaguid: str,
                   user_verified: bool, backed_up: bool, now: datetime) -> int | None:
    """The new row's id, or None if this credential id is already registered (to anyone)."""
    try:
        with engine.begin() as conn:
            result = conn.execute(insert(WebAuthnCredential).values(
                user_id=user_id, credential_id=credential_id, public_key=public_key,
                sign_count=sign_count, name=name[:64], transports=",".join(transports)[:128],
                aaguid=aaguid[:36], user_verified=user_verified, backed_up=backed_up,
                created_at=now, last_used_at=None))
            key = result.inserted_primary_key
            return int(key[0]) if key else None
    except IntegrityError:
        return None
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def _select_records(engine: Engine, *where: object) -> list[CredentialRecord]:
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(*_COLUMNS).where(*where)  # type: ignore[arg-type]
                                .order_by(WebAuthnCredential.id)).all()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return [_record(row) for row in rows]  # type: ignore[arg-type]


def list_credentials(engine: Engine, user_id: int) -> list[CredentialRecord]:
    return _select_records(engine, WebAuthnCredential.user_id == user_id)


def has_credentials(engine: Engine, user_id: int) -> bool:
    return bool(list_credentials(engine, user_id))


def find_credential(engine: Engine, credential_id: str) -> CredentialRecord | None:
    found = _select_records(engine, WebAuthnCredential.credential_id == credential_id)
    return found[0] if found else None


def rename_credential(engine: Engine, user_id: int, row_id: int, name: str) -> bool:
    """Only the owner's row changes (another user's id updates nothing)."""
    try:
        with engine.begin() as conn:
            return conn.execute(update(WebAuthnCredential).where(
                WebAuthnCredential.id == row_id, WebAuthnCredential.user_id == user_id,
            ).values(name=name[:64])).rowcount == 1
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def remove_credential(engine: Engine, user_id: int, row_id: int) -> bool:
    try:
        with engine.begin() as conn:
            return conn.execute(delete(WebAuthnCredential).where(
                WebAuthnCredential.id == row_id,
                WebAuthnCredential.user_id == user_id)).rowcount == 1
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def remove_user_credentials(engine: Engine, user_id: int) -> int:
    """Every passkey of a user (administrator reset): how many were removed."""
    try:
        with engine.begin() as conn:
            conn.execute(delete(WebAuthnChallenge).where(WebAuthnChallenge.user_id == user_id))
            return int(conn.execute(delete(WebAuthnCredential).where(
                WebAuthnCredential.user_id == user_id)).rowcount)
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def _advance(row_id: int, new_count: int, now: datetime) -> Any:
    # Counters of 0 on both sides mean the authenticator keeps none (many synced passkeys).
    condition = (WebAuthnCredential.sign_count == 0) if new_count == 0 else (
        WebAuthnCredential.sign_count < new_count)
    return update(WebAuthnCredential).where(WebAuthnCredential.id == row_id, condition).values(
        sign_count=new_count, last_used_at=now)


def _live(challenge_id: str, purpose: str, binding: str, now: datetime) -> tuple[Any, ...]:
    table = WebAuthnChallenge
    return (table.id == challenge_id, table.purpose == purpose, table.binding == binding,
            table.expires_at > now)


def peek_challenge(engine: Engine, *, challenge_id: str, purpose: str, binding: str,
                   now: datetime) -> tuple[bool, int | None]:
    """(live, user id) without consuming it; `finish_assertion` consumes."""
    try:
        with engine.connect() as conn:
            row = conn.execute(select(WebAuthnChallenge.user_id).where(
                *_live(challenge_id, purpose, binding, now))).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return (row is not None, None if row is None else row[0])


def discard_challenge(engine: Engine, challenge_id: str) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(delete(WebAuthnChallenge).where(WebAuthnChallenge.id == challenge_id))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def finish_assertion(engine: Engine, *, challenge_id: str, purpose: str, binding: str,
                     now: datetime, row_id: int, new_count: int) -> str:
    """Consume the challenge and move the counter, atomically: "" | "challenge-invalid" |
    "sign-count" (the challenge is then consumed, the counter untouched)."""
    try:
        with engine.begin() as conn:
            taken = conn.execute(delete(WebAuthnChallenge).where(
                *_live(challenge_id, purpose, binding, now))).rowcount == 1
            if not taken:
                return "challenge-invalid"
            if conn.execute(_advance(row_id, new_count, now)).rowcount != 1:
                return "sign-count"
            return ""
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def create_challenge(engine: Engine, *, challenge_id: str, purpose: str, binding: str,
                     user_id: int | None, now: datetime, expires_at: datetime) -> None:
    """Store an outstanding challenge; expired ones are swept on the way."""
    try:
        with engine.begin() as conn:
            conn.execute(delete(WebAuthnChallenge).where(WebAuthnChallenge.expires_at <= now))
            conn.execute(insert(WebAuthnChallenge).values(
                id=challenge_id, purpose=purpose, binding=binding, user_id=user_id,
                created_at=now, expires_at=expires_at))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def take_challenge(engine: Engine, *, challenge_id: str, purpose: str, binding: str,
                   now: datetime) -> tuple[bool, int | None]:
    """(taken, user id): True only for the one request whose DELETE removed the live row."""
    table = WebAuthnChallenge
    match = _live(challenge_id, purpose, binding, now)
    try:
        with engine.begin() as conn:
            user_id = conn.execute(select(table.user_id).where(*match)).scalar_one_or_none()
            taken = conn.execute(delete(table).where(*match)).rowcount == 1
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return taken, user_id if taken else None
