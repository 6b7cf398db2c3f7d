"""The audit threads' idle CPU priority (audit.priority): when they go idle, and every way they
are lifted back, with real threads, a real saturated machine and a real relay connection."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from sekisho.audit.events import AccessDecision
from sekisho.audit.log import AuditLog, AuditUnavailable
from sekisho.audit.priority import (
    BackgroundPriority,
    CpuIdleShare,
    Governor,
    idle_is_reversible,
    is_idle,
    set_idle,
)
from sekisho.audit.relay import _PRIORITY, _STATUS, AuditRelay, AuditRelayServer, _frame
from sekisho.storage.audit_log import iter_records


def decision(n: int) -> AccessDecision:
    return AccessDecision(route="portal", user="tanaka", decision="allow", reasons=("ok",),
                          source_ip="192.0.2.1", method="GET", path=f"/n/{n}", status=200,
                          bytes_in=0, bytes_out=512, duration_ms=0.25, session="ab12")


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A thread of this process that only waits; yields its kernel id, at normal priority."""
    done = threading.Event()
    thread = threading.Thread(target=done.wait)
    thread.start()
    assert thread.native_id is not None
    try:
        yield thread.native_id
    finally:
        done.set()
        thread.join()


@pytest.fixture
def file_engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite database in a file: in WAL mode, so the log has a checkpoint thread
    beside its writer."""
    from sekisho.storage.database import create_database_engine, upgrade

    engine = create_database_engine(f"sqlite:///{tmp_path}/a.db")
    upgrade(engine)
    yield engine
    engine.dispose()


def background_log(engine: Engine) -> AuditLog:
    audit = AuditLog(engine, flush_interval=0.05, background=True)
    audit.start()
    return audit


# -- the decision, pure ----------------------------------------------------------------------

@pytest.mark.parametrize(("samples", "expected"), [
    ([(0.0, False, 0.9)], False),  # calm, but not yet for `hold`
    ([(0.0, False, 0.9), (2.0, False, 0.9)], True),  # calm for `hold`: idle
    ([(0.0, False, 0.9), (1.0, False, 0.1), (2.0, False, 0.9)], False),  # busy machine: again
    ([(0.0, False, 0.9), (1.0, True, 0.9), (2.5, False, 0.9)], False),  # the log lagged: again
    ([(0.0, False, 0.9), (2.0, False, 0.9), (2.1, True, 0.9)], False),  # lag lifts at once
    ([(0.0, False, 0.9), (2.0, False, 0.9), (2.1, False, 0.2)], False),  # so does a busy CPU
    ([(0.0, False, None), (2.0, False, None)], False),  # CPU use unknown: never idle
    ([(0.0, False, 0.25), (2.0, False, 0.25)], True),  # `min_idle` itself is enough
])
def test_governor(samples: list[tuple[float, bool, float | None]], expected: bool) -> None:
    governor = Governor(hold=2.0, min_idle=0.25)
    wanted = [governor.idle(*sample) for sample in samples]
    assert wanted[-1] is expected


def test_cpu_idle_share_reads_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n")
    share = CpuIdleShare(str(stat))
    stat.write_text("cpu  150 0 150 750 100 0 0 0 50 0\n")  # guest is inside user already
    assert share() == pytest.approx(50 / 150)
    assert share() is None  # no time has passed
    stat.write_text("garbage\n")
    assert share() is None
    stat.unlink()
    assert share() is None
    real = CpuIdleShare()
    time.sleep(0.05)
    value = real()
    assert value is None or 0.0 <= value <= 1.0


def test_idle_is_reversible_here_and_refused_without_the_capability() -> None:
    # The test machine runs as root (CAP_SYS_NICE); without it, and with the kernel's default
    # RLIMIT_NICE of 0, a thread that went idle could never come back: never lower then.
    # (A container without CAP_SYS_RESOURCE cannot raise RLIMIT_NICE to test `LimitNICE=+0`.)
    assert idle_is_reversible()
    assert resource.getrlimit(resource.RLIMIT_NICE)[0] == 0
    code = ("from sekisho.audit.priority import idle_is_reversible as r; import os;"
            "print(r(), os.sched_getscheduler(0) == os.SCHED_OTHER)")
    out = subprocess.run(
        ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", sys.executable, "-c",
         code], capture_output=True, text=True, check=True, env={**os.environ})
    assert out.stdout.split() == ["False", "True"], out.stderr


def test_a_log_without_leave_to_return_keeps_its_writer_at_normal_priority(
        tmp_path: Path) -> None:
    code = f"""
import time
from sekisho.audit.log import AuditLog, AuditUnavailable
from sekisho.storage.database import create_database_engine, upgrade
engine = create_database_engine("sqlite:///{tmp_path}/a.db")
upgrade(engine)
audit = AuditLog(engine, background=True)
audit.start()
time.sleep(0.2)
print(audit.priority is None, audit._writer.native_id)
audit.close()
"""
    out = subprocess.run(
        ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", sys.executable, "-c",
         code], capture_output=True, text=True, check=True, env={**os.environ})
    assert out.stdout.split()[0] == "True", out.stderr


# -- the threads -----------------------------------------------------------------------------

def test_set_idle_and_back(sleeper: int) -> None:
    assert not is_idle(sleeper)
    assert set_idle([sleeper], True)
    assert is_idle(sleeper)
    assert set_idle([sleeper], False)
    assert not is_idle(sleeper)
    assert not set_idle([2 ** 22 + 7], False)  # no such thread: reported, not raised


def test_background_priority_lowers_when_calm_and_lifts_at_once(sleeper: int) -> None:
    clock = [0.0]
    shares = iter([0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    priority = BackgroundPriority((sleeper,), Governor(hold=1.0), lambda: next(shares),
                                  monotonic=lambda: clock[0])
    for moment in (0.2, 0.5, 1.0):  # the CPU is sampled every 0.5 s: calm from 0.5
        clock[0] = moment
        priority.step(False)
        assert not is_idle(sleeper)
    clock[0] = 1.5
    priority.step(False)
    assert priority.idle and is_idle(sleeper) and priority.lowered == 1
    priority.lift()
    assert not priority.idle and not is_idle(sleeper) and priority.lifted == 1
    clock[0] = 2.0
    priority.step(False)  # calm again, but `hold` starts over
    assert not is_idle(sleeper)


def test_background_priority_notices_a_lift_from_elsewhere(sleeper: int) -> None:
    clock = [0.0]
    priority = BackgroundPriority((sleeper,), Governor(hold=0.5), lambda: 0.9,
                                  monotonic=lambda: clock[0])
    for moment in (0.5, 1.0):  # calm from the first CPU sample at 0.5
        clock[0] = moment
        priority.step(False)
    assert is_idle(sleeper)
    set_idle([sleeper], False)  # a worker lifted it: the log lagged
    clock[0] = 1.2
    priority.step(False)
    assert not priority.idle and priority.lifted == 1
    clock[0] = 1.5
    priority.step(False)
    assert not is_idle(sleeper)  # not lowered again before a whole calm `hold`
    clock[0] = 2.0  # calm since 1.5
    priority.step(False)
    assert is_idle(sleeper)


def test_a_lift_racing_with_lowering_leaves_no_thread_idle(sleeper: int) -> None:
    """`lift` does not wait for the writer's lock: landing between the writer lowering its
    first thread and its second, it leaves the second lowered while the writer counts both
    lowered. The writer's next step must lift them all, not judge by the first alone."""
    other = threading.Event()
    thread = threading.Thread(target=other.wait)
    thread.start()
    assert thread.native_id is not None
    try:
        clock = [0.0]
        priority = BackgroundPriority((sleeper, thread.native_id), Governor(hold=0.5),
                                      lambda: 0.9, monotonic=lambda: clock[0])
        for moment in (0.5, 1.0):
            clock[0] = moment
            priority.step(False)
        assert priority.idle and is_idle(sleeper) and is_idle(thread.native_id)
        set_idle([sleeper], False)  # the lift landed after the first thread only
        clock[0] = 1.2
        priority.step(False)
        assert not priority.idle and priority.lifted == 1
        assert not is_idle(sleeper) and not is_idle(thread.native_id)
    finally:
        set_idle([thread.native_id], False)
        other.set()
        thread.join()


def test_the_writer_and_checkpointer_go_idle_while_the_machine_is(
        file_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # An idle machine, whatever else runs beside the test (the reading: test_cpu_idle_share).
    monkeypatch.setattr(CpuIdleShare, "__call__", lambda self: 0.9)
    engine = file_engine
    audit = background_log(engine)
    try:
        priority = audit.priority
        assert priority is not None and len(priority.tids) == 2  # writer and checkpointer
        assert audit.checkpointer is not None
        assert set(priority.tids) == {audit._writer.native_id,  # type: ignore[union-attr]
                                      audit.checkpointer.native_id}
        assert not any(is_idle(tid) for tid in priority.tids)  # normal until calm for `hold`
        wait_for(lambda: all(is_idle(tid) for tid in priority.tids), timeout=priority_hold(audit))
        for n in range(50):
            audit.record(decision(n))
        audit.flush()
    finally:
        audit.close()
    assert not any(is_idle(tid) for tid in priority.tids if tid_alive(tid))
    assert len(list(iter_records(engine))) == 50


def priority_hold(audit: AuditLog) -> float:
    assert audit.priority is not None
    return audit.priority.governor.hold + 5.0


def tid_alive(tid: int) -> bool:
    return os.path.exists(f"/proc/{os.getpid()}/task/{tid}")


def test_a_saturated_machine_gets_the_idle_writer_lifted(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every core busy at normal priority: an idle writer would get almost no CPU (its events
    then wait past `max_lag` and every request is refused). The master's `keep_up` tick
    lifts it, and the governor keeps it up while the machine has no idle time."""
    # An idle machine to begin with, whatever runs beside the test; then none to spare, as
    # under the spinners (a real reading, taken every 0.5 s, could still span calm time and
    # let the governor lower the writer again: the reading has its own test).
    calm = [True]
    monkeypatch.setattr(CpuIdleShare, "__call__", lambda self: 0.9 if calm[0] else 0.0)
    audit = background_log(engine)
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        priority = audit.priority
        assert priority is not None
        priority.governor.hold = 0.3
        wait_for(lambda: priority.idle and all(is_idle(tid) for tid in priority.tids))
        calm[0] = False
        spin = "import time\nend = time.monotonic() + 4\nwhile time.monotonic() < end: pass"
        spinners = [subprocess.Popen([sys.executable, "-c", spin])
                    for _ in range(6 * (os.cpu_count() or 1))]
        time.sleep(0.3)  # the spinners are running
        recorded = 0
        healthy = []
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            # 1,200 events a second: more than an idle writer gets the CPU for under the
            # spinners (it kept up with 400 a second at times, and was never lifted), well
            # within what it commits at normal priority beside them.
            for _ in range(60):
                audit.record(decision(recorded))  # raises AuditUnavailable if the log lags
                recorded += 1
            healthy.append(audit.healthy)
            audit.keep_up()  # as the master's relay server every status tick
            time.sleep(0.05)
        assert all(healthy)
        assert priority.lifted >= 1 and not priority.idle
        assert not any(is_idle(tid) for tid in priority.tids)
        audit.flush()
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
        audit.close()
    assert len(list(iter_records(engine))) == recorded


# -- the relay -------------------------------------------------------------------------------

def silent_master(priority_frame: bytes) -> Callable[
        [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A master's side that sends `priority_frame` as its `P` frame, then reports itself
    healthy every 50 ms and never acknowledges anything."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_frame(_PRIORITY, 0, priority_frame))
        while not writer.is_closing():
            writer.write(_frame(_STATUS, 0, b"1"))
            await asyncio.sleep(0.05)

    return serve


async def told(relay: AuditRelay) -> None:
    """Until the relay is healthy and has the threads to lift from its master."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 5
    while not (relay.healthy and relay._lift_tids):
        assert loop.time() < end, "no priority frame from the master"
        await asyncio.sleep(0.01)


def test_the_master_tells_its_workers_which_threads_to_lift(tmp_path: Path,
                                                            file_engine: Engine) -> None:
    audit = background_log(file_engine)
    path = str(tmp_path / "a.sock")

    async def scenario() -> tuple[float, tuple[int, ...]]:
        server = AuditRelayServer(audit, path)
        await server.start()
        relay = AuditRelay(path)
        await relay.start()
        await told(relay)
        got = relay._lift_after, relay._lift_tids
        await relay.close()
        await server.close()
        return got

    try:
        after, tids = asyncio.run(scenario())
        assert audit.priority is not None
        assert tids == audit.priority.tids
        assert after == pytest.approx(audit.lift_after, abs=0.001)
    finally:
        audit.close()


def test_a_worker_lifts_the_masters_threads_when_its_batch_waits(tmp_path: Path,
                                                                 sleeper: int) -> None:
    """A writer preempted while it holds the GIL stalls the master's loop too: nothing in the
    master can lift it, so the worker whose acknowledgement is late does."""
    path = str(tmp_path / "a.sock")
    set_idle([sleeper], True)

    async def scenario() -> AuditRelay:
        server = await asyncio.start_unix_server(silent_master(f"200 {sleeper}".encode()), path)
        relay = AuditRelay(path)
        relay.ack_timeout = 5.0
        await relay.start()
        await told(relay)
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        relay.record(decision(0))
        await asyncio.sleep(0.1)
        assert is_idle(sleeper)  # not yet: 200 ms have not passed
        while is_idle(sleeper):
            assert loop.time() < end, "the worker did not lift the thread"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        with pytest.raises(AuditUnavailable):  # not acknowledged: refused, as before
            await relay.close(timeout=0.1)
        server.close()
        return relay

    relay = asyncio.run(scenario())
    assert relay.lifts >= 1 and relay.lifts <= 3  # once per 200 ms at most, not every tick


def test_a_malformed_priority_frame_is_ignored(tmp_path: Path) -> None:
    path = str(tmp_path / "a.sock")

    async def scenario() -> AuditRelay:
        server = await asyncio.start_unix_server(silent_master(b"soon 12x"), path)
        relay = AuditRelay(path)
        await relay.start()
        await asyncio.sleep(0.2)
        assert relay.healthy and relay._lift_tids == ()
        await relay.close(timeout=0.1)
        server.close()
        return relay

    asyncio.run(scenario())


def test_a_failing_priority_control_leaves_the_writer_writing_at_normal_priority(
        file_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CpuIdleShare, "__call__", lambda self: 0.9)  # an idle machine
    engine = file_engine
    audit = background_log(engine)
    try:
        priority = audit.priority
        assert priority is not None
        priority.governor.hold = 0.0
        wait_for(lambda: all(is_idle(tid) for tid in priority.tids))

        def broken() -> float:
            raise ValueError("an unreadable /proc/stat")

        monkeypatch.setattr(priority, "_idle_share", broken)
        priority.sample_every = 0.0
        wait_for(lambda: audit.priority is None)
        assert not any(is_idle(tid) for tid in priority.tids)
        for n in range(20):
            audit.record(decision(n))
        audit.flush()
        assert audit.healthy
    finally:
        audit.close()
    assert len(list(iter_records(engine))) == 20


def test_lift_never_waits_for_the_writer(sleeper: int) -> None:
    priority = BackgroundPriority((sleeper,), Governor(hold=0.0), lambda: 0.9)
    priority.sample_every = 0.0
    priority.step(False)
    priority.step(False)
    assert is_idle(sleeper)
    with priority._lock:  # the writer, preempted inside its step
        lifting = threading.Thread(target=priority.lift)  # the master's loop
        lifting.start()
        lifting.join(2.0)
        assert not lifting.is_alive(), "lift() waited for the writer's lock"
        assert not is_idle(sleeper)
    priority.step(False)  # it notices it was lifted: lagging, not calm
    assert not priority.idle and priority.lifted == 1 and not is_idle(sleeper)
