"""One audit writer per installation: workers relay events to the master over a Unix socket.

With `server.workers: N > 1` each worker used to run its own `AuditLog` writer thread, whose
hashing and database work took the worker's GIL from its event loop (tail latency). Instead a
worker's `AuditRelay` serialises each event on the loop (the same `_fast_body` as
`AuditLog.record`), gathers the events of `send_delay` (5 ms) and sends them in one frame; the
master's `AuditRelayServer` hands them to the installation's single `AuditLog` (group commit,
chain) and acknowledges each frame once it is committed. Gathering across loop iterations,
not per iteration, matters on a busy machine: every frame wakes the master and is answered by
an acknowledgement that wakes the worker; a frame per 5 ms instead of per iteration cut the
master's CPU per event by about 45 % (docs/benchmarks.md).

Fail closed: a worker's relay is `healthy` only while it is connected, the master reports its
log healthy (a status frame every `status_interval`) and no frame has waited longer than
`ack_timeout` for its acknowledgement; otherwise `record`/`append` raise `AuditUnavailable`
and the gateway answers 503. A lost connection is re-dialled; events not yet sent are kept
for the new connection. Loss on `kill -9`: a worker loses the events of its last `send_delay`
(not yet sent); the master loses what its `AuditLog` had not committed (≤ 1 s).

Frames both ways: a 13-byte header (payload length u32, kind u8, frame id u64) and a payload.
Worker → master: `B` a batch of access decisions, `D` one durable event; each record is one
line `event_type TAB occurred_at TAB json(actor) TAB body` (canonical JSON escapes every
control character, so neither TAB-splitting the head nor NL-splitting records can be fooled
by event content). Master → worker: `A` committed, `N` refused (payload: the reason), `H`
status (payload `1` healthy / `0` not), `P` once after connecting when the master's audit
threads run at idle priority (payload: milliseconds after which an unacknowledged frame means
the log lags, then their thread ids; the worker then lifts them, `audit.priority`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime
from json.encoder import encode_basestring as _quote
from typing import cast

from sekisho.audit import priority
from sekisho.audit.chain import canonical_json
from sekisho.audit.events import AccessDecision, AccessFields, AuditEvent
from sekisho.audit.log import (
    AuditLog,
    AuditUnavailable,
    UtcClockText,
    _access_body,
    _fast_body,
    _fields_of,
    access_body,
    utc_text,
)
from sekisho.audit.rows import PendingRecord

log = logging.getLogger("sekisho.audit.relay")

RELAY_ENV = "SEKISHO_AUDIT_RELAY"  # set by the master for its worker processes
_HEADER = struct.Struct("!IBQ")
_BATCH, _DURABLE, _ACK, _NACK, _STATUS = b"B"[0], b"D"[0], b"A"[0], b"N"[0], b"H"[0]
_PRIORITY = b"P"[0]
_FRAME_MAX = 64 << 20  # a peer announcing more is broken: drop the connection
_UNAVAILABLE = "監査ログに記録できません / the audit log cannot record events"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _frame(kind: int, frame_id: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), kind, frame_id) + payload


def _frames(buffer: bytearray) -> list[tuple[int, int, bytes]]:
    """Cut the complete frames off the front of `buffer`."""
    out = []
    size = _HEADER.size
    while len(buffer) >= size:
        length, kind, frame_id = _HEADER.unpack_from(buffer)
        if length > _FRAME_MAX:
            raise ValueError("audit relay frame too large")
        if len(buffer) < size + length:
            break
        out.append((kind, frame_id, bytes(buffer[size:size + length])))
        del buffer[:size + length]
    return out


def line_of(event: AuditEvent, occurred_at: datetime) -> str:
    """The wire form of one event: its canonical body, final, plus its search columns."""
    if occurred_at.tzinfo is UTC:
        when = utc_text(occurred_at)
        body = _fast_body(event, occurred_at, when)
    else:
        occurred_at = (occurred_at.replace(tzinfo=UTC) if occurred_at.tzinfo is None
                       else occurred_at.astimezone(UTC))
        when = utc_text(occurred_at)
        body = canonical_json(event.event_type, occurred_at, _fields_of(event))
    return event.event_type + "\t" + when + "\t" + _quote(event.actor) + "\t" + body


def line_at(event: AuditEvent, when: str) -> str:
    """`line_of` for a time given as its `utc_text` (`UtcClockText`): an access decision, the
    event of every request, straight from its written-out body; any other event, or a value
    that body refuses, through `line_of` (the same line)."""
    if type(event) is AccessDecision:
        body = _access_body(event, when)
        if body is not None:
            return _access_line(when, event.user, body)
    return line_of(event, datetime.fromisoformat(when))


def _access_line(when: str, user: str, body: str) -> str:
    """The line of an access decision whose `access_body` is `body`: that checked `user` is
    text, so the event's actor is `user` itself."""
    return "access.decision\t" + when + "\t" + _quote(user) + "\t" + body


def record_of(line: str) -> PendingRecord:
    event_type, moment, actor, body = line.split("\t", 3)
    if not (body.startswith("{") and body.endswith("}")):
        raise ValueError("audit relay record without a JSON body")
    return PendingRecord(event_type, datetime.fromisoformat(moment), _actor(actor), body,
                         None, moment)


def _actor(text: str) -> str:
    """The JSON string `text` decoded. Without a backslash, an inner quote or a control
    character (the usual name) it is the text between its quotes; anything else goes to the
    parser, which also refuses what is not JSON (half the master's cost of a line)."""
    inner = text[1:-1]
    if (len(text) >= 2 and text[0] == '"' and text[-1] == '"' and "\\" not in inner
            and '"' not in inner and inner.isprintable()):
        return inner
    return str(json.loads(text))


class AuditRelay(asyncio.Protocol):
    """A worker's `sekisho.services.AuditSink`: events go to the master's single writer."""

    ack_timeout = 1.0  # seconds a frame may wait for its acknowledgement before we refuse
    send_delay = 0.005  # seconds events gather before they are sent in one frame
    send_max = 512  # events that are sent at once, without waiting for the delay
    durable_timeout = 30.0  # as `AuditLog.append_sync`
    reconnect_delay = 0.2
    unsent_max = 100_000  # events kept while disconnected; beyond, the relay refuses

    def __init__(self, path: str, *, now: Callable[[], datetime] = _utcnow,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._now = now
        # The request path's clock as text; an injected `now` (tests) is used as it is.
        self._stamp = UtcClockText() if now is _utcnow else None
        self._monotonic = monotonic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._next_id = 1
        # frame id → (sent at, the durable caller's future or None), in send order
        self._outstanding: dict[int, tuple[float, asyncio.Future[None] | None]] = {}
        self._master_ok = False
        self._status_at = 0.0
        self._ok = False
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._dialling: asyncio.Task[None] | None = None
        self.batches = 0
        # The master's audit threads at idle priority, and when to lift them (a `P` frame).
        self._lift_tids: tuple[int, ...] = ()
        self._lift_after = 0.0
        self._lifted_at = 0.0
        self.lifts = 0

    # -- the AuditSink ------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._ok

    def record(self, event: AuditEvent) -> None:
        """Serialise the event and send it with the others of `send_delay`; never blocks."""
        if not self._ok:
            raise AuditUnavailable(_UNAVAILABLE + " (relay)")
        stamp = self._stamp
        self._queue(line_at(event, stamp()) if stamp is not None else line_of(event, self._now()))

    def record_access(self, fields: AccessFields) -> None:
        """`record(AccessDecision(*fields))`, the same line, from the fields: the
        gateway calls this for every request, and building the frozen event was a third of
        the relay's cost per request (docs/benchmarks.md)."""
        stamp = self._stamp
        if self._ok and stamp is not None:
            when = stamp()
            body = access_body(when, fields)
            if body is not None:
                self._queue(_access_line(when, fields[1], body))
                return
        self.record(AccessDecision(*fields))

    def _queue(self, line: str) -> None:
        """Send `line` with the others of `send_delay` (at once past `send_max`)."""
        lines = self._lines
        lines.append(line)
        if len(lines) >= self.send_max:
            self._flush()
        elif self._flush_timer is None:
            assert self._loop is not None
            self._flush_timer = self._loop.call_later(self.send_delay, self._flush)

    async def append(self, event: AuditEvent) -> None:
        """Returns once the master has committed the event; raises AuditUnavailable if not."""
        if not self._ok or self._transport is None or self._loop is None:
            raise AuditUnavailable(_UNAVAILABLE + " (relay)")
        self._flush()  # keep the order: earlier decisions first
        future: asyncio.Future[None] = self._loop.create_future()
        frame_id = self._send(_DURABLE, line_of(event, self._now()).encode(), future)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.durable_timeout)
        except TimeoutError:
            raise AuditUnavailable(_UNAVAILABLE + " (no acknowledgement)") from None
        finally:
            self._outstanding.pop(frame_id, None)

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self, timeout: float = 10.0,
                    give_up: Callable[[], bool] = lambda: False) -> None:
        """Connect (retrying until `timeout`, or until `give_up()` says the master is gone);
        keeps re-dialling in the background after."""
        self._loop = asyncio.get_running_loop()
        deadline = self._monotonic() + timeout
        while (not await self._dial() and self._monotonic() < deadline
               and not give_up()):
            await asyncio.sleep(self.reconnect_delay)
        self._tick()
        if self._transport is None:
            log.error("audit relay: master not reachable at %s; refusing requests", self._path)
            self._redial()

    async def close(self, timeout: float = 30.0) -> None:
        """Send what is queued and wait for its acknowledgement; raises if some is missing."""
        self._flush()
        deadline = self._monotonic() + timeout
        while (self._outstanding or self._lines) and self._monotonic() < deadline:
            if self._transport is None and self._dialling is None:
                break
            await asyncio.sleep(0.01)
        self._closed = True
        self._ok = False
        if self._timer is not None:
            self._timer.cancel()
        if self._dialling is not None:
            self._dialling.cancel()
        left = len(self._lines) + len(self._outstanding)
        if self._transport is not None:
            self._transport.close()
        if left:
            log.error("audit relay: %d batches/events not acknowledged at shutdown", left)
            raise AuditUnavailable(f"{_UNAVAILABLE} ({left} not acknowledged)")

    async def _dial(self) -> bool:
        assert self._loop is not None
        try:
            await self._loop.create_unix_connection(lambda: self, self._path)
        except OSError:
            return False
        return True

    def _redial(self) -> None:
        if self._closed or self._dialling is not None:
            return

        async def again() -> None:
            try:
                while not self._closed and not await self._dial():
                    await asyncio.sleep(self.reconnect_delay)
            finally:
                self._dialling = None

        assert self._loop is not None
        self._dialling = self._loop.create_task(again())

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._buffer.clear()
        self._status_at = self._monotonic()  # until the first status frame arrives
        log.info("audit relay: connected to %s", self._path)
        if self._lines:
            self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._ok = False
        self._master_ok = False
        self._lift_tids = ()  # a new master sends its own
        # What was sent and not acknowledged may or may not be committed: durable callers
        # are refused (their action fails), decisions are not resent (no duplicates).
        self._fail_outstanding("connection lost")
        if not self._closed:
            log.error("audit relay: connection to the master lost; refusing requests")
            self._redial()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            frames = _frames(self._buffer)
        except ValueError:
            assert self._transport is not None
            self._transport.close()
            return
        for kind, frame_id, payload in frames:
            if kind == _STATUS:
                self._master_ok = payload == b"1"
                self._status_at = self._monotonic()
                self._update()
                continue
            if kind == _PRIORITY:
                self._take_lift(payload)
                continue
            entry = self._outstanding.pop(frame_id, None)
            if entry is None or entry[1] is None or entry[1].done():
                continue
            if kind == _ACK:
                entry[1].set_result(None)
            else:
                entry[1].set_exception(AuditUnavailable(payload.decode(errors="replace")))

    # -- internals ----------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._lines or self._transport is None:
            return
        lines, self._lines = self._lines, []
        self._send(_BATCH, "\n".join(lines).encode(), None)
        self.batches += 1

    def _send(self, kind: int, payload: bytes, future: asyncio.Future[None] | None) -> int:
        frame_id = self._next_id
        self._next_id += 1
        self._outstanding[frame_id] = (self._monotonic(), future)
        assert self._transport is not None
        self._transport.write(_frame(kind, frame_id, payload))
        return frame_id

    def _fail_outstanding(self, why: str) -> None:
        for _, future in self._outstanding.values():
            if future is not None and not future.done():
                future.set_exception(AuditUnavailable(f"{_UNAVAILABLE} ({why})"))
        self._outstanding.clear()

    def _tick(self) -> None:
        self._update()
        if not self._closed:
            assert self._loop is not None
            self._timer = self._loop.call_later(0.05, self._tick)

    def _take_lift(self, payload: bytes) -> None:
        try:
            after, *tids = (int(word) for word in payload.split())
        except ValueError:
            log.warning("audit relay: ignoring a malformed priority frame from the master")
            return
        self._lift_after, self._lift_tids = after / 1000, tuple(tids)

    def _lift(self, waited: float, now: float) -> None:
        """The oldest frame has `waited` for its acknowledgement: past `_lift_after`, lift the
        master's idle audit threads (at most once per `_lift_after`)."""
        if (self._lift_tids and waited > self._lift_after
                and now - self._lifted_at > self._lift_after):
            self._lifted_at = now
            self.lifts += 1
            if not priority.set_idle(self._lift_tids, False):
                log.warning("audit relay: could not lift the master's audit threads")

    def _update(self) -> None:
        now = self._monotonic()
        stale = False
        for sent_at, future in self._outstanding.values():
            # A durable append waits up to `durable_timeout`; a decision batch's ack is the
            # liveness signal: a master that stopped committing makes the relay refuse.
            stale = future is None and now - sent_at > self.ack_timeout
            self._lift(now - sent_at, now)
            break
        why = ("not connected" if self._transport is None else
               "master's audit log unhealthy" if not self._master_ok else
               "no acknowledgement in time" if stale else
               "no status from the master" if now - self._status_at > self.ack_timeout else
               "too many unsent events" if len(self._lines) >= self.unsent_max else "")
        if why and self._ok:
            log.warning("audit relay: refusing requests (%s)", why)
        elif not why and not self._ok and self._transport is not None:
            log.info("audit relay: accepting requests again")
        self._ok = not why


class _MasterSide(asyncio.Protocol):
    """One worker's connection at the master."""

    def __init__(self, server: AuditRelayServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        # Defence in depth beside the 0600 socket file: only processes of our own user may
        # feed the audit chain (a local user forging or flooding audit records).
        uid = -1
        if sock is not None:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            uid = struct.unpack("3i", creds)[1]
        if uid != os.getuid():
            log.error("audit relay: refused a connection from uid %d", uid)
            transport.close()
            return
        self.transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        self.send_status(self._server.audit.healthy)
        audit = self._server.audit
        if audit.priority is not None:
            words = [str(round(audit.lift_after * 1000)), *map(str, audit.priority.tids)]
            self.transport.write(_frame(_PRIORITY, 0, " ".join(words).encode()))

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self.transport = None

    def send_status(self, ok: bool) -> None:
        if self.transport is not None:
            self.transport.write(_frame(_STATUS, 0, b"1" if ok else b"0"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            for kind, frame_id, payload in _frames(self._buffer):
                if kind not in (_BATCH, _DURABLE):
                    raise ValueError(f"unknown audit relay frame {kind}")
                records = [record_of(line) for line in payload.decode().split("\n")]
                self._server.submit(self, frame_id, records, durable=kind == _DURABLE)
        except (ValueError, UnicodeDecodeError) as exc:
            log.error("audit relay: broken frame from a worker (%s); dropping the connection",
                      exc)
            if self.transport is not None:
                self.transport.close()

    def answer(self, frame_id: int, outcome: concurrent.futures.Future[int]) -> None:
        if self.transport is None:
            return
        error = outcome.exception()
        if error is None:
            self.transport.write(_frame(_ACK, frame_id, b""))
        else:
            self.transport.write(_frame(_NACK, frame_id, str(error).encode()))


class AuditRelayServer:
    """The master's end: feeds every worker's events into the one `AuditLog`."""

    status_interval = 0.1

    def __init__(self, audit: AuditLog, path: str) -> None:
        self.audit = audit
        self.path = path
        self.connections: set[_MasterSide] = set()
        self._server: asyncio.AbstractServer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)  # left by a master that was killed
        self._server = await self._loop.create_unix_server(lambda: _MasterSide(self), self.path)
        os.chmod(self.path, 0o600)
        self._status()

    def submit(self, side: _MasterSide, frame_id: int, records: list[PendingRecord], *,
               durable: bool) -> None:
        loop = self._loop
        assert loop is not None
        try:
            future = self.audit.submit(records, durable=durable)
        except AuditUnavailable as exc:
            refused: concurrent.futures.Future[int] = concurrent.futures.Future()
            refused.set_exception(exc)
            side.answer(frame_id, refused)
            return
        future.add_done_callback(
            lambda done: loop.call_soon_threadsafe(side.answer, frame_id, done))

    def _status(self) -> None:
        self.audit.keep_up()
        ok = self.audit.healthy
        for side in list(self.connections):
            side.send_status(ok)
        assert self._loop is not None
        self._timer = self._loop.call_later(self.status_interval, self._status)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.close()
            for side in list(self.connections):
                if side.transport is not None:
                    side.transport.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
