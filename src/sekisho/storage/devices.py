"""Rows of the device registry: enrolled devices and one-time enrolment codes.

Codes are stored only as the SHA-256 of the code, so a copy of the database enrols nobody.
A code is spent, and its device row written, in one transaction whose first statement is a
conditional UPDATE (`used_at IS NULL AND expires_at > now`): of two devices racing with the
same code, exactly one gets a row count of 1 (code replay). The rules (who may, what is
audited) live in `devices.enrolment`; this module only reads and writes rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from sekisho.errors import SekishoError, StorageError
from sekisho.storage import changes
from sekisho.storage.models import Device, EnrolmentCode, User
from sekisho.storage.users import utc

STATUSES = ("active", "suspended", "revoked")


class DeviceNotFound(SekishoError):
    code = "device-not-found"
    status = 404


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device_id: str
    inventory_id: str
    user_id: int
    username: str
    name: str
    status: str
    created_at: datetime
    cert_serial: str  # lower-case hex
    cert_not_after: datetime
    revoked_at: datetime | None
    revoked_reason: str


@dataclass(frozen=True, slots=True)
class CodeRecord:
    code_hash: str
    user_id: int
    username: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    device_id: str


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"端末の登録情報を読み書きできません / device registry storage failed: "
                        f"{type(exc).__name__}")


_DEVICE_COLUMNS = (
    Device.device_id, Device.inventory_id, Device.user_id, User.username, Device.name,
    Device.status, Device.created_at, Device.cert_serial, Device.cert_not_after,
    Device.revoked_at, Device.revoked_reason,
)


def _device(row: Any) -> DeviceRecord:
    return DeviceRecord(
        device_id=row.device_id, inventory_id=row.inventory_id, user_id=row.user_id,
        username=row.username, name=row.name, status=row.status,
        created_at=utc(row.created_at), cert_serial=row.cert_serial,
        cert_not_after=utc(row.cert_not_after),
        revoked_at=None if row.revoked_at is None else utc(row.revoked_at),
        revoked_reason=row.revoked_reason)


def insert_code(engine: Engine, *, code_hash: str, user_id: int, created_by: str,
                now: datetime, expires_at: datetime) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(insert(EnrolmentCode).values(
                code_hash=code_hash, user_id=user_id, created_by=created_by[:128],
                created_at=now, expires_at=expires_at, used_at=None, device_id=""))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def load_code(engine: Engine, code_hash: str) -> CodeRecord | None:
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(EnrolmentCode.__table__, User.username)
                .join(User, User.id == EnrolmentCode.user_id)
                .where(EnrolmentCode.code_hash == code_hash)).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    if row is None:
        return None
    return CodeRecord(
        code_hash=row.code_hash, user_id=row.user_id, username=row.username,
        created_by=row.created_by, created_at=utc(row.created_at),
        expires_at=utc(row.expires_at),
        used_at=None if row.used_at is None else utc(row.used_at), device_id=row.device_id)


def consume_code_and_add_device(
    engine: Engine, *, code_hash: str, now: datetime, device_id: str, inventory_id: str,
    user_id: int, name: str, cert_serial: str, cert_not_after: datetime,
) -> bool:
    """Spend the code and record the device atomically; False if the code was not usable."""
    try:
        with engine.begin() as conn:
            spent = conn.execute(
                update(EnrolmentCode)
                .where(EnrolmentCode.code_hash == code_hash, EnrolmentCode.user_id == user_id,
                       EnrolmentCode.used_at.is_(None), EnrolmentCode.expires_at > now)
                .values(used_at=now, device_id=device_id))
            if spent.rowcount != 1:
                return False
            conn.execute(insert(Device).values(
                device_id=device_id, inventory_id=inventory_id, user_id=user_id,
                name=name[:128], status="active", created_at=now, cert_serial=cert_serial,
                cert_not_after=cert_not_after, revoked_at=None, revoked_reason=""))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return True


def get_device(engine: Engine, device_id: str) -> DeviceRecord | None:
    try:
        with engine.connect() as conn:
            row = conn.execute(select(*_DEVICE_COLUMNS).join(User, User.id == Device.user_id)
                               .where(Device.device_id == device_id)).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return None if row is None else _device(row)


def require_device(engine: Engine, device_id: str) -> DeviceRecord:
    found = get_device(engine, device_id)
    if found is None:
        raise DeviceNotFound(f"端末が見つかりません / no such device: {device_id}")
    return found


def list_devices(engine: Engine, user_id: int | None = None) -> list[DeviceRecord]:
    query = select(*_DEVICE_COLUMNS).join(User, User.id == Device.user_id)
    if user_id is not None:
        query = query.where(Device.user_id == user_id)
    try:
        with engine.connect() as conn:
            rows = conn.execute(query.order_by(Device.created_at, Device.id)).all()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return [_device(row) for row in rows]


def page_devices(engine: Engine, *, user_id: int | None = None, status: str | None = None,
                 before: int | None = None, limit: int = 50
                 ) -> tuple[list[DeviceRecord], int | None]:
    """Newest devices first, one page: (devices, cursor of the next page or None).

    Keyset on the row id, so a page costs the same however many devices are registered."""
    conditions: list[Any] = []
    if user_id is not None:
        conditions.append(Device.user_id == user_id)
    if status is not None:
        conditions.append(Device.status == status)
    if before is not None:
        conditions.append(Device.id < before)
    size = max(1, min(limit, 500))
    query = (select(*_DEVICE_COLUMNS, Device.id).join(User, User.id == Device.user_id)
             .where(*conditions).order_by(Device.id.desc()).limit(size + 1))
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    cursor = int(rows[size - 1].id) if len(rows) > size else None
    return [_device(row) for row in rows[:size]], cursor


def resume(engine: Engine, device_id: str, *, now: datetime) -> bool:
    """A suspended device becomes active again (its certificate leaves the CRL); False when it
    was not suspended. A revoked device is never resumed. Announced on the change feed."""
    return _update(engine, device_id, Device.status == "suspended", announce=now,
                   status="active", revoked_at=None, revoked_reason="")


def rename_device(engine: Engine, device_id: str, name: str) -> DeviceRecord:
    _update(engine, device_id, Device.device_id == device_id, name=name[:128])
    return require_device(engine, device_id)


def set_status(engine: Engine, device_id: str, status: str, *, now: datetime,
               reason: str = "") -> bool:
    """Suspend or revoke; False when nothing changed. A revoked device stays revoked."""
    if status not in ("suspended", "revoked"):
        raise ValueError(status)
    allowed = ("active",) if status == "suspended" else ("active", "suspended")
    # Announced on the change feed in the same transaction: every gateway process forgets
    # the device's cached standing and closes its open WebSockets at once.
    return _update(engine, device_id, Device.status.in_(allowed), announce=now,
                   status=status, revoked_at=now, revoked_reason=reason[:128])


def _update(engine: Engine, device_id: str, condition: Any, *,
            announce: datetime | None = None, **values: Any) -> bool:
    try:
        with engine.begin() as conn:
            result = conn.execute(update(Device)
                                  .where(Device.device_id == device_id, condition)
                                  .values(**values))
            if announce is not None and result.rowcount == 1:
                changes.record(conn, changes.DEVICE, [device_id], announce)
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    if result.rowcount == 0 and get_device(engine, device_id) is None:
        raise DeviceNotFound(f"端末が見つかりません / no such device: {device_id}")
    return bool(result.rowcount == 1)


def listed_in_crl(engine: Engine, now: datetime) -> list[DeviceRecord]:
    """Devices whose still-valid certificates must be refused (suspended or revoked)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(*_DEVICE_COLUMNS).join(User, User.id == Device.user_id)
                .where(Device.status != "active", Device.cert_not_after > now)
                .order_by(Device.id)).all()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return [_device(row) for row in rows]
