"""Rows of the admin API's tokens: created, listed, revoked; looked up by their public id.

A token reads `skt_<id>_<secret>`: the id is public (it names the token in lists and in the
audit log), the secret is 256 random bits shown once and stored only as its SHA-256. A fast
hash is right here, unlike for passwords: a slow hash (argon2) exists to make guessing a
*low-entropy* secret expensive after the database leaks, and nobody can enumerate 2^256
secrets however fast the hash; a slow hash would only hand every API call (and every guess
at the endpoint) a CPU bill. A copy of the database therefore grants no API access.

`last_used_at` is written at most once a minute per token (a conditional UPDATE), never on
every call. The rules (who may create, the longest life, what is audited) live in
`console.admin.tokens`; this module only reads and writes rows.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import DateTime, Engine, String, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from sekisho.errors import StorageError
from sekisho.storage.models import Base
from sekisho.storage.users import utc

PREFIX = "skt_"
ID_HEX = 16  # 64-bit public id: unique among a city's tokens, not a secret
SECRET_BYTES = 32  # 256 bits
TOUCH_INTERVAL = timedelta(minutes=1)


class ApiToken(Base):
    """An admin API token (migration 0010); `secret_hash` is the SHA-256 hex of the secret."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(160))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    name: str
    role: str
    secret_hash: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def live(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"API トークンを読み書きできません / API token storage failed: "
                        f"{type(exc).__name__}")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse(text: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token text, else None (never reaches storage)."""
    if not text.startswith(PREFIX) or len(text) > 128:
        return None
    token_id, sep, secret = text[len(PREFIX):].partition("_")
    if not sep or len(token_id) != ID_HEX or not secret.isascii() or len(secret) < 40:
        return None
    if any(c not in "0123456789abcdef" for c in token_id):
        return None
    return token_id, secret


_COLUMNS = (ApiToken.id, ApiToken.name, ApiToken.role, ApiToken.secret_hash,
            ApiToken.created_by, ApiToken.created_at, ApiToken.expires_at,
            ApiToken.last_used_at, ApiToken.revoked_at)


def _record(row: tuple[object, ...]) -> TokenRecord:
    (token_id, name, role, secret_hash, created_by, created_at, expires_at, last_used_at,
     revoked_at) = row
    return TokenRecord(
        str(token_id), str(name), str(role), str(secret_hash), str(created_by),
        utc(created_at), utc(expires_at),  # type: ignore[arg-type]
        utc(last_used_at) if last_used_at is not None else None,  # type: ignore[arg-type]
        utc(revoked_at) if revoked_at is not None else None)  # type: ignore[arg-type]


def create(engine: Engine, *, name: str, role: str, created_by: str, now: datetime,
           expires_at: datetime) -> tuple[TokenRecord, str]:
    """A new token: its record and its text (the only time the secret exists in clear)."""
    token_id = secrets.token_hex(ID_HEX // 2)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    record = TokenRecord(token_id, name, role, hash_secret(secret), created_by, now,
                         expires_at, None, None)
    try:
        with engine.begin() as conn:
            conn.execute(insert(ApiToken).values(
                id=record.id, name=name, role=role, secret_hash=record.secret_hash,
                created_by=created_by, created_at=now, expires_at=expires_at))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return record, f"{PREFIX}{token_id}_{secret}"


def get(engine: Engine, token_id: str) -> TokenRecord | None:
    try:
        with engine.connect() as conn:
            row = conn.execute(select(*_COLUMNS).where(ApiToken.id == token_id)).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return _record(tuple(row)) if row is not None else None


def list_tokens(engine: Engine) -> list[TokenRecord]:
    """Every token, newest first (revoked and expired ones too: they are history)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(*_COLUMNS).order_by(ApiToken.created_at.desc(),
                                                           ApiToken.id)).all()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return [_record(tuple(row)) for row in rows]


def revoke(engine: Engine, token_id: str, now: datetime) -> bool:
    """Revoke a live token; False when it does not exist or was already revoked."""
    try:
        with engine.begin() as conn:
            result = conn.execute(update(ApiToken).where(
                ApiToken.id == token_id, ApiToken.revoked_at.is_(None)).values(revoked_at=now))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return bool(result.rowcount)


def touch(engine: Engine, token_id: str, now: datetime) -> None:
    """Record a use, at most once per `TOUCH_INTERVAL` (the WHERE clause makes concurrent
    workers write once between them)."""
    try:
        with engine.begin() as conn:
            conn.execute(update(ApiToken).where(
                ApiToken.id == token_id,
                or_(ApiToken.last_used_at.is_(None),
                    ApiToken.last_used_at <= now - TOUCH_INTERVAL)).values(last_used_at=now))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
