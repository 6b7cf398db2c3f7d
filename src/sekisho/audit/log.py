"""The audit log of one process: a single writer thread with group commit, failing closed.

Access decisions are `record()`ed without waiting: they join an in-memory queue that the
writer commits every `flush_interval` seconds (or sooner when `batch_max` are waiting), so a
hard kill loses at most the events of the last moments (see docs/audit.md). `record()` runs
on the gateway's event loop for every request, so it only stamps the time and queues the
frozen event; canonical JSON, time formatting and hashing happen in the writer. Sign-ins
and admin changes are `append()`ed durably: they join the next batch, trigger it at once, and
return only after the commit. If the database fails, the writer keeps the events and retries
with back-off, and meanwhile every `record()`/`append()` raises `AuditUnavailable` so the
gateway denies: no request is served that the audit log cannot record (fail closed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from json.encoder import encode_basestring as _quote
from typing import Any

from sqlalchemy import Engine

from sekisho.audit.chain import RESERVED_KEYS, canonical_json
from sekisho.audit.columns import of_event
from sekisho.audit.events import AccessDecision, AccessFields, AuditEvent
from sekisho.audit.priority import BackgroundPriority, idle_is_reversible, set_idle
from sekisho.audit.rows import PendingRecord

# In errors.py: a compiled class (mypyc) would not take its status over SekishoError's.
from sekisho.errors import AuditUnavailable as AuditUnavailable  # noqa: PLC0414 (re-export)
from sekisho.storage.audit_log import append_batch, check_writable
from sekisho.storage.checkpoint import WalCheckpointer, has_wal

log = logging.getLogger("sekisho.audit")

_UNAVAILABLE = "監査ログに記録できません / the audit log cannot record events"


def _utcnow() -> datetime:
    return datetime.now(UTC)


_FIELDS: dict[type[AuditEvent], tuple[str, ...]] = {}


def _names_of(cls: type[AuditEvent]) -> tuple[str, ...]:
    """The field names of an event class, checked once per class (cheap on the hot path)."""
    names = _FIELDS.get(cls)
    if names is None:
        if not cls.event_type:
            raise TypeError(f"{cls.__name__} has no event_type and cannot be appended")
        names = tuple(field.name for field in dataclasses.fields(cls))
        for reserved in RESERVED_KEYS:
            if reserved in names:
                raise ValueError(f"event field {reserved!r} is reserved")
        _FIELDS[cls] = names
    return names


def _fields_of(event: AuditEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in _names_of(type(event))}


_INF = float("inf")
# Per event class: (text before the value, attribute name or "" for occurred_at), in the
# sorted key order of canonical JSON.
_PLANS: dict[type[AuditEvent], tuple[tuple[str, str], ...]] = {}


def _plan(cls: type[AuditEvent]) -> tuple[tuple[str, str], ...]:
    plan = _PLANS.get(cls)
    if plan is None:
        keys = sorted((*_names_of(cls), *RESERVED_KEYS))
        plan = _PLANS[cls] = tuple(
            (("{" if i == 0 else ",") + _quote(key) + ":",
             "" if key == "occurred_at" else key) for i, key in enumerate(keys))
    return plan


def utc_text(moment: datetime) -> str:
    """`chain.format_time` for an aware UTC datetime, without strftime."""
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
            f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z")


class UtcClockText:
    """`utc_text` of the current time (`time.time()`), for the request path: the date and the
    time of day change once a second, so they are formatted once a second and each call
    formats only the microseconds (a fifth of the instructions of `utc_text(datetime.now())`).
    """

    __slots__ = ("_clock", "_prefix", "_second")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        now = self._clock()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._second = second
        # `%` and not an f-string with a format spec: about half the instructions.
        return "%s%06dZ" % (self._prefix, int((now - second) * 1_000_000))  # noqa: UP031


def _fast_body(event: AuditEvent, occurred_at: datetime, when: str = "") -> str:
    """`canonical_json` of the event, byte for byte, built from a per-class plan.

    Handles the value types events use (str, int, float, bool, None, tuples of str); any
    other value falls back to `canonical_json`, so the result is always the canonical body.
    `when` is `utc_text(occurred_at)` when the caller has it already.
    """
    when = when or utc_text(occurred_at)
    if type(event) is AccessDecision:
        body = _access_body(event, when)
        if body is not None:
            return body
    parts: list[str] = []
    for prefix, name in _plan(type(event)):
        if not name:
            text = '"' + when + '"'
        else:
            value: Any = getattr(event, name) if name != "event_type" else event.event_type
            kind = type(value)
            if kind is str:
                text = _quote(value)
            elif kind is int:
                text = int.__repr__(value)
            elif kind is float and value == value and value not in (_INF, -_INF):  # noqa: PLR0124
                text = float.__repr__(value)
            elif kind is bool or value is None:
                text = "true" if value is True else "false" if value is False else "null"
            elif kind is tuple and all(type(item) is str for item in value):
                text = "[" + ",".join(map(_quote, value)) + "]"
            else:
                return canonical_json(event.event_type, occurred_at, _fields_of(event))
        parts.append(prefix)
        parts.append(text)
    parts.append("}")
    return "".join(parts)


# The canonical body of an access decision, keys in sorted order (see `_access_body`).
_ACCESS_BODY = (
    '{"bytes_in":%d,"bytes_out":%d,"decision":%s,"duration_ms":%r,'
    '"event_type":"access.decision","method":%s,"occurred_at":"%s","path":%s,"reasons":[%s],'
    '"route":%s,"session":%s,"source_ip":%s,"status":%d,"user":%s}')


def access_body(when: str, fields: tuple[Any, ...]) -> str | None:
    """The canonical body of `AccessDecision(*fields)` at `when` (`utc_text`),
    written out: the event every request records, without the plan's loop and per-value
    dispatch (`line_of` 7.2 → 3.7 µs), and without building the event at all when a sink takes
    the fields (`AuditRelay.record_access`). None when a value is not of its declared type (the
    plan then decides, as for any event).

    Text fields need no type check: `_quote` refuses anything but a string (TypeError), and
    encodes a string exactly as the canonical encoder does. Numbers do: `%d` would print a
    bool as 1 where JSON says true. The values are taken as `Any`: compiled (mypyc), a declared
    type is checked or converted on the way in (a bool made 1), which is this check's job."""
    (route, user, decision, reasons, source_ip, method, path, status, bytes_in, bytes_out,
     duration_ms, session) = fields
    if not (type(status) is int and type(bytes_in) is int and type(bytes_out) is int
            and type(duration_ms) is float
            and duration_ms - duration_ms == 0.0  # finite: no NaN, ±inf
            and type(reasons) is tuple):
        return None
    quote = _quote
    try:
        return _ACCESS_BODY % (
            bytes_in, bytes_out, quote(decision), duration_ms, quote(method), when, quote(path),
            ",".join(map(quote, reasons)), quote(route), quote(session), quote(source_ip),
            status, quote(user))
    except TypeError:
        return None


def _access_body(event: AccessDecision, when: str) -> str | None:
    """`access_body` of an event (its values as they are: see `access_body`)."""
    e: Any = event
    return access_body(when, (e.route, e.user, e.decision, e.reasons, e.source_ip, e.method,
                              e.path, e.status, e.bytes_in, e.bytes_out, e.duration_ms,
                              e.session))


def _settle(future: concurrent.futures.Future[int], outcome: int | BaseException) -> None:
    """Resolve a waiter's future; one whose awaiting task was cancelled is left alone (its
    event is committed all the same)."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except concurrent.futures.InvalidStateError:
        pass


class _Item:
    """One queued entry: an event (or a flush marker when `record` is None)."""

    __slots__ = ("durable", "future", "queued_at", "record")

    def __init__(self, record: PendingRecord | None, future: concurrent.futures.Future[int] | None,
                 durable: bool, queued_at: float) -> None:
        self.record = record
        self.future = future
        self.durable = durable
        self.queued_at = queued_at


class AuditLog:
    """Implements `sekisho.services.AuditSink` over the database hash chain."""

    retry_initial = 0.05  # seconds; doubles per failed attempt
    retry_max = 1.0
    transaction_max = 2_000  # events per transaction: short commits keep lock and loss window small
    backlog_seconds = 0.4  # refuse when more wait than the writer commits in this time
    # With `background`: the log lags, and the threads go back to normal priority, once its
    # oldest event has waited this much longer than `flush_interval` (audit.priority).
    lift_margin = 0.1

    def __init__(
        self,
        engine: Engine,
        *,
        now: Callable[[], datetime] = _utcnow,
        flush_interval: float = 0.2,
        batch_max: int = 1000,
        queue_max: int = 100_000,
        max_lag: float = 0.6,
        monotonic: Callable[[], float] = time.monotonic,
        background: bool = False,
    ) -> None:
        """`background`: the writer and checkpoint threads run at idle CPU priority while the
        machine has CPU to spare (`audit.priority`); for a process that serves no requests
        itself (the master), as a thread preempted while holding the GIL stalls the others."""
        self._engine = engine
        self._now = now
        self._flush_interval = flush_interval
        self._batch_max = batch_max
        self._queue_max = queue_max
        # Refuse new events when the oldest uncommitted one is older than this: it bounds how
        # much a hard kill can lose even when the writer falls behind.
        self._max_lag = max_lag
        self._monotonic = monotonic
        self._background = background
        self.priority: BackgroundPriority | None = None  # set by start() with `background`
        self._queue: deque[_Item] = deque()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._healthy = True
        self._closed = False
        self._stopping = False
        self._give_up_at = float("inf")
        self._held: list[_Item] | None = None  # a batch whose commit failed, retried as is
        self._inflight_since: float | None = None
        self._lock_fd: int | None = None
        self.checkpointer: WalCheckpointer | None = None  # SQLite: started by start()
        # Refuse new events while more are waiting than the writer commits in
        # `backlog_seconds` (at its measured rate): `record()` is far cheaper than a commit,
        # so without this a producer could queue more than fits in the loss window.
        self._rate = 20_000.0  # events/s, measured per drained batch (moving average)
        self._backlog_max = max(batch_max, self.transaction_max,
                                int(self._rate * self.backlog_seconds))
        self.committed = 0
        self.failures = 0

    # -- producers -------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False while commits fail, the writer lags too far behind, or after close()."""
        return self._healthy and not self._closed and not self._lagging(self._monotonic())

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._held or ())

    def record(self, event: AuditEvent) -> None:
        """Queue an event for the next group commit; never blocks. Thread-safe.

        Runs on the gateway's event loop for every request, so it is kept small: the body is
        serialised here by a per-class plan (`_fast_body`, the same bytes as
        `canonical_json`), while hashing and the database work stay in the writer thread.
        Serialising in the writer was measured to be worse: its longer hold of the GIL
        stalled the loop (p99 +5 ms at half load, docs/benchmarks.md).
        """
        queued_at = self._admit()
        occurred_at = self._now()
        if occurred_at.tzinfo is UTC:
            body = _fast_body(event, occurred_at)
            record = PendingRecord(event.event_type, occurred_at, event.actor, body,
                                   of_event(event))
        else:
            record = self._pending(event, occurred_at)
        queue = self._queue
        queue.append(_Item(record, None, False, queued_at))
        if len(queue) >= self._batch_max and not self._wake.is_set():
            self._wake.set()

    def record_access(self, fields: AccessFields) -> None:
        """`record(AccessDecision(*fields))`: the sinks' common form of the per-request call."""
        self.record(AccessDecision(*fields))

    async def append(self, event: AuditEvent) -> None:
        """Append durably: returns once the event is committed, raises AuditUnavailable if not."""
        if self._writer is None:
            await asyncio.to_thread(self.append_sync, event)
            return
        await asyncio.wrap_future(self._submit(event))

    def append_sync(self, event: AuditEvent, timeout: float = 30.0) -> int:
        """Append durably from synchronous code (the CLI); return the event's seq."""
        if self._writer is None:
            self._admit()
            try:
                return append_batch(self._engine, [self._pending(event)])
            except Exception as exc:
                raise AuditUnavailable(_UNAVAILABLE) from exc
        future = self._submit(event)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise AuditUnavailable(_UNAVAILABLE) from None

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every event queued before this call is committed."""
        if self._writer is None:
            self._drain()
            return
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._queue.append(_Item(None, future, False, self._monotonic()))
        self._wake.set()
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise AuditUnavailable(_UNAVAILABLE) from None

    def submit(self, records: list[PendingRecord], *,
               durable: bool) -> concurrent.futures.Future[int]:
        """Queue records serialised elsewhere (a worker's `AuditRelay`); the future resolves
        with the seq of the last one once all are committed.

        A relayed batch was already accepted by a worker, so only a closed or failing log or
        a full queue refuses it (raises AuditUnavailable); a lagging writer makes `healthy`
        False, which the relay reports to the workers so they refuse new requests instead.
        A durable record's future fails if its commit fails (as with `append`).
        """
        if self._closed:
            raise AuditUnavailable(_UNAVAILABLE + " (closed)")
        if not self._healthy:
            raise AuditUnavailable(_UNAVAILABLE + " (database failing)")
        if len(self._queue) + len(records) > self._queue_max:
            raise AuditUnavailable(_UNAVAILABLE + " (queue full)")
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        queued_at = self._monotonic()
        queue = self._queue
        if durable:
            for record in records[:-1]:
                queue.append(_Item(record, None, True, queued_at))
            queue.append(_Item(records[-1], future, True, queued_at))
            self._wake.set()
            return future
        queue.extend(_Item(record, None, False, queued_at) for record in records)
        queue.append(_Item(None, future, False, queued_at))  # resolves after the batch commits
        if len(queue) >= self._batch_max and not self._wake.is_set():
            self._wake.set()
        return future

    def _admit(self) -> float:
        if self._closed:
            raise AuditUnavailable(_UNAVAILABLE + " (closed)")
        if not self._healthy:
            raise AuditUnavailable(_UNAVAILABLE + " (database failing)")
        waiting = len(self._queue)
        if waiting >= self._queue_max:
            raise AuditUnavailable(_UNAVAILABLE + " (queue full)")
        if waiting >= self._backlog_max and self._writer is not None:
            raise AuditUnavailable(_UNAVAILABLE + " (writer behind)")
        queued_at = self._monotonic()
        if self._lagging(queued_at):
            raise AuditUnavailable(_UNAVAILABLE + " (writer behind)")
        return queued_at

    def _lagging(self, now: float) -> bool:
        return self._age(now) > self._max_lag

    def _age(self, now: float) -> float:
        """How long the oldest uncommitted event has waited (0 when none waits)."""
        oldest = self._inflight_since
        if oldest is None:
            try:
                oldest = self._queue[0].queued_at
            except IndexError:
                return 0.0
        return now - oldest

    def _behind(self) -> bool:
        return self._stopping or \
            self._age(self._monotonic()) > self._flush_interval + self.lift_margin

    def keep_up(self) -> None:
        """Lift the background threads to normal priority if the log lags: the master's loop
        calls this every status tick, as the writer may be too starved to notice itself."""
        if self.priority is not None and self._behind():
            self.priority.lift()

    def _steer(self, priority: BackgroundPriority) -> None:
        """One step of the threads' priority; a failure there must not stop the writer: the
        threads go back to normal priority for good."""
        try:
            priority.step(self._behind())
        except Exception:
            log.exception("audit: CPU priority control failed; writer stays at normal priority")
            self.priority = None
            set_idle(priority.tids, False)

    @property
    def lift_after(self) -> float:
        """Seconds after which a worker whose batch is not yet acknowledged lifts the
        background threads (the commit after the next flush, and some margin)."""
        return self._flush_interval + 2 * self.lift_margin

    def _pending(self, event: AuditEvent, occurred_at: datetime | None = None) -> PendingRecord:
        if occurred_at is None:
            occurred_at = self._now()
        if occurred_at.tzinfo is None:
            occurred_at = occurred_at.replace(tzinfo=UTC)
        body = canonical_json(event.event_type, occurred_at, _fields_of(event))
        return PendingRecord(event.event_type, occurred_at, event.actor, body, of_event(event))

    def _submit(self, event: AuditEvent) -> concurrent.futures.Future[int]:
        queued_at = self._admit()
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._queue.append(_Item(self._pending(event), future, True, queued_at))
        self._wake.set()
        return future

    # -- the writer ------------------------------------------------------------------------

    def start(self) -> None:
        if self._writer is not None:
            return
        self._open_lock()
        if has_wal(self._engine):
            self.checkpointer = WalCheckpointer(self._engine)
            self.checkpointer.start()
        self._writer = threading.Thread(target=self._run, name="sekisho-audit-writer",
                                        daemon=True)
        self._writer.start()
        if self._background:
            self._lower_priority()

    def _lower_priority(self) -> None:
        if not idle_is_reversible():
            log.info("audit: writer stays at normal CPU priority (idle priority needs leave "
                     "to return: CAP_SYS_NICE or RLIMIT_NICE for nice 0, docs/operations.md)")
            return
        assert self._writer is not None and self._writer.native_id is not None
        tids = [self._writer.native_id]
        if self.checkpointer is not None and self.checkpointer.native_id is not None:
            tids.append(self.checkpointer.native_id)
        self.priority = BackgroundPriority(tuple(tids))

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting events and commit everything queued; raises if some could not be."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._give_up_at = self._monotonic() + timeout
        if self.priority is not None:
            self.priority.lift()  # what is left is committed at normal priority
        if self._writer is not None:
            self._wake.set()
            self._writer.join(timeout)
        if self._writer is None or not self._writer.is_alive():
            # A producer that passed `_admit` just before close may have appended since.
            self._drain()
        if self.checkpointer is not None:
            self.checkpointer.stop()
        if self._lock_fd is not None and (self._writer is None or not self._writer.is_alive()):
            os.close(self._lock_fd)
            self._lock_fd = None
        left = self.pending
        if left:
            log.error("audit: %d events could not be written before shutdown", left)
            raise AuditUnavailable(f"{_UNAVAILABLE} ({left} events not written)")

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            # The writer must never vanish silently: if it dies, every producer is refused.
            self._healthy = False
            log.exception("audit: writer thread failed; refusing new events")
            raise

    def _loop(self) -> None:
        next_flush = self._monotonic() + self._flush_interval
        while True:
            delay = next_flush - self._monotonic()
            if delay > 0:
                self._wake.wait(delay)
            self._wake.clear()
            round_began = self._monotonic()
            self._drain(everything=False)
            # Rounds start `flush_interval` apart, not after one another: a round whose commit
            # took longer is followed at once by one taking all that came meanwhile, so an
            # event waits at most about two commits and an interval (`max_lag`).
            next_flush = round_began + self._flush_interval
            if self._stopping and (not self.pending or self._monotonic() > self._give_up_at):
                return

    def _take(self, limit: int) -> list[_Item]:
        queue = self._queue
        count = min(len(queue), self.transaction_max, limit)
        if count:
            self._inflight_since = queue[0].queued_at
        return [queue.popleft() for _ in range(count)]

    def _drain(self, everything: bool = True) -> None:
        """Commit batches until the queue is empty; on failure keep the batch and retry.

        The writer's rounds (`everything=False`) commit what was waiting when the round
        began; what arrives meanwhile waits for the next one (`flush_interval`, or sooner
        when `batch_max` wait or a durable event comes). Draining until empty turned a writer
        whose commits take a while into a stream of small transactions, each paying a
        commit's fixed cost: at 4,900 req/s, 45 commits a second of ~110 records instead of
        5 of ~1,000 (docs/benchmarks.md)."""
        attempt = 0
        left = len(self._queue)
        while True:
            if self.priority is not None:
                self._steer(self.priority)
            batch = self._held
            if not batch:
                batch = self._take(len(self._queue) if everything or self._stopping else left)
                left -= len(batch)
            if not batch and (self._healthy or self._stopping):
                return
            began = time.perf_counter()
            records = [item.record for item in batch if item.record is not None]
            try:
                if records:
                    with self._local_lock():
                        last_seq = append_batch(self._engine, records,
                                                autocheckpoint=self.checkpointer is None)
                else:
                    last_seq = 0
                    if not self._healthy:
                        check_writable(self._engine)  # nothing held: probe before recovering
            except Exception as exc:
                attempt += 1
                self._fail(batch, exc, attempt)
                if self._stopping and self._monotonic() > self._give_up_at:
                    return
                time.sleep(min(self.retry_max, self.retry_initial * 2 ** (attempt - 1)))
                continue
            attempt = 0
            self._held = None
            self._inflight_since = None
            if not self._healthy:
                log.warning("audit: database writable again; %d held events committed",
                            len(records))
            self._healthy = True
            self.committed += len(records)
            self._measure(len(records), time.perf_counter() - began)
            seq = last_seq - len(records)
            for item in batch:
                if item.record is not None:
                    seq += 1
                if item.future is not None:
                    _settle(item.future, seq)

    @contextlib.contextmanager
    def _local_lock(self) -> Iterator[None]:
        """Queue the writers of this machine's gateway processes in the kernel (SQLite only).

        SQLite makes a writer that finds the database locked poll with sleeps that grow to
        100 ms; several workers committing every ~0.1 s then wait long enough to breach
        `max_lag` (503s). An flock on a file beside the database hands the turn over the
        moment the holder is done. Only an optimisation: BEGIN IMMEDIATE is still the lock
        that keeps the chain linear (the CLI appends without this file lock).
        """
        fd = self._lock_fd
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _open_lock(self) -> None:
        url = self._engine.url
        database = url.database or ""
        if url.get_backend_name() != "sqlite" or database in ("", ":memory:") or \
                database.startswith("file:"):
            return
        try:
            self._lock_fd = os.open(database + "-audit.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("audit: no writer lock file (%s); relying on SQLite locking alone",
                        type(exc).__name__)

    def _measure(self, count: int, seconds: float) -> None:
        if count < 100 or seconds <= 0:
            return  # a small batch is mostly fixed commit cost: no measure of throughput
        self._rate = 0.7 * self._rate + 0.3 * (count / seconds)
        self._backlog_max = max(self._batch_max, self.transaction_max,
                                int(self._rate * self.backlog_seconds))

    def _fail(self, batch: list[_Item], exc: Exception, attempt: int) -> None:
        self.failures += 1
        if self._healthy:
            log.error("audit: commit failed (%s: %s); denying requests until it recovers",
                      type(exc).__name__, str(exc)[:200])
        self._healthy = False
        # Durable callers learn now that their event is not written and deny their action;
        # so that the log never records an action that was refused, their events leave the
        # batch. Access decisions already happened: those are kept and retried.
        kept: list[_Item] = []
        for item in batch:
            if item.durable and item.future is not None:
                _settle(item.future, AuditUnavailable(_UNAVAILABLE))
            else:
                kept.append(item)
        self._held = kept
        if not kept:
            self._inflight_since = None
        elif attempt == 1:
            log.warning("audit: holding %d events for retry", len(kept))
