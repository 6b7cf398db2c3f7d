"""Rows of device posture: the latest verified report per device, and spent report nonces.

A report is stored in one transaction whose first write inserts its nonce under a primary
key: of two deliveries of the same signed report, exactly one inserts (report replay), and
the loser's transaction rolls back with nothing stored. The report row then moves only
forward in time (`reported_at` must grow), so an old report captured earlier cannot roll a
device back to a better posture after its nonce has been purged. Nonces are purged once the
report they came with could no longer be fresh. The rules (signature, freshness, profiles)
live in `devices.posture` and the handler; this module only reads and writes rows.

Every stored report is announced on the change feed (`storage.changes`, kind DEVICE) in the
same transaction: a report can move a device into `quarantine` (a failed check), and open
WebSockets from that device must be re-checked at once, in every process, not at the next
timer (`gateway.watch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from sekisho.errors import SekishoError, StorageError
from sekisho.storage import changes
from sekisho.storage.models import DevicePosture, PostureNonce
from sekisho.storage.users import utc


class PostureReplayed(SekishoError):
    """The nonce was already used, or a newer report is already stored."""

    code = "posture-replay"
    status = 409


@dataclass(frozen=True, slots=True)
class PostureRow:
    device_id: str
    reported_at: datetime
    received_at: datetime
    report: str  # canonical JSON of the signed report
    profile: str  # the profile computed when it arrived (listings only; policy recomputes)


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"端末の状態を読み書きできません / device posture storage failed: "
                        f"{type(exc).__name__}")


def record(engine: Engine, *, device_id: str, nonce: str, reported_at: datetime,
           received_at: datetime, nonce_expires: datetime, report: str, profile: str) -> None:
    """Store a verified report; raises `PostureReplayed` for a spent nonce or older report."""
    replayed = PostureReplayed("この報告は既に受け付けました / this report was already "
                               "received (replayed nonce, or a newer report exists)")
    try:
        with engine.begin() as conn:
            conn.execute(delete(PostureNonce).where(PostureNonce.expires_at < received_at))
            conn.execute(insert(PostureNonce).values(
                device_id=device_id, nonce=nonce, expires_at=nonce_expires))
            values = {"reported_at": reported_at, "received_at": received_at,
                      "report": report, "profile": profile[:64]}
            moved = conn.execute(update(DevicePosture).where(
                DevicePosture.device_id == device_id,
                DevicePosture.reported_at < reported_at).values(**values))
            if moved.rowcount != 1:
                exists = conn.execute(select(DevicePosture.device_id).where(
                    DevicePosture.device_id == device_id)).first()
                if exists is not None:
                    raise replayed
                conn.execute(insert(DevicePosture).values(device_id=device_id, **values))
            changes.record(conn, changes.DEVICE, [device_id], received_at)
    except IntegrityError:
        raise replayed from None
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def latest(engine: Engine, device_id: str) -> PostureRow | None:
    try:
        with engine.connect() as conn:
            row = conn.execute(select(DevicePosture.__table__).where(
                DevicePosture.device_id == device_id)).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    if row is None:
        return None
    return PostureRow(device_id=row.device_id, reported_at=utc(row.reported_at),
                      received_at=utc(row.received_at), report=row.report, profile=row.profile)
