"""Rows behind the EDR webhook: record an event id and act on it in one transaction.

Recording the event id, suspending the device and revoking every live session of its user
happen in a single transaction. The event id is the primary key of `edr_events`, so of two
deliveries of the same notification (a replay, or the EDR product retrying) exactly one
commits; the other gets an integrity error and reports "already processed". Because the
record and the action commit together, a failure half-way leaves neither, and the sender's
retry is acted on (fail closed: never "recorded but not done"). The rules (signature,
freshness, audit) live in `devices.edr`; this module only reads and writes rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from sekisho.errors import StorageError
from sekisho.storage import changes
from sekisho.storage.devices import DeviceNotFound
from sekisho.storage.models import Device, EdrEvent, Session, User


@dataclass(frozen=True, slots=True)
class Compromise:
    """What one accepted EDR event changed."""

    device_id: str
    username: str
    suspended: bool  # False when the device was already suspended or revoked
    session_ids: tuple[str, ...]  # sessions revoked now


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"EDR 通知を記録できません / EDR event storage failed: "
                        f"{type(exc).__name__}")


def mark_compromised(engine: Engine, *, event_id: str, device_id: str, reason: str,
                     now: datetime) -> Compromise | None:
    """Record `event_id` and act; None when the event id was already processed.

    Raises `DeviceNotFound` (nothing recorded) or `StorageError`.
    """
    try:
        with engine.begin() as conn:
            row = conn.execute(
                select(Device.status, Device.user_id, User.username)
                .join(User, User.id == Device.user_id)
                .where(Device.device_id == device_id)).first()
            if row is None:
                raise DeviceNotFound(f"端末が見つかりません / no such device: {device_id}")
            conn.execute(insert(EdrEvent).values(event_id=event_id, device_id=device_id,
                                                 received_at=now))
            # A revoked device stays revoked; an active one is suspended (certificateHold).
            changed = conn.execute(
                update(Device).where(Device.device_id == device_id, Device.status == "active")
                .values(status="suspended", revoked_at=now, revoked_reason=reason[:128]))
            ids = tuple(conn.execute(
                select(Session.id).where(Session.user_id == row.user_id,
                                         Session.revoked_at.is_(None))).scalars())
            if ids:
                conn.execute(update(Session).where(Session.id.in_(ids))
                             .values(revoked_at=now, revoked_reason=reason[:128]))
            # Every gateway process learns both at once, with this transaction's commit.
            changes.record(conn, changes.DEVICE, [device_id], now)
            if ids:
                changes.record(conn, changes.USER, [row.user_id], now)
    except IntegrityError:
        return None  # the primary key already holds this event id: replay or retry
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return Compromise(device_id=device_id, username=row.username,
                      suspended=changed.rowcount == 1, session_ids=ids)


def processed(engine: Engine, event_id: str) -> bool:
    """Whether an event id has been acted on."""
    try:
        with engine.connect() as conn:
            found = conn.execute(select(EdrEvent.event_id)
                                 .where(EdrEvent.event_id == event_id)).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return found is not None
