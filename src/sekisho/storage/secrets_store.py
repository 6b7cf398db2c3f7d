"""Per-installation random secrets, generated at first use and shared through the database.

Every gateway worker and replica of one installation reads the same row, so a CSRF token
issued by one worker verifies on another. Two workers starting at once may both generate a
value; the primary key lets exactly one insert win and both then use the stored one.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from sekisho.errors import StorageError
from sekisho.storage.models import InstallationSecret

SECRET_BYTES = 32


def _read(engine: Engine, name: str) -> bytes | None:
    with engine.connect() as conn:
        value = conn.execute(
            select(InstallationSecret.value).where(InstallationSecret.name == name)).scalar()
    return None if value is None else base64.urlsafe_b64decode(value.encode("ascii"))


def get_or_create_secret(engine: Engine, name: str) -> bytes:
    """The installation's secret called `name` (32 random bytes), created if absent."""
    try:
        existing = _read(engine, name)
        if existing is not None:
            return existing
        fresh = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")
        try:
            with engine.begin() as conn:
                conn.execute(insert(InstallationSecret).values(
                    name=name, value=fresh, created_at=datetime.now(UTC)))
        except IntegrityError:
            pass  # another worker won the race; use its value
        stored = _read(engine, name)
    except SQLAlchemyError as exc:
        raise StorageError(f"インストール固有の鍵を読み書きできません / cannot read or create "
                           f"installation secret {name!r}: {type(exc).__name__}") from None
    if stored is None:
        raise StorageError(f"installation secret {name!r} vanished")
    return stored
