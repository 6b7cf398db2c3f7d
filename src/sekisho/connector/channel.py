"""The thin asyncio shell around `protocol.Connection`: one tunnel over any asyncio stream.

It does I/O and waiting only; every protocol rule stays in the sans-IO `Connection`. Its own
job is backpressure and liveness:

- A `TunnelStream.write` hands the protocol no more than the peer's window and then waits
  for the transport to drain, so the sender holds at most one window per stream.
- A `TunnelStream.read` gives window back only as the application consumes, so what the
  receiver buffers for a stream never exceeds the window it announced: a slow reader at one
  end slows the writer at the other instead of growing memory (the slow-client attack on a
  relay). Only a stream whose reader keeps up (nothing left buffered when it gives window
  back) has its window grown (`Connection.acknowledge(grow=True)`): a bulk transfer is not
  held to one small window per round trip, and a slow reader never earns a larger one.
- The reading task never waits for the transport to drain (two ends both blocked writing
  would deadlock); the control frames it answers with are bounded by `write_buffer_cap`,
  beyond which a peer that floods pings without reading is cut off.
- Pings on a timer; a peer silent for `dead_after` seconds is dropped (a half-open TCP
  connection would otherwise hold its streams forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque

from sekisho.connector import events as ev
from sekisho.connector.frames import ErrorCode, StreamKind
from sekisho.connector.protocol import Connection, ConnectionState
from sekisho.errors import SekishoError


class ChannelClosed(SekishoError):
    """The tunnel is gone (closed, timed out, broken by the peer); `reason` says why."""

    code = "connector-channel-closed"
    status = 502

    def __init__(self, description: str, reason: ErrorCode | int = ErrorCode.NO_ERROR) -> None:
        super().__init__(description)
        self.reason = reason


class StreamResetError(SekishoError):
    """The stream was aborted (by the peer or by us) with `reason`."""

    code = "connector-stream-reset"
    status = 502

    def __init__(self, description: str, reason: ErrorCode | int) -> None:
        super().__init__(description)
        self.reason = reason


class TunnelStream:
    """One multiplexed stream, read and written like a socket."""

    def __init__(self, channel: Channel, stream_id: int, kind: StreamKind,
                 destination: str) -> None:
        self.channel = channel
        self.stream_id = stream_id
        self.kind = kind
        self.destination = destination
        self.buffered = 0  # received, not yet read by the application
        self._chunks: deque[bytes] = deque()
        self._consumed = 0  # read by the application, not yet given back as window
        self._ack_at = channel.connection.INITIAL_WINDOW // 2
        self._eof = False
        self._write_closed = False
        self._error: SekishoError | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()

    async def read(self, limit: int = -1) -> bytes:
        """Up to `limit` bytes (one received chunk when -1); b"" once the peer has closed."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        if self._error is not None:
            raise self._error
        chunk = self._chunks.popleft()
        if 0 <= limit < len(chunk):
            self._chunks.appendleft(chunk[limit:])
            chunk = chunk[:limit]
        size = len(chunk)
        self.buffered -= size
        self._consumed += size
        # Give the window back in steps of half a window: few WINDOW frames, none at all on
        # an interactive stream. A sender stalled on an empty window is never stranded: it
        # stalls only once a whole window is buffered or consumed here, so reading what is
        # buffered always reaches the step.
        if self._consumed >= self._ack_at:
            # Nothing left buffered: the reader waits for the network, so the window (not
            # the reader) sets the pace and may grow. More than half the window left unread:
            # the reader fell behind, and a grown window goes back towards the initial one.
            window = self.channel._acknowledge(
                self.stream_id, self._consumed, grow=not self._chunks,
                shrink=self.buffered > self._ack_at)
            self._consumed = 0
            if window:
                self._ack_at = window // 2
        return chunk

    async def readexactly(self, size: int) -> bytes:
        parts: list[bytes] = []
        missing = size
        while missing:
            chunk = await self.read(missing)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), size)
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of `data`, waiting whenever the peer's window is exhausted."""
        view = memoryview(data).cast("B")
        connection = self.channel.connection
        while view:
            self._check_writable()
            window = connection.send_window(self.stream_id)
            if window == 0:
                self._writable.clear()
                await self._writable.wait()
                continue
            # At most the peer's initial window between two drains, however far the window
            # has grown: what the transport holds stays within `Channel.write_buffer_cap`.
            step = view[:min(window, connection.peer_initial_window)]
            connection.send_data(self.stream_id, step)
            view = view[len(step):]
            await self.channel._flush()

    def send_now(self, data: memoryview) -> int:
        """Queue what the window allows without waiting (0 while the transport is backed up
        by more than the peer's initial window: then `write` waits for it to drain); returns
        the bytes taken. For a caller that cannot await (`relay.StreamTransport`)."""
        self._check_writable()
        connection = self.channel.connection
        transport = self.channel._writer.transport
        if transport.get_write_buffer_size() >= connection.peer_initial_window:
            return 0
        step = data[:min(connection.send_window(self.stream_id),
                         connection.peer_initial_window)]
        if step:
            connection.send_data(self.stream_id, step)
            self.channel._write_pending()
        return len(step)

    async def close_write(self) -> None:
        """Half-close: the peer reads EOF after everything written so far."""
        self._check_writable()
        self._write_closed = True
        self.channel.connection.close_stream(self.stream_id)
        await self.channel._flush()
        self.channel._forget_if_done(self.stream_id)

    def reset(self, reason: ErrorCode = ErrorCode.CANCEL) -> None:
        """Abort both directions now; buffered data is dropped."""
        if self._error is None and self.channel.connection.state is ConnectionState.OPEN:
            self.channel.connection.reset_stream(self.stream_id, reason)
            self.channel._write_pending()
        self._abort(StreamResetError(f"stream {self.stream_id} reset locally", reason))
        self.channel._forget_if_done(self.stream_id)

    def _check_writable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._write_closed:
            raise StreamResetError(f"stream {self.stream_id} is closed for writing",
                                   ErrorCode.PROTOCOL_ERROR)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        self._readable.set()

    def _feed_eof(self) -> None:
        self._eof = True
        self._readable.set()

    def _abort(self, error: SekishoError) -> None:
        if self._error is None:
            self._error = error
            self._chunks.clear()
            self.buffered = 0
        self._readable.set()
        self._writable.set()


class Channel:
    """A running tunnel: `start()`, then `open_stream` (gateway) or `accept` (agent)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 connection: Connection, *, ping_interval: float = 15.0,
                 dead_after: float = 45.0, handshake_timeout: float = 10.0,
                 read_size: int = 256 * 1024) -> None:
        if not 0 < ping_interval < dead_after:
            raise ValueError("ping_interval must be positive and below dead_after")
        self.connection = connection
        self.ping_interval = ping_interval
        self.dead_after = dead_after
        self.handshake_timeout = handshake_timeout
        self.read_size = read_size
        self.rtt: float | None = None  # seconds, from the latest pong
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._streams: dict[int, TunnelStream] = {}
        self._incoming: asyncio.Queue[TunnelStream | None] = asyncio.Queue()
        self._agreed: asyncio.Future[ev.VersionAgreed] = self._loop.create_future()
        self._pings: dict[bytes, float] = {}
        self._last_received = self._loop.time()
        self._closed: ChannelClosed | None = None
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def write_buffer_cap(self) -> int:
        """Most bytes the transport may hold: every stream's window plus control slack."""
        connection = self.connection
        return (connection.peer_max_streams * connection.peer_initial_window
                + connection.MAX_FRAME_PAYLOAD + (1 << 20))

    @property
    def buffered_bytes(self) -> int:
        """Bytes this shell holds: unread stream data and the transport's write buffer."""
        return (sum(stream.buffered for stream in self._streams.values())
                + self._writer.transport.get_write_buffer_size())

    @property
    def closed(self) -> ChannelClosed | None:
        return self._closed

    @property
    def silent_for(self) -> float:
        """Seconds since the peer last sent anything (a broker skips a tunnel whose pings go
        unanswered before `dead_after` drops it)."""
        return self._loop.time() - self._last_received

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def start(self) -> ev.VersionAgreed:
        """Exchange hellos; raises ChannelClosed on a version mismatch, a bad peer or timeout."""
        self._write_pending()
        self._tasks.append(asyncio.create_task(self._read_loop()))
        try:
            agreed = await asyncio.wait_for(asyncio.shield(self._agreed),
                                            self.handshake_timeout)
        except TimeoutError:
            await self.close(ErrorCode.TIMEOUT, "no hello")
            raise ChannelClosed("the peer sent no hello in time", ErrorCode.TIMEOUT) from None
        self._tasks.append(asyncio.create_task(self._keepalive()))
        return agreed

    async def open_stream(self, kind: StreamKind, destination: str) -> TunnelStream:
        self._check_open()
        stream_id = self.connection.open_stream(kind, destination)
        stream = TunnelStream(self, stream_id, kind, destination)
        self._streams[stream_id] = stream
        await self._flush()
        return stream

    async def accept(self) -> TunnelStream:
        """The next stream the gateway opened; raises ChannelClosed once the tunnel is gone."""
        stream = await self._incoming.get()
        if stream is None:
            self._incoming.put_nowait(None)  # wake the next waiter too
            assert self._closed is not None
            raise self._closed
        return stream

    async def close(self, reason: ErrorCode = ErrorCode.NO_ERROR, message: str = "") -> None:
        self.connection.close(reason, message)
        self._terminate(ChannelClosed(f"closed locally: {message or reason.name}", reason))
        await self.wait_closed()

    async def wait_closed(self) -> None:
        await self._done.wait()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    # -- internals used by TunnelStream ---------------------------------------------------

    def _write_pending(self) -> None:
        data = self.connection.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _flush(self) -> None:
        self._write_pending()
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            self._terminate(ChannelClosed(f"connection lost: {exc}", ErrorCode.INTERNAL))
        self._check_open()

    def _acknowledge(self, stream_id: int, size: int, *, grow: bool = False,
                     shrink: bool = False) -> int:
        """Give window back; returns the stream's new window when it changed, else 0."""
        if self.connection.state is not ConnectionState.OPEN or not size:
            return 0
        changed = self.connection.acknowledge(stream_id, size, grow=grow, shrink=shrink)
        self._write_pending()
        return self.connection.stream_window(stream_id) if changed else 0

    def _forget_if_done(self, stream_id: int) -> None:
        if stream_id not in self.connection.streams:
            self._streams.pop(stream_id, None)

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed

    # -- the reading task -----------------------------------------------------------------

    async def _read_loop(self) -> None:
        error = ChannelClosed("the peer closed the connection", ErrorCode.INTERNAL)
        try:
            while self._closed is None:
                data = await self._reader.read(self.read_size)
                if not data:
                    break
                self._last_received = self._loop.time()
                for event in self.connection.receive_data(data):
                    self._handle(event)
                self._write_pending()
                if self.connection.closed:
                    return
                if self._writer.transport.get_write_buffer_size() > self.write_buffer_cap:
                    self.connection.close(ErrorCode.FLOOD, "write buffer over its cap")
                    error = ChannelClosed("the peer does not read what it asks for",
                                          ErrorCode.FLOOD)
                    self._terminate(error, abort=True)
                    return
        except (OSError, asyncio.IncompleteReadError) as exc:
            error = ChannelClosed(f"connection lost: {exc}", ErrorCode.INTERNAL)
        finally:
            self._terminate(error)

    def _handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.DataReceived):
            self._streams[event.stream_id]._feed(event.data)
        elif isinstance(event, ev.WindowUpdated):
            self._streams[event.stream_id]._writable.set()
        elif isinstance(event, ev.StreamOpened):
            stream = TunnelStream(self, event.stream_id, event.kind, event.destination)
            self._streams[event.stream_id] = stream
            self._incoming.put_nowait(stream)
        elif isinstance(event, ev.StreamClosed):
            self._streams[event.stream_id]._feed_eof()
            self._forget_if_done(event.stream_id)
        elif isinstance(event, ev.StreamReset):
            stream = self._streams.pop(event.stream_id)
            stream._abort(StreamResetError(f"stream {event.stream_id} reset by the peer",
                                           event.code))
        elif isinstance(event, ev.PongReceived):
            sent = self._pings.pop(event.payload, None)
            if sent is not None:
                self.rtt = self._loop.time() - sent
        elif isinstance(event, ev.VersionAgreed):
            if not self._agreed.done():
                self._agreed.set_result(event)
        elif isinstance(event, ev.GoAway):
            self._terminate(ChannelClosed(f"the peer went away: {event.message}", event.code))
        elif isinstance(event, ev.ProtocolError):
            self._terminate(ChannelClosed(f"the peer broke the protocol: {event.message}",
                                          event.code))

    async def _keepalive(self) -> None:
        tick = min(self.ping_interval, self.dead_after / 4)
        last_ping = self._loop.time()
        while self._closed is None:
            await asyncio.sleep(tick)
            now = self._loop.time()
            if now - self._last_received >= self.dead_after:
                self.connection.close(ErrorCode.TIMEOUT, "no sign of life")
                self._terminate(ChannelClosed("the peer stopped answering", ErrorCode.TIMEOUT),
                                abort=True)
                return
            if now - last_ping >= self.ping_interval and self.connection.state is \
                    ConnectionState.OPEN:
                payload = os.urandom(8)
                self._pings = {payload: now}  # only the latest ping counts for the RTT
                self.connection.ping(payload)
                self._write_pending()
                last_ping = now

    def _terminate(self, error: ChannelClosed, *, abort: bool = False) -> None:
        if self._closed is not None:
            return
        self._closed = error
        self._write_pending()  # a queued GOAWAY tells the peer why
        for stream in self._streams.values():
            stream._abort(error)
        self._streams.clear()
        self._incoming.put_nowait(None)
        if not self._agreed.done():
            self._agreed.set_exception(error)
            self._agreed.exception()  # retrieved here so an unawaited start() stays quiet
        if abort:
            self._writer.transport.abort()
        else:
            self._writer.close()
        self._done.set()
