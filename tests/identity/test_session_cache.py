"""SessionManager's per-process cache under concurrency, on SQLite and PostgreSQL.

Concurrent lookups of one session share one storage load when its entry runs out; a load
in flight when the session is evicted (revoked here or announced on the change feed) is
not cached; a waiter giving up does not cancel the others' load; a storage failure reaches
every waiter. `lookup_fresh` (the WebSocket re-check) always reads storage itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from sekisho.config.model import SessionSettings
from sekisho.errors import StorageError
from sekisho.identity.principal import SessionInfo
from sekisho.identity.sessions import SessionManager
from sekisho.storage import users

SETTINGS = SessionSettings(idle_timeout=1800, absolute_lifetime=8 * 3600, cache_ttl=1.0)


def _is_session_read(statement: str) -> bool:
    return statement.lstrip().upper().startswith("SELECT") and "FROM sessions" in statement


class Reads:
    """Counts the session loads (`SELECT … FROM sessions`) started on an engine."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        self._lock = threading.Lock()
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if _is_session_read(statement):
            with self._lock:
                self.count += 1


class Hold:
    """Holds the next session load right after it read the row, until released."""

    def __init__(self, engine: Engine) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        event.listen(engine, "after_cursor_execute", self._hold)

    def _hold(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if _is_session_read(statement) and not self.release.is_set():
            self.entered.set()
            assert self.release.wait(10)

    async def reached(self) -> None:
        while not self.entered.is_set():
            await asyncio.sleep(0.01)


@pytest.fixture
def manager(engine: Engine, clock: Any) -> SessionManager:
    return SessionManager(engine, SETTINGS, clock=clock)


@pytest.fixture
def session(engine: Engine, manager: SessionManager) -> tuple[str, SessionInfo]:
    user = users.create_user(engine, "kato")
    return manager.create(user, ["pwd"], "192.0.2.1", "Firefox")


def test_concurrent_lookups_share_one_storage_load(
        engine: Engine, manager: SessionManager, session: tuple[str, SessionInfo],
        clock: Any) -> None:
    token, info = session
    reads = Reads(engine)

    async def burst() -> set[str | None]:
        found = await asyncio.gather(*(manager.lookup(token) for _ in range(64)))
        return {f.session_id if f else None for f in found}

    assert asyncio.run(burst()) == {info.session_id}
    assert reads.count == 1  # not 64
    assert asyncio.run(burst()) == {info.session_id}  # from the cache
    assert reads.count == 1
    clock.advance(SETTINGS.cache_ttl)  # the entry runs out: again one load for all
    assert asyncio.run(burst()) == {info.session_id}
    assert reads.count == 2
    # Without a cache (cache_ttl 0) every lookup reads storage itself, as configured.
    uncached = SessionManager(engine, SessionSettings(cache_ttl=0), clock=clock)
    asyncio.run(uncached.lookup(token))
    asyncio.run(uncached.lookup(token))
    assert reads.count == 4


def test_a_session_in_use_is_refreshed_ahead_without_a_request_waiting(
        engine: Engine, manager: SessionManager, session: tuple[str, SessionInfo],
        clock: Any) -> None:
    token, info = session
    reads = Reads(engine)

    async def scenario() -> None:
        assert await manager.lookup(token) is not None
        assert reads.count == 1
        clock.advance(SETTINGS.cache_ttl * 0.6)
        hold = Hold(engine)  # the refresh stops right after reading the row
        found = await asyncio.wait_for(manager.lookup(token), 5)  # answered while it reads
        assert found is not None and found.session_id == info.session_id
        await asyncio.wait_for(hold.reached(), 5)
        assert reads.count == 2
        hold.release.set()
        for _ in range(500):
            if not manager._loading:
                break
            await asyncio.sleep(0.01)
        # Past the first entry's lifetime, the refreshed entry answers: no storage wait.
        clock.advance(SETTINGS.cache_ttl * 0.6)
        assert await manager.lookup(token) is not None
        assert reads.count == 2

    asyncio.run(scenario())


def _revoke_elsewhere(engine: Engine, clock: Any) -> Callable[[SessionManager, str], None]:
    def evict(manager: SessionManager, session_id: str) -> None:
        SessionManager(engine, SETTINGS, clock=clock).revoke_id(session_id, "lost laptop")
    return evict


EVICTIONS: dict[str, Callable[[SessionManager, SessionInfo], None]] = {
    "evict": lambda m, info: m.evict([info.session_id]),
    "evict_user": lambda m, info: m.evict_user(info.user_id),
    "evict_all": lambda m, info: m.evict_all(),
    "update_settings": lambda m, info: m.update_settings(SETTINGS),
}


@pytest.mark.parametrize("how", [*EVICTIONS, "revoke_id"])
def test_a_load_in_flight_during_an_eviction_is_not_cached(
        engine: Engine, manager: SessionManager, session: tuple[str, SessionInfo],
        clock: Any, how: str) -> None:
    token, info = session
    hold = Hold(engine)

    async def scenario() -> tuple[bool, bool]:
        started = asyncio.ensure_future(manager.lookup(token))
        await hold.reached()  # the row was read (valid); the load has not finished
        if how == "revoke_id":  # signed out through this very process
            manager.revoke_id(info.session_id, "signout")
        else:  # revoked by the CLI or another worker, announced on the change feed
            _revoke_elsewhere(engine, clock)(manager, info.session_id)
            EVICTIONS[how](manager, info)
        hold.release.set()
        first = await started  # read before the revocation: it may still find the session …
        after = await manager.lookup(token)  # … but it was not kept for cache_ttl
        return first is not None, after is not None

    assert asyncio.run(scenario()) == (True, False)


def test_a_lookup_after_an_eviction_does_not_join_the_older_load(
        engine: Engine, manager: SessionManager, session: tuple[str, SessionInfo],
        clock: Any) -> None:
    token, info = session
    hold = Hold(engine)

    async def scenario() -> tuple[bool, bool]:
        started = asyncio.ensure_future(manager.lookup(token))
        await hold.reached()
        _revoke_elsewhere(engine, clock)(manager, info.session_id)
        manager.evict([info.session_id])
        later = asyncio.ensure_future(manager.lookup(token))  # came after the change
        await asyncio.sleep(0.05)
        hold.release.set()
        return (await started) is not None, (await later) is not None

    assert asyncio.run(scenario()) == (True, False)


def test_a_waiter_giving_up_does_not_cancel_the_shared_load(
        engine: Engine, manager: SessionManager, session: tuple[str, SessionInfo]) -> None:
    token, info = session
    reads = Reads(engine)
    hold = Hold(engine)

    async def scenario() -> SessionInfo | None:
        impatient = asyncio.ensure_future(manager.lookup(token))
        patient = asyncio.ensure_future(manager.lookup(token))
        await hold.reached()
        impatient.cancel()  # its client went away
        await asyncio.sleep(0)
        hold.release.set()
        found = await patient
        assert impatient.cancelled()
        return found

    found = asyncio.run(scenario())
    assert found is not None and found.session_id == info.session_id
    assert reads.count == 1  # one load served both, and it was cached:
    assert asyncio.run(manager.lookup(token)) is not None
    assert reads.count == 1


def test_a_storage_failure_reaches_every_waiter(
        engine: Engine, manager: SessionManager, session: tuple[str, SessionInfo]) -> None:
    token, info = session
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE sessions RENAME TO sessions_away"))
    reads = Reads(engine)

    async def burst() -> list[BaseException | SessionInfo | None]:
        return await asyncio.gather(*(manager.lookup(token) for _ in range(8)),
                                    return_exceptions=True)

    answers = asyncio.run(burst())
    # Fail closed: every waiting request gets the error (the gateway denies), none is
    # answered "no session" nor a session, and the one failed read is not remembered.
    assert all(isinstance(a, StorageError) for a in answers), answers
    assert reads.count == 1
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE sessions_away RENAME TO sessions"))
    found = asyncio.run(manager.lookup(token))
    assert found is not None and found.session_id == info.session_id
    assert reads.count == 2


def test_lookup_fresh_reads_storage_even_when_cached(
        engine: Engine, manager: SessionManager, session: tuple[str, SessionInfo],
        clock: Any) -> None:
    token, info = session
    assert asyncio.run(manager.lookup(token)) is not None  # cached now
    reads = Reads(engine)
    assert asyncio.run(manager.lookup_fresh(token, activity=False)) is not None
    assert reads.count == 1
    SessionManager(engine, SETTINGS, clock=clock).revoke_id(info.session_id, "lost laptop")
    assert asyncio.run(manager.lookup_fresh(token, activity=False)) is None  # no stale copy
    assert asyncio.run(manager.lookup(token)) is None  # and the cached copy went with it


def test_quiet_spans_exactly_the_lookups_that_do_nothing_else(engine: Engine,
                                                              clock: Any) -> None:
    """`quiet(info)` (what lets the gateway reuse a decision) holds while a lookup would
    return `info` itself with no storage read, no touch and no refresh, and not a moment
    longer: each bound is met in turn, by the clock alone."""
    settings = SessionSettings(idle_timeout=1800, absolute_lifetime=8 * 3600, cache_ttl=10.0)
    user = users.create_user(engine, "kato")

    def looked_up(manager: SessionManager, token: str) -> SessionInfo:
        info = asyncio.run(manager.lookup(token))
        assert info is not None
        return info

    # The refresh-ahead point: half of cache_ttl after the read.
    manager = SessionManager(engine, settings, clock=clock)
    token, _ = manager.create(user, ["pwd"], "192.0.2.1", "Firefox")
    info = looked_up(manager, token)
    assert manager.quiet(info)
    clock.advance(4.9)
    assert manager.quiet(info)
    clock.advance(0.2)
    assert not manager.quiet(info)
    manager.evict([info.session_id])
    info = looked_up(manager, token)  # read again, now
    clock.advance(-0.5)
    assert not manager.quiet(info)  # the clock went back past the read: lookup would reload
    clock.advance(0.5)

    # Replaced by a newer read, or evicted: never quiet again.
    assert manager.quiet(info)
    manager.evict([info.session_id])
    assert not manager.quiet(info)
    newer = looked_up(manager, token)
    assert manager.quiet(newer) and not manager.quiet(info)

    # The touch of last_seen_at, the idle timeout, the absolute expiry: whichever is first.
    for touch, idle, lifetime in ((2.0, 1800, 8 * 3600), (60.0, 3, 8 * 3600), (60.0, 1800, 3)):
        manager = SessionManager(engine, SessionSettings(
            idle_timeout=idle, absolute_lifetime=lifetime, cache_ttl=10.0), clock=clock)
        manager.touch_interval = touch
        token, _ = manager.create(user, ["pwd"], "192.0.2.1", "Firefox")
        info = looked_up(manager, token)
        clock.advance(1.9)
        assert manager.quiet(info)
        clock.advance(1.2)
        assert not manager.quiet(info), (touch, idle, lifetime)
