"""The change feed on SQLite and PostgreSQL: written in the writer's own transaction, read in
order, announced on commit (PostgreSQL NOTIFY), pruned, and followed by `ChangeWatcher`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text, update

from sekisho.errors import StorageError
from sekisho.storage import changes, devices, edr, sessions, users
from sekisho.storage.changes import ChangeRecord, ChangeWatcher
from sekisho.storage.models import Session

T0 = datetime(2026, 4, 1, tzinfo=UTC)


def _feed(engine: Engine, after: int = 0) -> list[tuple[str, str]]:
    return [(row.kind, row.subject) for row in changes.since(engine, after)]


def _session(engine: Engine, sid: str, user_id: int) -> None:
    sessions.create_session(engine, session_id=sid, user_id=user_id, now=T0,
                            expires_at=T0 + timedelta(hours=1), auth_time=T0, methods=["pwd"])


def _device(engine: Engine, user_id: int, device_id: str = "dev-1") -> None:
    devices.insert_code(engine, code_hash="c" * 64, user_id=user_id, created_by="admin",
                        now=T0, expires_at=T0 + timedelta(hours=1))
    assert devices.consume_code_and_add_device(
        engine, code_hash="c" * 64, now=T0, device_id=device_id, inventory_id="PC-1",
        user_id=user_id, name="pc", cert_serial="ab", cert_not_after=T0 + timedelta(days=1))


def test_every_revoking_writer_announces_its_change(engine: Engine) -> None:
    hanako = users.create_user(engine, "hanako")
    users.create_group(engine, "staff")
    start = changes.latest_id(engine)
    assert users.add_member(engine, "staff", "hanako")
    assert users.remove_member(engine, "staff", "hanako")
    assert not users.remove_member(engine, "staff", "hanako")  # nothing changed: no row
    _session(engine, "a" * 64, hanako.id)
    _session(engine, "b" * 64, hanako.id)
    assert sessions.revoke(engine, "a" * 64, T0, "admin")
    assert not sessions.revoke(engine, "a" * 64, T0, "again")
    assert sessions.revoke_user(engine, hanako.id, T0, "bulk") == ["b" * 64]
    assert sessions.revoke_user(engine, hanako.id, T0, "bulk") == []
    users.set_disabled(engine, "hanako", True)
    users.set_disabled(engine, "hanako", False)  # enabling takes nothing away: no row
    _device(engine, hanako.id)
    assert devices.set_status(engine, "dev-1", "suspended", now=T0, reason="lost")
    assert not devices.set_status(engine, "dev-1", "suspended", now=T0)
    _session(engine, "c" * 64, hanako.id)
    done = edr.mark_compromised(engine, event_id="e1", device_id="dev-1", reason="edr:x",
                                now=T0)
    assert done is not None and done.session_ids == ("c" * 64,)
    uid = str(hanako.id)
    assert _feed(engine, start) == [
        ("user", uid), ("user", uid),  # group membership: deny rules may name groups
        ("session", "a" * 64), ("user", uid),  # revoke, revoke_user
        ("user", uid),  # disable
        ("device", "dev-1"),  # suspend
        ("device", "dev-1"), ("user", uid),  # EDR: device and all its user's sessions
    ]
    ids = [row.id for row in changes.since(engine, start)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_the_row_shares_the_writers_transaction(engine: Engine) -> None:
    user = users.create_user(engine, "suzuki")
    _session(engine, "d" * 64, user.id)
    start = changes.latest_id(engine)
    # A writer whose transaction fails after recording leaves neither change nor row.
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(update(Session).where(Session.id == "d" * 64).values(revoked_at=T0))
        changes.record(conn, changes.SESSION, ["d" * 64], T0)
        raise RuntimeError("crash before commit")
    assert _feed(engine, start) == []
    assert sessions.load_session(engine, "d" * 64).revoked_at is None  # type: ignore[union-attr]
    # Unknown user: refused before anything is written.
    with pytest.raises(users.NotFound):
        users.set_disabled(engine, "nobody", True)
    assert _feed(engine, start) == []
    with pytest.raises(ValueError, match="kind"):
        with engine.begin() as conn:
            changes.record(conn, "everything", ["x"])


def test_since_reads_in_order_in_batches(engine: Engine) -> None:
    start = changes.latest_id(engine)
    with engine.begin() as conn:
        changes.record(conn, changes.DEVICE, [f"d{n}" for n in range(5)], T0)
    first = changes.since(engine, start, limit=2)
    assert [r.subject for r in first] == ["d0", "d1"]
    rest = changes.since(engine, first[-1].id)
    assert [r.subject for r in rest] == ["d2", "d3", "d4"]
    assert changes.latest_id(engine) == rest[-1].id
    assert rest[0].occurred_at == T0


def test_pruning_keeps_recent_rows_and_never_reuses_ids(engine: Engine) -> None:
    with engine.begin() as conn:
        changes.record(conn, changes.SESSION, ["old"], T0)
        changes.record(conn, changes.SESSION, ["new"], T0 + timedelta(hours=2))
    assert changes.prune(engine, T0 + timedelta(hours=1)) == 1
    assert _feed(engine) == [("session", "new")]
    newest = changes.latest_id(engine)
    assert changes.prune(engine, T0 + timedelta(hours=3)) == 1
    assert _feed(engine) == []
    with engine.begin() as conn:
        changes.record(conn, changes.SESSION, ["after"], T0)
    # A reader that remembers `newest` still sees the row written after the table emptied.
    assert [(r.subject, r.id > newest) for r in changes.since(engine, newest)] == [
        ("after", True)]


# -- PostgreSQL: NOTIFY on commit, ids committed in order ----------------------------------


def _listener(engine: Engine) -> object:
    import psycopg

    _, params = engine.dialect.create_connect_args(engine.url)
    params.pop("context", None)
    conn = psycopg.connect(**params, autocommit=True)
    conn.execute(f"LISTEN {changes.CHANNEL}")
    return conn


@pytest.mark.postgres
def test_postgres_notifies_only_on_commit(pg_schema_url: str) -> None:
    from sekisho.storage.database import create_database_engine, upgrade

    engine = create_database_engine(pg_schema_url)
    upgrade(engine)
    listener = _listener(engine)
    try:
        with pytest.raises(RuntimeError), engine.begin() as conn:
            changes.record(conn, changes.USER, ["1"])
            raise RuntimeError("rolled back")
        assert list(listener.notifies(timeout=0.3)) == []  # type: ignore[attr-defined]
        with engine.begin() as conn:
            changes.record(conn, changes.USER, ["1"])
            # Not before commit: a reader woken now would find nothing.
            assert list(listener.notifies(timeout=0.3)) == []  # type: ignore[attr-defined]
        notes = list(listener.notifies(timeout=2, stop_after=1))  # type: ignore[attr-defined]
        assert [n.channel for n in notes] == [changes.CHANNEL]
    finally:
        listener.close()  # type: ignore[attr-defined]
        engine.dispose()


@pytest.mark.postgres
def test_postgres_writers_commit_in_id_order(pg_schema_url: str) -> None:
    """A reader that saw id N must never later find a smaller id committing: the second
    writer waits for the first one's commit before it gets its id."""
    from sekisho.storage.database import create_database_engine, upgrade

    engine = create_database_engine(pg_schema_url)
    upgrade(engine)
    try:
        entered, finished = threading.Event(), threading.Event()

        def second() -> None:
            entered.set()
            with engine.begin() as conn:
                changes.record(conn, changes.SESSION, ["second"])
            finished.set()

        with engine.begin() as conn:
            changes.record(conn, changes.SESSION, ["first"])
            thread = threading.Thread(target=second)
            thread.start()
            entered.wait(5)
            time.sleep(0.3)
            assert not finished.is_set(), "the second writer must wait for the first commit"
        thread.join(5)
        rows = changes.since(engine, 0)
        assert [r.subject for r in rows] == ["first", "second"]
        assert rows[0].id < rows[1].id
    finally:
        engine.dispose()


# -- ChangeWatcher --------------------------------------------------------------------------


class Seen:
    def __init__(self) -> None:
        self.rows: list[ChangeRecord] = []
        self.resyncs: list[str] = []

    def deliver(self, rows: Sequence[ChangeRecord]) -> None:
        self.rows.extend(rows)

    def resync(self, cause: str) -> None:
        self.resyncs.append(cause)

    @staticmethod
    async def wait(what: Callable[[], bool], timeout: float = 5.0) -> float:
        started = time.monotonic()
        while not what():
            assert time.monotonic() - started < timeout, "timed out"
            await asyncio.sleep(0.005)
        return time.monotonic() - started


def _record_in_thread(engine: Engine, subject: str) -> Callable[[], None]:
    def write() -> None:
        with engine.begin() as conn:
            changes.record(conn, changes.SESSION, [subject])
    return write


def test_watcher_delivers_new_changes_within_a_second(engine: Engine) -> None:
    with engine.begin() as conn:
        changes.record(conn, changes.SESSION, ["before-start"])  # not news to a new process

    async def scenario() -> list[float]:
        seen = Seen()
        # On PostgreSQL only a notification can be this fast: the safety poll is 30 s away.
        watcher = ChangeWatcher(engine, seen.deliver, seen.resync, safety_interval=30.0)
        task = asyncio.ensure_future(watcher.run())
        try:
            await seen.wait(lambda: watcher.last > 0 and (
                watcher.listening or engine.dialect.name == "sqlite"))
            delays = []
            for n in range(3):
                await asyncio.to_thread(_record_in_thread(engine, f"s{n}"))
                delays.append(await seen.wait(lambda n=n: len(seen.rows) == n + 1))
            assert [r.subject for r in seen.rows] == ["s0", "s1", "s2"]
            assert seen.resyncs == []
            return delays
        finally:
            await asyncio.to_thread(watcher.stop)
            task.cancel()

    delays = asyncio.run(scenario())
    assert max(delays) < 1.0, delays


def test_watcher_fails_closed_when_the_feed_is_unreadable(engine: Engine) -> None:
    class Clock:
        now = 1000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()

    async def scenario() -> Seen:
        seen = Seen()
        watcher = ChangeWatcher(engine, seen.deliver, seen.resync, clock=clock,
                                poll_interval=0.05, safety_interval=0.05)
        task = asyncio.ensure_future(watcher.run())
        try:
            await seen.wait(lambda: watcher.polls > 0)
            with engine.begin() as conn:  # storage that cannot answer the feed's query
                conn.execute(text("ALTER TABLE changes RENAME TO changes_away"))
            await seen.wait(lambda: seen.resyncs == ["storage"])
            assert not watcher.healthy
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE changes_away RENAME TO changes"))
            await seen.wait(lambda: watcher.healthy)
            assert seen.resyncs == ["storage"]  # back within the retention: rows catch up
            await asyncio.to_thread(_record_in_thread(engine, "after-outage"))
            await seen.wait(lambda: len(seen.rows) == 1)
            # A long outage: rows may have been pruned unseen, so everything is re-checked.
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE changes RENAME TO changes_away"))
            await seen.wait(lambda: seen.resyncs == ["storage", "storage"])
            clock.now += changes.RETENTION
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE changes_away RENAME TO changes"))
            await seen.wait(lambda: seen.resyncs == ["storage", "storage", "gap"])
            return seen
        finally:
            await asyncio.to_thread(watcher.stop)
            task.cancel()

    seen = asyncio.run(scenario())
    assert [r.subject for r in seen.rows] == ["after-outage"]


def test_latest_id_on_unreachable_storage_is_a_storage_error() -> None:
    from sekisho.storage.database import create_database_engine

    engine = create_database_engine("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StorageError):
        changes.latest_id(engine)
    with pytest.raises(StorageError):
        changes.since(engine, 0)
    engine.dispose()


def test_migration_0009_matches_the_model_and_reverses(engine: Engine) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import inspect

    from sekisho.storage.database import _alembic_config
    from sekisho.storage.models import Base

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diff if "changes" in repr(d)] == []
    command.downgrade(_alembic_config(engine), "0008")
    assert "changes" not in inspect(engine).get_table_names()
    command.upgrade(_alembic_config(engine), "head")
    assert changes.latest_id(engine) == 0
