"""Whether a device certificate still stands: the registry behind mTLS, cached per process.

The TLS handshake proves the certificate chained to the internal CA and is within its
validity; it cannot know that an administrator suspended or revoked the device afterwards.
So every request asks the registry, through a small cache whose entries live at most
`ttl` seconds (the gateway passes `session.cache_ttl`). A suspension, revocation or posture
report made by another process (the CLI, another worker) reaches this one on the change
feed, which calls `evict` (and `evict_all` when the feed could not be read): the TTL is the
longest delay only while the feed cannot be read.

`standing()` is the pure rule: enrolled only when the registry lists the device as active,
with the same certificate serial (an older certificate of a re-enrolled device, or one
whose serial was swapped, is not enrolled), still within its validity, for the same user
the certificate names. Storage work runs in a thread; a failure raises `StorageError` and
the gateway denies with 503 (fail closed), never "enrolled".

An enrolled device also gets its posture profile from its latest stored report, cached with
the registry row and re-classified on every request against the current time (a report
that went stale since it was cached turns the device into `quarantine` at once).

When an entry runs out, the requests that find it missing share one registry load instead
of each starting their own (under keep-alive load every in-flight request of a busy device
would otherwise hit the database at once, every `ttl`). `evict` also forgets a load in
flight, so a load that began before a change is never cached after it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from sekisho.config.model import DeviceSettings
from sekisho.devices.identity import DeviceIdentity
from sekisho.devices.posture import PostureError, PostureReport, classify, parse_report
from sekisho.storage import devices as store
from sekisho.storage import posture as posture_store
from sekisho.storage.devices import DeviceRecord

CACHE_MAX = 10_000  # devices remembered; past it the cache starts over (only more lookups)


@dataclass(frozen=True, slots=True)
class DeviceStanding:
    """What the registry says about a presented device certificate."""

    enrolled: bool
    user: str = ""  # the user the device is enrolled to; "" when not enrolled
    profile: str = ""  # posture profile ("quarantine" without a fresh report); "" if not enrolled


NOT_ENROLLED = DeviceStanding(False)


def standing(identity: DeviceIdentity, record: DeviceRecord | None, now: datetime,
             report: PostureReport | None = None,
             settings: DeviceSettings | None = None) -> DeviceStanding:
    """The pure rule (see the module docstring)."""
    if record is None or record.status != "active" or record.device_id != identity.device_id:
        return NOT_ENROLLED
    try:
        serial = int(record.cert_serial, 16)
    except ValueError:
        return NOT_ENROLLED
    if serial != identity.serial or now >= record.cert_not_after:
        return NOT_ENROLLED
    if identity.user is not None and identity.user != record.username:
        return NOT_ENROLLED
    posture = settings if settings is not None else DeviceSettings()
    if report is not None and report.device_id != record.device_id:
        report = None  # a row filed under the wrong device says nothing about this one
    profile, _ = classify(report, posture.profiles, now, posture.posture_max_age)
    return DeviceStanding(True, record.username, profile)


def load_report(engine: Engine, device_id: str) -> PostureReport | None:
    """The stored latest report, parsed; None when there is none or it no longer parses."""
    row = posture_store.latest(engine, device_id)
    if row is None:
        return None
    try:
        return parse_report(json.loads(row.report))
    except (ValueError, PostureError):
        return None


_Loaded = tuple[DeviceRecord | None, PostureReport | None]


class DeviceTrust:
    """Registry lookups for the gateway, cached for at most `ttl` seconds per device."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._engine = engine
        self._clock = clock
        self._wall_clock = wall_clock
        self._cache: dict[str, tuple[float, DeviceRecord | None, PostureReport | None]] = {}
        self._loading: dict[str, asyncio.Task[_Loaded]] = {}

    async def standing(self, identity: DeviceIdentity, ttl: float,
                       settings: DeviceSettings | None = None) -> DeviceStanding:
        """Raises `StorageError` when the registry cannot answer (the caller fails closed)."""
        now = self._clock()
        cached = self._cache.get(identity.device_id)
        if cached is not None and 0 <= now - cached[0] < ttl:
            _, record, report = cached
        elif ttl > 0:
            record, report = await self._shared_load(identity.device_id, now)
        else:  # no cache: every request reads the registry itself
            record, report = await asyncio.to_thread(self._load, identity.device_id)
        return standing(identity, record, self._wall_clock(), report, settings)

    async def _shared_load(self, device_id: str, started: float) -> _Loaded:
        task = self._loading.get(device_id)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._load_and_cache(device_id, started))
            # Its waiters read its error; if they all left, it is read here (not logged as lost).
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._loading[device_id] = task
        # shield: one waiter giving up (its client left) must not cancel the others' load.
        return await asyncio.shield(task)

    async def _load_and_cache(self, device_id: str, started: float) -> _Loaded:
        this = asyncio.current_task()
        try:
            loaded = await asyncio.to_thread(self._load, device_id)
        finally:
            current = self._loading.get(device_id)
            if current is this:
                del self._loading[device_id]
        if current is this:  # not evicted meanwhile: a change may have come after the read
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[device_id] = (started, *loaded)
        return loaded

    def _load(self, device_id: str) -> tuple[DeviceRecord | None, PostureReport | None]:
        record = store.get_device(self._engine, device_id)
        if record is None or record.status != "active":
            return record, None
        return record, load_report(self._engine, device_id)

    def evict(self, device_id: str) -> None:
        """Forget one device at once (a change made through this process), and any load of
        it in flight: requests after this read the registry again."""
        self._cache.pop(device_id, None)
        self._loading.pop(device_id, None)

    def evict_all(self) -> None:
        """Forget every device and every load in flight: the change feed could not be read
        (`gateway.watch` resync), so any entry may hide a suspension this process missed."""
        self._cache.clear()
        self._loading.clear()
