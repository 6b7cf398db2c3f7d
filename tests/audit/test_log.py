"""AuditLog: group commit, durable appends, fail closed, graceful close."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, Engine, event, text

from pg import unreachable_url
from sekisho.audit.chain import verify
from sekisho.audit.events import AccessDecision, SignInSucceeded, UserChanged
from sekisho.audit.log import AuditLog, AuditUnavailable
from sekisho.storage.audit_log import iter_records, read_head
from sekisho.storage.database import create_database_engine


def decision(n: int = 0, user: str = "tanaka") -> AccessDecision:
    return AccessDecision(route="portal", user=user, decision="deny",
                          reasons=("group-unauthorized",), source_ip="192.0.2.1", method="GET",
                          path=f"/n/{n}", status=403, bytes_in=0, bytes_out=512,
                          duration_ms=0.25, session="ab12")


def count(url: str) -> int:
    """Rows visible to a separate connection (another engine, as another process would)."""
    other = create_database_engine(url)
    try:
        with other.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one())
    finally:
        other.dispose()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def audit(engine: Engine) -> Iterator[AuditLog]:
    log = AuditLog(engine, flush_interval=0.3, batch_max=1000)
    log.start()
    yield log
    try:
        log.close()
    except AuditUnavailable:
        pass


def test_decisions_are_committed_together_after_the_interval(
        audit: AuditLog, database_url: str, engine: Engine) -> None:
    for n in range(10):
        audit.record(decision(n))
    assert count(database_url) == 0  # queued, not yet committed: record() never waits
    wait_for(lambda: count(database_url) == 10)
    # The writer counts a batch once `append_batch` returns, just after the commit that made
    # the rows visible here: on a loaded machine the count can trail them for a moment.
    wait_for(lambda: audit.committed == 10)
    records = list(iter_records(engine))
    assert [r.seq for r in records] == list(range(1, 11))
    assert verify(records, head=read_head(engine)).ok


def test_batch_max_triggers_a_commit_before_the_interval(engine: Engine, database_url: str) -> None:
    log = AuditLog(engine, flush_interval=30.0, batch_max=50)
    log.start()
    for n in range(49):
        log.record(decision(n))
    time.sleep(0.3)
    assert count(database_url) == 0
    log.record(decision(49))
    wait_for(lambda: count(database_url) == 50, timeout=5)
    log.close()


def test_events_arriving_during_a_slow_commit_wait_for_the_next_round(
        engine: Engine, database_url: str) -> None:
    """A round commits what waited when it began: draining until the queue was empty turned
    a writer whose commits take a while into a stream of small transactions (at 4,900 req/s,
    45 commits a second of ~110 events instead of 5 of ~1,000, docs/benchmarks.md)."""
    commits: list[float] = []

    def slow_commit(connection: Connection) -> None:
        commits.append(time.monotonic())
        time.sleep(0.05)  # a commit that takes a while: a loaded machine, a slow disk

    event.listen(engine, "commit", slow_commit)
    log = AuditLog(engine, flush_interval=0.25, batch_max=100_000)
    log.start()
    recorded = 0
    try:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            log.record(decision(recorded))
            recorded += 1
            time.sleep(0.002)
        log.close()
    finally:
        event.remove(engine, "commit", slow_commit)
    assert count(database_url) == recorded
    # A round every 0.25 s for 1.5 s, and one on close: about 7 commits. Drained until
    # empty, a commit followed the last one every 50 ms: about 25.
    assert len(commits) <= 12, len(commits)
    assert verify(iter_records(engine), head=read_head(engine)).ok


def test_durable_append_is_committed_when_it_returns(engine: Engine, database_url: str) -> None:
    log = AuditLog(engine, flush_interval=30.0)
    log.start()
    log.record(decision())

    async def sign_in() -> None:
        await log.append(SignInSucceeded(user="tanaka", source_ip="192.0.2.1",
                                         methods=("pwd",), session="ab12"))

    started = time.monotonic()
    asyncio.run(sign_in())
    assert time.monotonic() - started < 5  # did not wait for the 30 s interval
    assert count(database_url) == 2  # the queued decision joined the same commit
    assert log.append_sync(UserChanged(admin="admin", user="sato", action="create")) == 3
    assert count(database_url) == 3
    log.close()


def test_append_sync_without_a_writer_thread_writes_directly(
        engine: Engine, database_url: str) -> None:
    log = AuditLog(engine)
    assert log.append_sync(UserChanged(admin="admin", user="sato", action="create")) == 1
    assert count(database_url) == 1
    log.close()


def test_clock_is_injected(engine: Engine) -> None:
    moment = datetime(2024, 4, 1, 0, 0, 0, 5, tzinfo=UTC)
    log = AuditLog(engine, now=lambda: moment)
    log.append_sync(UserChanged(admin="admin", user="sato", action="create"))
    (record,) = iter_records(engine)
    assert record.occurred_at == moment
    assert '"occurred_at":"2024-04-01T00:00:00.000005Z"' in record.body


def test_graceful_close_loses_nothing(engine: Engine, database_url: str) -> None:
    # The writer waits for close (flush 5 s); no lag limit may refuse what the loop records
    # meanwhile, however slowly a loaded machine records 5,000 events.
    log = AuditLog(engine, flush_interval=5.0, batch_max=100_000, max_lag=60.0)
    log.start()
    for n in range(5000):
        log.record(decision(n))
    log.close()
    assert count(database_url) == 5000
    assert verify(iter_records(engine), head=read_head(engine)).ok
    with pytest.raises(AuditUnavailable):
        log.record(decision())


def test_fails_closed_while_the_database_is_broken_and_loses_nothing(
        engine: Engine, database_url: str) -> None:
    log = AuditLog(engine, flush_interval=0.05)
    log.retry_max = 0.1
    log.start()
    log.record(decision(0))
    wait_for(lambda: log.committed == 1)
    with engine.begin() as connection:  # break the append path under the running writer
        connection.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    for n in range(1, 21):
        log.record(decision(n))
    wait_for(lambda: not log.healthy)
    with pytest.raises(AuditUnavailable) as caught:
        log.record(decision(99))  # the gateway turns this into a 503 deny
    assert caught.value.status == 503
    with pytest.raises(AuditUnavailable):
        log.append_sync(UserChanged(admin="admin", user="sato", action="create"))
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
    wait_for(lambda: log.healthy)
    log.record(decision(21))
    log.close()
    records = list(iter_records(engine))
    assert len(records) == 22  # the 20 held during the outage, none lost
    assert verify(records, head=read_head(engine)).ok


def test_unreachable_postgresql_fails_closed() -> None:
    engine = create_database_engine(unreachable_url())
    log = AuditLog(engine, flush_interval=0.01)
    log.retry_max = 0.05
    log.start()
    log.record(decision())
    wait_for(lambda: not log.healthy)
    with pytest.raises(AuditUnavailable):
        log.record(decision())
    with pytest.raises(AuditUnavailable) as caught:
        log.close(timeout=0.3)
    assert "1 events not written" in caught.value.description
    engine.dispose()


def test_a_lagging_writer_refuses_new_events(engine: Engine) -> None:
    clock = [100.0]
    log = AuditLog(engine, max_lag=0.5, monotonic=lambda: clock[0])  # writer not started
    log.record(decision(0))
    clock[0] += 0.4
    log.record(decision(1))
    clock[0] += 0.2  # the oldest uncommitted event is now 0.6 s old
    assert not log.healthy
    with pytest.raises(AuditUnavailable, match="writer behind"):
        log.record(decision(2))
    log.flush()
    assert log.healthy
    log.record(decision(3))
    log.close()


def test_a_full_queue_refuses_new_events(engine: Engine) -> None:
    log = AuditLog(engine, queue_max=3)
    for n in range(3):
        log.record(decision(n))
    with pytest.raises(AuditUnavailable, match="queue full"):
        log.record(decision(3))
    log.close()


def test_a_cancelled_durable_append_does_not_kill_the_writer(
        engine: Engine, database_url: str) -> None:
    log = AuditLog(engine, flush_interval=30.0)
    log.start()

    async def client_goes_away() -> None:
        task = asyncio.create_task(log.append(UserChanged(admin="a", user="b", action="create")))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(client_goes_away())
    log.flush()
    assert log.healthy
    log.append_sync(UserChanged(admin="a", user="c", action="create"))
    assert count(database_url) == 2
    log.close()
