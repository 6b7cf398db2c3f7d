"""The change feed: revocations that running gateways must learn at once, and how they learn it.

Writers (`sessions.revoke*`, `users.set_disabled`/`remove_member`, `devices.set_status`,
`edr.mark_compromised`, `posture.record`) call `record()` inside their own transaction, as its
last statement: the row commits with the change or not at all, so a change is never lost and
never announced before it is visible. On PostgreSQL `record()` first takes a transaction-scoped
advisory lock, so ids are allocated and committed in one order and a reader that remembers the
last id it saw never skips a row that committed late (SQLite serialises writers by itself);
then it calls `pg_notify`, which PostgreSQL delivers only when the transaction commits.

`ChangeWatcher` is the reader, one per gateway process. SQLite: it polls `id > last` every
`POLL_INTERVAL` (one indexed primary-key range read). PostgreSQL: a thread LISTENs and wakes the
poll on each notification; while the listening connection is down it falls back to polling
every `POLL_INTERVAL`, and it polls once at every (re)connection to catch up. If the feed
cannot be read, `resync("storage")` tells the gateway to re-check everything it trusts
(fail closed) instead of waiting for news that may never come. Rows older than `RETENTION`
are pruned; a reader that could not read for longer than half of it re-checks everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, delete, func, insert, select, text
from sqlalchemy.exc import SQLAlchemyError

from sekisho.errors import StorageError
from sekisho.storage.models import Change

SESSION, USER, DEVICE = "session", "user", "device"
KINDS = frozenset({SESSION, USER, DEVICE})
CHANNEL = "sekisho_changes"
# pg_advisory_xact_lock key shared by every writer of the feed ("SEKISHO" in ASCII hex).
LOCK_KEY = 0x53454B4953484F
POLL_INTERVAL = 0.2  # seconds; SQLite always, PostgreSQL while LISTEN is down
SAFETY_INTERVAL = 2.0  # PostgreSQL with LISTEN up: a poll in case a notification was missed
PRUNE_INTERVAL = 60.0
RETENTION = 3600.0  # seconds a row is kept; readers that fall behind more resync
BATCH = 1000

log = logging.getLogger("sekisho.changes")


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    id: int
    kind: str  # SESSION | USER | DEVICE
    subject: str  # session id, user id (decimal) or device id
    occurred_at: datetime


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"変更通知を読み書きできません / change feed storage failed: "
                        f"{type(exc).__name__}")


# -- writers ------------------------------------------------------------------------------


def record(conn: Connection, kind: str, subjects: Iterable[str | int],
           now: datetime | None = None) -> None:
    """Announce changes in the caller's transaction (call it last, just before commit)."""
    if kind not in KINDS:
        raise ValueError(f"unknown change kind {kind!r}")
    moment = now or datetime.now(UTC)
    rows = [{"kind": kind, "subject": str(subject)[:128], "occurred_at": moment}
            for subject in subjects]
    if not rows:
        return
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        # Serialise the feed's writers until commit: ids then commit in increasing order.
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    conn.execute(insert(Change), rows)
    if postgres:
        conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


# -- readers ------------------------------------------------------------------------------


def latest_id(engine: Engine) -> int:
    """The newest id (0 when the feed is empty): a new reader starts after it."""
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(Change.id), 0))).scalar_one())
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def since(engine: Engine, last: int, limit: int = BATCH) -> list[ChangeRecord]:
    """Changes with an id above `last`, oldest first, at most `limit`."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Change.id, Change.kind, Change.subject, Change.occurred_at)
                .where(Change.id > last).order_by(Change.id).limit(limit)).all()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return [ChangeRecord(r[0], r[1], r[2], _utc(r[3])) for r in rows]


def prune(engine: Engine, before: datetime) -> int:
    """Delete rows older than `before`; returns how many."""
    try:
        with engine.begin() as conn:
            result = conn.execute(delete(Change).where(Change.occurred_at < before))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return int(result.rowcount or 0)


class ChangeWatcher:
    """Learns committed changes in this process and hands them to `deliver`, on the loop.

    `resync(cause)` is called instead when changes may have been missed: "storage" when the
    feed cannot be read, "gap" when reading resumes after more than `RETENTION / 2`.
    """

    def __init__(self, engine: Engine, deliver: Callable[[Sequence[ChangeRecord]], None],
                 resync: Callable[[str], None], *, poll_interval: float = POLL_INTERVAL,
                 safety_interval: float = SAFETY_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._deliver = deliver
        self._resync = resync
        self.poll_interval = poll_interval
        self.safety_interval = safety_interval
        self._clock = clock
        self._postgres = engine.dialect.name == "postgresql"
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._listener: threading.Thread | None = None
        self.listening = False  # PostgreSQL LISTEN connection up
        self.healthy = True
        self.last = 0
        self._last_ok = clock()
        self._pruned_at = 0.0
        self.polls = 0

    async def run(self) -> None:
        """Until `stop()`: start after the newest existing change, then follow the feed."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        while not self._stopping.is_set():
            try:
                self.last = await asyncio.to_thread(latest_id, self._engine)
                break
            except StorageError:
                self._lost()
                await self._sleep(1.0)
        self._last_ok = self._clock()
        if self._postgres:
            self._listener = threading.Thread(target=self._listen, name="sekisho-changes",
                                              daemon=True)
            self._listener.start()
        while not self._stopping.is_set():
            interval = self.safety_interval if self.listening else self.poll_interval
            await self._sleep(interval)
            try:
                await self.poll()
                if self._clock() - self._pruned_at >= PRUNE_INTERVAL:
                    await self._prune()
            except Exception:  # never die quietly: a dead reader would trust everything
                log.exception("change feed reader failed; retrying")
                self._lost()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._listener is not None:
            self._listener.join(timeout=2.0)

    async def poll(self) -> None:
        """Read what is new once (more batches follow at once when a batch was full)."""
        self.polls += 1
        try:
            rows = await asyncio.to_thread(since, self._engine, self.last, BATCH)
        except Exception as exc:  # any failure to read: assume changes are being missed
            if not isinstance(exc, StorageError):
                log.exception("change feed could not be read")
            self._lost()
            return
        now = self._clock()
        if not self.healthy:
            self.healthy = True
            log.info("change feed readable again")
            if now - self._last_ok > RETENTION / 2:
                # Rows may have been pruned unseen: start over from the newest, re-check all.
                try:
                    self.last = await asyncio.to_thread(latest_id, self._engine)
                except StorageError:
                    self._lost()
                    return
                self._last_ok = now
                self._safe(self._resync, "gap")
                return
        self._last_ok = now
        if rows:
            self.last = rows[-1].id
            self._safe(self._deliver, rows)
            if len(rows) == BATCH:
                self._wake()

    def _lost(self) -> None:
        if self.healthy:
            self.healthy = False
            log.warning("change feed unreadable: re-checking open connections (fail closed)")
            self._safe(self._resync, "storage")

    async def _prune(self) -> None:
        self._pruned_at = self._clock()
        try:
            await asyncio.to_thread(
                prune, self._engine, datetime.now(UTC) - timedelta(seconds=RETENTION))
        except Exception as exc:  # pruning later is harmless; the table only grows a while
            log.warning("change feed could not be pruned: %s", exc)

    async def _sleep(self, seconds: float) -> None:
        assert self._wakeup is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        self._wakeup.clear()

    def _wake(self) -> None:
        """Thread-safe: poll now."""
        loop, wakeup = self._loop, self._wakeup
        if loop is None or wakeup is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closing
            loop.call_soon_threadsafe(wakeup.set)

    @staticmethod
    def _safe(callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("change handler failed")

    # -- PostgreSQL LISTEN (its own thread and connection) -------------------------------

    def _listen(self) -> None:
        import psycopg

        _, params = self._engine.dialect.create_connect_args(self._engine.url)
        params.pop("context", None)
        delay = 0.5
        while not self._stopping.is_set():
            try:
                with psycopg.connect(**params, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    delay = 0.5
                    self._wake()  # catch up with what committed while nobody listened
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self._wake()
            except Exception as exc:
                if not self._stopping.is_set():
                    log.warning("change notifications unavailable (%s); polling every %.1fs",
                                type(exc).__name__, self.poll_interval)
            self.listening = False
            self._wake()
            self._stopping.wait(delay)
            delay = min(delay * 2, 10.0)
