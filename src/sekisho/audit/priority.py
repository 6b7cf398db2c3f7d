"""Idle CPU priority for the master's audit threads, lifted back to normal when the log lags.

Why: the master's audit writer commits every worker's decisions in bursts (thousands of
records every `flush_interval`) on the cores the workers answer requests on; at half load
those bursts added 1–2 ms to the workers' p99. A thread under Linux's SCHED_IDLE runs only
where nothing else wants the core, and the scheduler counts a core running only such threads
as idle when it places a waking worker: the worker takes the core at once. With the writer
and the WAL checkpointer there, the p99 fell to what it is with the master discarding the
records (docs/benchmarks.md).

The danger is the other side: on a saturated machine a SCHED_IDLE thread gets almost no CPU,
the log falls behind and every request is refused (measured: nine in ten answered 503). So:
- the threads go idle only after `hold` seconds in which the machine kept `min_idle` of its
  CPU time unused (`/proc/stat`) and the log kept up (`Governor`, pure);
- they are lifted back the moment the log lags: by the writer itself at each batch, by the
  master's loop, and by the workers whose acknowledgements are late (`lift`; a writer
  preempted while it holds the GIL stalls the master's loop as well, not the workers);
- a thread leaves SCHED_IDLE only with the kernel's leave (CAP_SYS_NICE, or RLIMIT_NICE
  allowing nice 0: systemd `LimitNICE=+0`). `idle_is_reversible()` tries it on a throwaway
  thread first; without it the threads never go idle (today's behaviour, never stuck idle).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger("sekisho.audit.priority")

_IDLE = getattr(os, "SCHED_IDLE", None)
_NORMAL = getattr(os, "SCHED_OTHER", None)


@functools.cache
def idle_is_reversible() -> bool:
    """Whether a thread of this process may go to SCHED_IDLE and come back (tried once, on a
    throwaway thread: a thread that went idle without leave to return would stay idle)."""
    outcome = [False]

    def attempt() -> None:
        if _IDLE is None or _NORMAL is None:
            return
        try:
            os.sched_setscheduler(0, _IDLE, os.sched_param(0))
            os.sched_setscheduler(0, _NORMAL, os.sched_param(0))
        except OSError:
            return
        outcome[0] = True

    probe = threading.Thread(target=attempt, name="sekisho-priority-probe")
    probe.start()
    probe.join()
    return outcome[0]


def set_idle(tids: Iterable[int], idle: bool) -> bool:
    """Put the threads `tids` (kernel thread ids, of any process of ours) at idle or normal
    priority; False when one could not be changed (gone, or the kernel refused)."""
    policy = _IDLE if idle else _NORMAL
    if policy is None:
        return False
    done = True
    for tid in tids:
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
        except OSError:
            done = False
    return done


def is_idle(tid: int) -> bool:
    return _IDLE is not None and os.sched_getscheduler(tid) == _IDLE


class CpuIdleShare:
    """The share of the machine's CPU time left unused since the previous call (`/proc/stat`:
    idle and iowait over all but guest time, which is counted in user time already); None when
    it cannot be read or no time has passed."""

    def __init__(self, path: str = "/proc/stat") -> None:
        self._path = path
        self._last = self._read()

    def _read(self) -> tuple[int, int] | None:
        try:
            with open(self._path, "rb") as file:
                fields = file.readline().split()
        except OSError:
            return None
        if len(fields) < 8 or fields[0] != b"cpu":
            return None
        ticks = [int(value) for value in fields[1:9]]
        return ticks[3] + ticks[4], sum(ticks)

    def __call__(self) -> float | None:
        now, last = self._read(), self._last
        self._last = now
        if now is None or last is None or now[1] <= last[1]:
            return None
        return (now[0] - last[0]) / (now[1] - last[1])


class Governor:
    """Whether the background threads may run at idle priority now (pure: samples in, the
    wanted level out). Idle only after `hold` seconds of samples that each found the log up to
    date and at least `min_idle` of the CPU unused; one sample otherwise lifts at once."""

    def __init__(self, hold: float = 2.0, min_idle: float = 0.2) -> None:
        self.hold = hold
        self.min_idle = min_idle
        self._calm_since: float | None = None

    def idle(self, now: float, behind: bool, idle_share: float | None) -> bool:
        if behind or idle_share is None or idle_share < self.min_idle:
            self._calm_since = None
            return False
        if self._calm_since is None:
            self._calm_since = now
        return now - self._calm_since >= self.hold


class BackgroundPriority:
    """The audit threads' priority: `step` at each writer batch decides, `lift` from any
    thread (the master's loop) undoes idleness at once. Changes are logged at debug level and
    counted (`lowered`, `lifted`)."""

    sample_every = 0.5  # seconds per CPU sample (shorter ones swing with every burst)

    def __init__(self, tids: tuple[int, ...], governor: Governor | None = None,
                 idle_share: Callable[[], float | None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.tids = tids
        self.governor = governor or Governor()
        self._idle_share = idle_share or CpuIdleShare()
        self._monotonic = monotonic
        self._share: float | None = None
        self._sampled_at = monotonic()
        self.idle = False
        self.lowered = 0
        self.lifted = 0
        self._lock = threading.Lock()  # the writer steps, the master's loop lifts

    def step(self, behind: bool) -> None:
        with self._lock:
            self._step(behind)

    def _step(self, behind: bool) -> None:
        if self.idle and not all(is_idle(tid) for tid in self.tids):
            # A worker lifted the threads (its acknowledgements were late): the log lagged.
            # All of them, again: a lift racing with our own lowering (`lift` does not wait
            # for the lock) can leave one lowered after it.
            set_idle(self.tids, False)
            self.idle = False
            self.lifted += 1
            behind = True
        now = self._monotonic()
        if now - self._sampled_at >= self.sample_every:
            self._share = self._idle_share()
            self._sampled_at = now
        want = self.governor.idle(now, behind, None if behind else self._share)
        if want != self.idle:
            self._apply(want)

    def lift(self) -> None:
        """Back to normal priority now (the log lags); the governor decides when to go idle.
        Never waits: while the writer holds the lock (it may be preempted there, at idle
        priority) the threads are lifted directly, and its next step sees that they were."""
        if not self._lock.acquire(blocking=False):
            set_idle(self.tids, False)
            return
        try:
            self.governor.idle(self._monotonic(), True, None)
            if self.idle:
                self._apply(False)
        finally:
            self._lock.release()

    def _apply(self, idle: bool) -> None:
        if not set_idle(self.tids, idle):
            if idle:
                set_idle(self.tids, False)  # all or none: never half idle
                log.warning("audit threads: could not lower their priority; staying at normal")
                return
            log.error("audit threads: could not lift their priority back to normal")
        self.idle = idle
        if idle:
            self.lowered += 1
        else:
            self.lifted += 1
        log.debug("audit threads at %s priority", "idle" if idle else "normal")
