"""Repository over `signing_keys`: the assertion signing keys and their lifecycle.

A key is *active* (signs) when it is the newest key without `retired_at`; it is *published*
(in the JWKS) while `retired_at` is unset or still in the future, so upstreams can verify
tokens signed just before a rotation. Private keys are stored as PKCS#8 PEM (see
docs/gateway.md for why, and how to protect the database).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from sekisho.errors import StorageError
from sekisho.storage.models import SigningKey


@dataclass(frozen=True, slots=True)
class StoredKey:
    kid: str
    algorithm: str
    private_pem: str
    public_jwk: str  # JSON text
    created_at: datetime
    retired_at: datetime | None


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # SQLite returns naive values


class SigningKeyRepository:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def all(self) -> list[StoredKey]:
        """Every key, newest first."""
        try:
            with self._engine.connect() as connection:
                query = select(SigningKey.__table__).order_by(
                    SigningKey.created_at.desc(), SigningKey.kid)
                rows = connection.execute(query).all()
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read signing keys: {type(exc).__name__}") from None
        return [
            StoredKey(r.kid, r.algorithm, r.private_pem, r.public_jwk,
                      _as_utc(r.created_at) or r.created_at, _as_utc(r.retired_at))
            for r in rows
        ]

    def add(self, key: StoredKey, *, retire_others_after: timedelta | None, now: datetime) -> None:
        """Insert `key`; with `retire_others_after`, schedule retirement of every other key."""
        try:
            with self._engine.begin() as connection:
                if retire_others_after is not None:
                    retire_at = now + retire_others_after
                    connection.execute(
                        update(SigningKey)
                        .where(SigningKey.retired_at.is_(None))
                        .values(retired_at=retire_at)
                    )
                connection.execute(insert(SigningKey).values(
                    kid=key.kid, algorithm=key.algorithm, private_pem=key.private_pem,
                    public_jwk=key.public_jwk, created_at=key.created_at, retired_at=None,
                ))
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot store a signing key: {type(exc).__name__}") from None

    def retire(self, kid: str, at: datetime) -> bool:
        try:
            with self._engine.begin() as connection:
                result = connection.execute(
                    update(SigningKey).where(SigningKey.kid == kid)
                    .values(retired_at=at)
                )
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot retire a signing key: {type(exc).__name__}") from None
        return bool(result.rowcount)
