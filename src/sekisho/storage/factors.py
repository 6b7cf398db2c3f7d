"""Second factors and recovery codes: rows only, with the two atomic checks that matter.

- `accept_step`: a TOTP code is accepted by one conditional UPDATE that succeeds only if the
  matched step is greater than the stored `last_step`. Two workers (or two racing requests)
  verifying the same code both compute the step, but only one UPDATE changes a row: replay
  is refused by the database, not by a per-process cache.
- `use_recovery_code`: one conditional UPDATE on `used_at IS NULL`, so a code works once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from sekisho.errors import StorageError
from sekisho.storage.models import Factor, RecoveryCode
from sekisho.storage.users import utc


@dataclass(frozen=True, slots=True)
class FactorRecord:
    id: int
    user_id: int
    kind: str
    name: str
    secret: str
    data: dict[str, Any]
    confirmed: bool
    last_step: int | None
    created_at: datetime
    last_used_at: datetime | None


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"認証要素を読み書きできません / factor storage failed: "
                        f"{type(exc).__name__}")


def _record(row: Any) -> FactorRecord:
    return FactorRecord(
        id=row.id, user_id=row.user_id, kind=row.kind, name=row.name, secret=row.secret,
        data=json.loads(row.data or "{}"), confirmed=bool(row.confirmed),
        last_step=row.last_step, created_at=utc(row.created_at),
        last_used_at=None if row.last_used_at is None else utc(row.last_used_at))


def add_factor(engine: Engine, *, user_id: int, kind: str, name: str, secret: str,
               data: dict[str, Any], now: datetime) -> int:
    """An unconfirmed factor (enrolment started); unconfirmed ones older than a day go."""
    try:
        with engine.begin() as conn:
            conn.execute(delete(Factor).where(
                Factor.user_id == user_id, Factor.confirmed.is_(False),
                Factor.created_at < now - timedelta(days=1)))
            result = conn.execute(insert(Factor).values(
                user_id=user_id, kind=kind, name=name[:128], secret=secret,
                data=json.dumps(data, sort_keys=True), confirmed=False, last_step=None,
                created_at=now, last_used_at=None))
            key = result.inserted_primary_key
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    assert key is not None
    return int(key[0])


def get_factor(engine: Engine, factor_id: int) -> FactorRecord | None:
    try:
        with engine.connect() as conn:
            row = conn.execute(select(Factor.__table__).where(Factor.id == factor_id)).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return None if row is None else _record(row)


def list_factors(engine: Engine, user_id: int, kind: str | None = None,
                 *, confirmed: bool = True) -> list[FactorRecord]:
    query = select(Factor.__table__).where(Factor.user_id == user_id,
                                           Factor.confirmed.is_(confirmed))
    if kind is not None:
        query = query.where(Factor.kind == kind)
    try:
        with engine.connect() as conn:
            rows = conn.execute(query.order_by(Factor.id)).all()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return [_record(row) for row in rows]


def has_factor(engine: Engine, user_id: int, kind: str) -> bool:
    try:
        with engine.connect() as conn:
            found = conn.execute(select(Factor.id).where(
                Factor.user_id == user_id, Factor.kind == kind,
                Factor.confirmed.is_(True)).limit(1)).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return found is not None


def accept_step(engine: Engine, factor_id: int, step: int, now: datetime, *,
                confirm: bool = False) -> bool:
    """Record `step` as used if it is newer than the last accepted one (atomic)."""
    values: dict[str, Any] = {"last_step": step, "last_used_at": now}
    query = update(Factor).where(
        Factor.id == factor_id, or_(Factor.last_step.is_(None), Factor.last_step < step))
    if confirm:
        values["confirmed"] = True
        query = query.where(Factor.confirmed.is_(False))
    else:
        query = query.where(Factor.confirmed.is_(True))
    try:
        with engine.begin() as conn:
            result = conn.execute(query.values(**values))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return result.rowcount == 1


def delete_factor(engine: Engine, user_id: int, factor_id: int) -> bool:
    try:
        with engine.begin() as conn:
            result = conn.execute(delete(Factor).where(Factor.id == factor_id,
                                                       Factor.user_id == user_id))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return result.rowcount == 1


def reset_user(engine: Engine, user_id: int) -> tuple[int, int]:
    """Remove every factor and recovery code of a user: (factors, unused codes) removed."""
    try:
        with engine.begin() as conn:
            factors = conn.execute(delete(Factor).where(
                Factor.user_id == user_id, Factor.confirmed.is_(True))).rowcount
            conn.execute(delete(Factor).where(Factor.user_id == user_id))
            codes = conn.execute(select(func.count()).select_from(RecoveryCode).where(
                RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))).scalar_one()
            conn.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return int(factors), int(codes)


def replace_recovery_codes(engine: Engine, user_id: int, hashes: Iterable[str],
                           now: datetime) -> None:
    """The user's recovery codes become exactly these (older ones stop working)."""
    try:
        with engine.begin() as conn:
            conn.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
            for code_hash in hashes:
                conn.execute(insert(RecoveryCode).values(
                    user_id=user_id, code_hash=code_hash, created_at=now, used_at=None))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def use_recovery_code(engine: Engine, user_id: int, code_hash: str, now: datetime) -> bool:
    try:
        with engine.begin() as conn:
            result = conn.execute(update(RecoveryCode).where(
                RecoveryCode.user_id == user_id, RecoveryCode.code_hash == code_hash,
                RecoveryCode.used_at.is_(None)).values(used_at=now))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return result.rowcount == 1


def unused_recovery_codes(engine: Engine, user_id: int) -> int:
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(RecoveryCode).where(
                RecoveryCode.user_id == user_id,
                RecoveryCode.used_at.is_(None))).scalar_one())
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
