"""Several worker processes behind one port: the master relays reloads and restarts workers."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from sekisho.app import worker_nice

from .harness import EchoUpstream, GatewayProcess


def _worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def _assert_worker_priority(master: int, workers: int) -> None:
    """Relaying workers run `worker_nice(workers)` steps below the master: enough for the
    audit master to keep up, no more (a lowered worker loses the CPU to every other process;
    with two workers they keep the master's priority)."""
    expected = min(os.getpriority(os.PRIO_PROCESS, master) + worker_nice(workers), 19)
    deadline = time.monotonic() + 10
    while {os.getpriority(os.PRIO_PROCESS, pid) for pid in _worker_pids(master)} != {expected}:
        assert time.monotonic() < deadline, f"workers should run at nice {expected}"
        time.sleep(0.1)


def _assert_idle_audit_threads(master: int) -> None:
    """The master's audit writer and WAL checkpointer run at idle CPU priority while the
    machine has CPU to spare (audit.priority); its other threads never do. (They go idle
    after 2 s in which a fifth of the CPU was unused: the test itself leaves it idle.)"""
    deadline = time.monotonic() + 30
    while True:
        idle = [int(tid) for tid in os.listdir(f"/proc/{master}/task")
                if os.sched_getscheduler(int(tid)) == os.SCHED_IDLE]
        if len(idle) == 2:
            break
        assert time.monotonic() < deadline, f"idle threads in the master: {idle}"
        time.sleep(0.1)
    assert os.sched_getscheduler(master) == os.SCHED_OTHER  # its event loop
    for worker in _worker_pids(master):
        assert os.sched_getscheduler(worker) == os.SCHED_OTHER


def test_two_workers_serve_reload_and_are_restarted(tmp_path: Path,
                                                    upstream: EchoUpstream) -> None:
    gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/sekisho.db", upstream)
    gateway.config.write_text(gateway.config.read_text().replace("workers: 1", "workers: 2"))
    gateway.provision()
    gateway.start()
    try:
        assert gateway.process is not None
        deadline = time.monotonic() + 15
        while len(_worker_pids(gateway.process.pid)) < 2:
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
        _assert_worker_priority(gateway.process.pid, 2)
        _assert_idle_audit_threads(gateway.process.pid)
        browser = gateway.browser()
        # Sessions live in the database: a sign-in on one worker is valid on the other.
        browser.signin("wiki.localhost", "tanaka")
        statuses = {browser.get("wiki.localhost", f"/{i}").status for i in range(20)}
        assert statuses == {200}
        # Decisions made on the workers reach the master's single writer and the chain.
        deadline = time.monotonic() + 10
        while True:
            exported = gateway.cli("audit", "export", "--format", "jsonl").stdout
            paths = {json.loads(line)["event"].get("path") for line in exported.splitlines()}
            if {f"/{i}" for i in range(20)} <= paths:
                break
            assert time.monotonic() < deadline, "worker decisions missing from the audit chain"
            time.sleep(0.2)

        original = gateway.config.read_text()
        gateway.config.write_text(original.replace(
            "    segment: internet\n    policy: staff",
            "    segment: internet\n    policy: admins"))
        gateway.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while {browser.get("wiki.localhost", f"/{i}").status for i in range(10)} != {403}:
            assert time.monotonic() < deadline, "both workers should apply the reload"
            time.sleep(0.2)

        victim = _worker_pids(gateway.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while True:
            pids = _worker_pids(gateway.process.pid)
            if len(pids) == 2 and victim not in pids:
                break
            assert time.monotonic() < deadline, "the master should restart a dead worker"
            time.sleep(0.2)
        status, body = gateway.admin_get("/metrics")
        assert status == 200 and b"sekisho_requests_total" in body
    finally:
        assert gateway.stop() == 0
    assert gateway.cli("audit", "verify").returncode == 0


def test_workers_exit_when_the_master_is_killed(tmp_path: Path, upstream: EchoUpstream) -> None:
    gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/sekisho.db", upstream)
    gateway.config.write_text(gateway.config.read_text().replace("workers: 1", "workers: 2"))
    gateway.provision()
    gateway.start()
    assert gateway.process is not None
    deadline = time.monotonic() + 15
    while len(workers := _worker_pids(gateway.process.pid)) < 2:
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.1)
    gateway.process.send_signal(signal.SIGKILL)
    gateway.process.wait(10)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in workers):
        assert time.monotonic() < deadline, "orphaned workers should exit"
        time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"
