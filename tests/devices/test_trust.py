"""The gateway's per-process device cache (`DeviceTrust`) on a real database.

Concurrent requests of one device share a registry load when its entry runs out, a load
that was in flight when the device changed is not cached, and a registry that cannot answer
fails every waiting request (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

from sekisho.devices.identity import DeviceIdentity
from sekisho.devices.trust import DeviceStanding, DeviceTrust
from sekisho.errors import StorageError
from sekisho.storage import devices, users
from sekisho.storage.database import create_database_engine

NOW = datetime.now(UTC)
SERIAL = 0x5EC1
DEVICE = "dev-00000000000000aa"


def _enrolled(engine: Engine) -> DeviceIdentity:
    user = users.create_user(engine, "tanaka")
    code = "c" * 64
    devices.insert_code(engine, code_hash=code, user_id=user.id, created_by="admin", now=NOW,
                        expires_at=NOW + timedelta(hours=1))
    assert devices.consume_code_and_add_device(
        engine, code_hash=code, now=NOW, device_id=DEVICE, inventory_id="PC-1",
        user_id=user.id, name="PC", cert_serial=f"{SERIAL:x}",
        cert_not_after=NOW + timedelta(days=365))
    return DeviceIdentity(device_id=DEVICE, inventory_id="PC-1", serial=SERIAL,
                          not_after=NOW + timedelta(days=365), issuer="CN=x", user="tanaka")


class Statements:
    """Counts the registry reads (`devices` and `device_posture` selects) on an engine."""

    def __init__(self, engine: Engine) -> None:
        self.devices = self.posture = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            if "FROM devices" in statement:
                self.devices += 1
            elif "FROM device_posture" in statement:
                self.posture += 1


def test_concurrent_misses_share_one_registry_load(engine: Engine) -> None:
    identity = _enrolled(engine)
    trust = DeviceTrust(engine)
    seen = Statements(engine)

    async def burst() -> list[bool]:
        answers = await asyncio.gather(*(trust.standing(identity, 60) for _ in range(50)))
        return [a.enrolled for a in answers]

    assert asyncio.run(burst()) == [True] * 50
    assert (seen.devices, seen.posture) == (1, 1)  # not 50 of each
    assert asyncio.run(burst()) == [True] * 50  # from the cache
    assert (seen.devices, seen.posture) == (1, 1)
    # Without a cache (ttl 0) every request reads the registry, as configured.
    asyncio.run(trust.standing(identity, 0))
    assert seen.devices == 2


def test_a_load_in_flight_during_a_change_is_not_cached(engine: Engine) -> None:
    identity = _enrolled(engine)
    trust = DeviceTrust(engine)
    entered, release = threading.Event(), threading.Event()

    def hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The registry row is read (active); hold the load before it finishes.
        if "FROM device_posture" in statement and not release.is_set():
            entered.set()
            assert release.wait(10)

    event.listen(engine, "after_cursor_execute", hold)

    async def scenario() -> tuple[bool, bool]:
        started = asyncio.ensure_future(trust.standing(identity, 60))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        # Meanwhile the device is suspended and this process told (EDR, CLI, change feed).
        assert devices.set_status(engine, DEVICE, "suspended", now=NOW, reason="lost")
        trust.evict(DEVICE)
        release.set()
        first = await started  # read before the change: it may still say enrolled ...
        after = await trust.standing(identity, 60)  # ... but it was not kept for 60 s
        return first.enrolled, after.enrolled

    assert asyncio.run(scenario()) == (True, False)


def test_a_waiter_giving_up_does_not_cancel_the_shared_load(engine: Engine) -> None:
    identity = _enrolled(engine)
    trust = DeviceTrust(engine)

    async def scenario() -> bool:
        impatient = asyncio.ensure_future(trust.standing(identity, 60))
        patient = asyncio.ensure_future(trust.standing(identity, 60))
        await asyncio.sleep(0)
        impatient.cancel()  # its client went away
        return (await patient).enrolled

    assert asyncio.run(scenario()) is True


def test_a_registry_that_cannot_answer_fails_every_waiter(tmp_path: Path) -> None:
    broken = create_database_engine(f"sqlite:///{tmp_path}/missing/dir/sekisho.db")
    trust = DeviceTrust(broken)
    identity = DeviceIdentity(device_id=DEVICE, inventory_id="PC-1", serial=SERIAL,
                              not_after=NOW + timedelta(days=365), issuer="CN=x",
                              user="tanaka")

    async def burst() -> list[BaseException | DeviceStanding]:
        return await asyncio.gather(*(trust.standing(identity, 60) for _ in range(5)),
                                    return_exceptions=True)

    try:
        answers = asyncio.run(burst())
    finally:
        broken.dispose()
    # Fail closed: every waiting request gets the error (the gateway answers 503), none
    # is told "enrolled", and nothing is cached.
    assert all(isinstance(a, StorageError) for a in answers), answers
    assert asyncio.run(burst())[0].__class__ is StorageError


def test_a_lost_change_feed_forgets_every_cached_device(engine: Engine) -> None:
    from sekisho.audit.log import AuditLog
    from sekisho.config.model import Config, SessionSettings
    from sekisho.gateway.watch import LiveConnections
    from sekisho.identity.sessions import SessionManager
    from sekisho.runtime import build_runtime

    identity = _enrolled(engine)
    trust = DeviceTrust(engine)
    assert asyncio.run(trust.standing(identity, 60)).enrolled
    # Suspended by another process whose change-feed row this one never read (feed down).
    assert devices.set_status(engine, DEVICE, "suspended", now=NOW, reason="lost")
    assert asyncio.run(trust.standing(identity, 60)).enrolled  # still the cached answer
    runtime = build_runtime(Config(source="<test>"))
    live = LiveConnections(lambda: runtime, SessionManager(engine, SessionSettings()),
                           AuditLog(engine), devices=trust)
    # No WebSocket of this device is open: the resync must still drop its entry, since a
    # plain HTTP request would otherwise be let in from the cache.
    live.resync("storage")
    assert not asyncio.run(trust.standing(identity, 60)).enrolled


def test_evict_all_also_forgets_loads_in_flight(engine: Engine) -> None:
    identity = _enrolled(engine)
    trust = DeviceTrust(engine)
    entered, release = threading.Event(), threading.Event()

    def hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM device_posture" in statement and not release.is_set():
            entered.set()
            assert release.wait(10)

    event.listen(engine, "after_cursor_execute", hold)

    async def scenario() -> bool:
        started = asyncio.ensure_future(trust.standing(identity, 60))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        assert devices.set_status(engine, DEVICE, "suspended", now=NOW, reason="lost")
        trust.evict_all()
        release.set()
        await started
        return (await trust.standing(identity, 60)).enrolled

    assert asyncio.run(scenario()) is False
