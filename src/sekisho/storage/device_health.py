"""The devices an administrator should look at: suspended ones (an EDR report of compromise,
or an administrator), and active ones whose latest posture report earned no profile.

One indexed query over the device registry joined to the latest posture row per device; the
answer is bounded (`limit`) and the total is counted separately, so a dashboard of a large
installation reads a page, not the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, and_, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from sekisho.devices.posture import QUARANTINE
from sekisho.errors import StorageError
from sekisho.storage.models import Device, DevicePosture, User
from sekisho.storage.users import utc


@dataclass(frozen=True, slots=True)
class FailingDevice:
    device_id: str
    name: str
    inventory_id: str
    username: str
    status: str  # "active" | "suspended"
    reason: str  # why it is suspended ("edr:…" for a compromise), "" when active
    profile: str  # the posture profile of its latest report ("" when none was received)
    reported_at: datetime | None

    @property
    def verdict(self) -> str:
        """"compromised", "suspended" or "posture-failed"."""
        if self.status == "suspended":
            return "compromised" if self.reason.startswith("edr:") else "suspended"
        return "posture-failed"


_FAILING = or_(Device.status == "suspended",
               and_(Device.status == "active", DevicePosture.profile == QUARANTINE))


def failing(engine: Engine, *, limit: int = 50) -> tuple[list[FailingDevice], int]:
    """(the most recently reported or suspended devices that fail, how many fail in all)."""
    joined = (select(Device.device_id).select_from(Device)
              .outerjoin(DevicePosture, DevicePosture.device_id == Device.device_id)
              .where(_FAILING))
    query = (select(Device.device_id, Device.name, Device.inventory_id, User.username,
                    Device.status, Device.revoked_reason, DevicePosture.profile,
                    DevicePosture.reported_at)
             .select_from(Device).join(User, User.id == Device.user_id)
             .outerjoin(DevicePosture, DevicePosture.device_id == Device.device_id)
             .where(_FAILING)
             .order_by(func.coalesce(Device.revoked_at, DevicePosture.reported_at).desc(),
                       Device.id.desc())
             .limit(max(1, limit)))
    try:
        with engine.connect() as connection:
            rows = connection.execute(query).all()
            total = int(connection.execute(
                select(func.count()).select_from(joined.subquery())).scalar_one())
    except SQLAlchemyError as exc:
        raise StorageError(f"端末の状態を読めません / device registry cannot be read: "
                           f"{type(exc).__name__}") from None
    return [FailingDevice(row.device_id, row.name, row.inventory_id, row.username, row.status,
                          row.revoked_reason, row.profile or "",
                          None if row.reported_at is None else utc(row.reported_at))
            for row in rows], total
