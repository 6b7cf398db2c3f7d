"""The connector tunnel's state machine, sans-IO: bytes in, events out; calls in, bytes out.

One `Connection` per side of a tunnel (the gateway's and the agent's). It never touches a
socket or a clock: the shell feeds it what it read (`receive_data`) and writes what it asks
for (`data_to_send`). Everything that changes the tunnel's state lives here, so that the
rules below are tested without a network:

- Each side sends a HELLO first. The version is the highest both ranges share; none shared
  → GOAWAY(VERSION_MISMATCH). Both roles must differ (a gateway never talks to a gateway).
- Only the gateway opens streams, with strictly increasing ids (a reused id is refused): an
  agent inside a closed network must never be able to reach into the gateway's side.
- Per-stream flow control: a side may send on a stream only as many bytes as the receiver
  granted (HELLO's initial window, then WINDOW frames as the receiving application
  consumes). A peer that sends beyond its window is cut off with FLOW_CONTROL, so what a
  receiver ever buffers for one stream is bounded by the window it chose.
- Window growth (auto-tuning): a receiver whose application keeps up may grant a busy stream
  more than the initial window, up to `MAX_STREAM_WINDOW`, out of one `WINDOW_BUDGET` per
  connection (given back when the stream ends). A WINDOW frame is an increment either way,
  so the wire format is unchanged; what one tunnel can make a receiver buffer stays bounded
  by `MAX_STREAMS * INITIAL_WINDOW + WINDOW_BUDGET`.
- Errors are split as in h11: misuse by our own caller raises `LocalProtocolError`; anything
  the peer does wrong becomes a `ProtocolError` event, a queued GOAWAY and a closed
  connection. `receive_data` never raises on peer input.

The wire format is described in `frames.py` and docs/connector.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sekisho.connector import events as ev
from sekisho.connector.frames import (
    ALLOWED_FLAGS,
    CONNECTION_FRAMES,
    FLAG_ACK,
    FLAG_FIN,
    HEADER,
    HEADER_SIZE,
    HELLO,
    MAX_GOAWAY_MESSAGE,
    MAX_U32,
    MAX_WINDOW,
    PING_SIZE,
    U32,
    ErrorCode,
    FrameType,
    Hello,
    Role,
    StreamKind,
    error_code,
    frame,
    valid_destination,
)
from sekisho.errors import SekishoError


class LocalProtocolError(SekishoError):
    """Our own caller broke the protocol (sent beyond the window, on a closed stream, …)."""

    code = "connector-local-protocol-error"


class ConnectionState(enum.Enum):
    AWAITING_HELLO = "awaiting-hello"
    OPEN = "open"
    CLOSED = "closed"


class StreamState(enum.Enum):
    OPEN = "open"
    LOCAL_CLOSED = "local-closed"  # we sent FIN; the peer may still send
    REMOTE_CLOSED = "remote-closed"  # the peer sent FIN; we may still send
    CLOSED = "closed"


class _Move(enum.Enum):
    SEND_FIN = "send-fin"
    RECEIVE_FIN = "receive-fin"


# The half-close transitions as data; a pair missing here is a protocol violation. A reset
# takes any state to gone and needs no row.
TRANSITIONS: dict[tuple[StreamState, _Move], StreamState] = {
    (StreamState.OPEN, _Move.SEND_FIN): StreamState.LOCAL_CLOSED,
    (StreamState.OPEN, _Move.RECEIVE_FIN): StreamState.REMOTE_CLOSED,
    (StreamState.LOCAL_CLOSED, _Move.RECEIVE_FIN): StreamState.CLOSED,
    (StreamState.REMOTE_CLOSED, _Move.SEND_FIN): StreamState.CLOSED,
}
CAN_SEND = frozenset({StreamState.OPEN, StreamState.REMOTE_CLOSED})
CAN_RECEIVE = frozenset({StreamState.OPEN, StreamState.LOCAL_CLOSED})
_FIXED_SIZE = {FrameType.WINDOW: 4, FrameType.RESET: 4, FrameType.PING: PING_SIZE}
_KINDS = frozenset(StreamKind)


@dataclass(slots=True)
class StreamInfo:
    """Per-stream accounting: `send_window` is what we may still send, `recv_window` what the
    peer may still send, `unacknowledged` what we received but have not yet given back, and
    `window` the receive window granted in all (initial plus growth): always
    `recv_window + unacknowledged == window`."""

    state: StreamState
    send_window: int
    recv_window: int
    window: int
    unacknowledged: int = 0


class Connection:
    """One side of a tunnel. Limits are class attributes so a deployment can subclass them."""

    MIN_VERSION = 1
    MAX_VERSION = 1
    MAX_FRAME_PAYLOAD = 256 * 1024  # what we accept; we send frames up to the peer's figure
    INITIAL_WINDOW = 256 * 1024  # per stream: what every stream may buffer from the start
    # A busy stream's window may grow to this (what OpenSSH grants a channel), drawn from a
    # budget shared by the connection's streams: a tunnel cannot make us buffer more than
    # MAX_STREAMS * INITIAL_WINDOW + WINDOW_BUDGET however its streams are read.
    MAX_STREAM_WINDOW = 2 * 1024 * 1024
    WINDOW_BUDGET = 16 * 1024 * 1024
    MAX_STREAMS = 256  # concurrent streams we accept
    MAX_DESTINATION = 255
    # Announced limits below these are refused: tiny frames or windows would let a peer make
    # us spend a frame header (and a Python loop turn) per byte.
    MIN_PEER_FRAME_PAYLOAD = 1024
    MIN_PEER_WINDOW = 1024

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = ConnectionState.AWAITING_HELLO
        self.version: int | None = None
        self.streams: dict[int, StreamInfo] = {}
        self.highest_stream_id = 0
        self.peer_initial_window = 0
        self.peer_max_frame_payload = 0
        self.peer_max_streams = 0
        self.window_granted = 0  # growth beyond the initial window, over the live streams
        self._inbound = bytearray()
        self._outbound: list[bytes | memoryview] = []
        hello = Hello(self.MIN_VERSION, self.MAX_VERSION, role, self.INITIAL_WINDOW,
                      self.MAX_FRAME_PAYLOAD, self.MAX_STREAMS)
        self._outbound.append(frame(FrameType.HELLO, 0, 0, hello.pack()))

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    # -- output ---------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued so far, as one buffer (the only copy of outgoing payloads)."""
        if not self._outbound:
            return b""
        data = b"".join(self._outbound)
        self._outbound.clear()
        return data

    # -- our caller's moves ---------------------------------------------------------------

    def open_stream(self, kind: StreamKind, destination: str) -> int:
        """Ask the agent to connect to `destination`; returns the new stream id."""
        self._require_open()
        if self.role is not Role.GATEWAY:
            raise LocalProtocolError("only the gateway opens streams")
        if not valid_destination(destination, self.MAX_DESTINATION):
            raise LocalProtocolError(f"invalid destination {destination[:64]!r}")
        if len(self.streams) >= self.peer_max_streams:
            raise LocalProtocolError("the agent's stream limit is reached")
        if self.highest_stream_id >= MAX_U32:
            raise LocalProtocolError("stream ids exhausted: open a new connection")
        self.highest_stream_id += 1
        stream_id = self.highest_stream_id
        self.streams[stream_id] = StreamInfo(StreamState.OPEN, self.peer_initial_window,
                                             self.INITIAL_WINDOW, self.INITIAL_WINDOW)
        payload = bytes([StreamKind(kind)]) + destination.encode("ascii")
        self._outbound.append(frame(FrameType.OPEN, 0, stream_id, payload))
        return stream_id

    def send_window(self, stream_id: int) -> int:
        """How many bytes `send_data` accepts now on this stream."""
        return self._stream(stream_id).send_window

    def send_data(self, stream_id: int, data: bytes | memoryview, *,
                  end_stream: bool = False) -> None:
        """Queue `data` (split into frames); the caller must respect `send_window`.

        A memoryview is not copied until `data_to_send`: do not change its buffer before.
        """
        stream = self._stream(stream_id)
        if stream.state not in CAN_SEND:
            raise LocalProtocolError(f"stream {stream_id} is closed for sending")
        size = len(data)
        if size > stream.send_window:
            raise LocalProtocolError(
                f"{size} bytes exceed the peer's window of {stream.send_window} on stream "
                f"{stream_id}")
        if size == 0 and not end_stream:
            return
        stream.send_window -= size
        step = self.peer_max_frame_payload
        view = memoryview(data)
        offset = 0
        while True:
            chunk = view[offset:offset + step]
            offset += len(chunk)
            last = offset >= size
            flags = FLAG_FIN if last and end_stream else 0
            self._outbound.append(HEADER.pack(len(chunk), FrameType.DATA, flags, stream_id))
            if chunk:
                self._outbound.append(chunk)
            if last:
                break
        if end_stream:
            self._move(stream_id, stream, _Move.SEND_FIN)

    def close_stream(self, stream_id: int) -> None:
        """Half-close: we send no more data; the peer may go on sending."""
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        """Abort a stream both ways. A stream that is already gone is left alone (races)."""
        self._require_open()
        if stream_id not in self.streams:
            if 0 < stream_id <= self.highest_stream_id:
                return
            raise LocalProtocolError(f"unknown stream {stream_id}")
        self._forget(stream_id)
        self._outbound.append(frame(FrameType.RESET, 0, stream_id, U32.pack(code)))

    def acknowledge(self, stream_id: int, size: int, *, grow: bool = False,
                    shrink: bool = False) -> int:
        """Give `size` consumed bytes back to the peer's window on this stream. `grow` (the
        application keeps up) also doubles the stream's window, within `MAX_STREAM_WINDOW`
        and the connection's budget; `shrink` (it fell behind) withholds bytes instead, down
        to the initial window, and returns them to the budget. Returns the window's change."""
        self._require_open()
        stream = self.streams.get(stream_id)
        if stream is None:
            if 0 < stream_id <= self.highest_stream_id:
                return 0
            raise LocalProtocolError(f"unknown stream {stream_id}")
        if size <= 0 or size > stream.unacknowledged:
            raise LocalProtocolError(
                f"cannot acknowledge {size} bytes: {stream.unacknowledged} unacknowledged")
        stream.unacknowledged -= size
        if stream.state not in CAN_RECEIVE:
            return 0  # the peer sends no more: a window update would be noise
        change = 0
        if grow:
            change = max(0, min(stream.window, self.MAX_STREAM_WINDOW - stream.window,
                                self.WINDOW_BUDGET - self.window_granted))
        elif shrink:
            change = -min(size, stream.window - self.INITIAL_WINDOW)
        stream.window += change
        self.window_granted += change
        if size + change:
            stream.recv_window += size + change
            self._outbound.append(frame(FrameType.WINDOW, 0, stream_id,
                                        U32.pack(size + change)))
        return change

    def stream_window(self, stream_id: int) -> int:
        """The receive window granted on this stream so far (0 once it is gone)."""
        stream = self.streams.get(stream_id)
        return stream.window if stream is not None else 0

    def ping(self, payload: bytes) -> None:
        self._require_open()
        if len(payload) != PING_SIZE:
            raise LocalProtocolError(f"a ping carries exactly {PING_SIZE} bytes")
        self._outbound.append(frame(FrameType.PING, 0, 0, payload))

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR, message: str = "") -> None:
        """Say goodbye (GOAWAY) and close; later input is ignored."""
        if self.state is ConnectionState.CLOSED:
            return
        self._goaway(code, message)

    # -- the peer's moves -----------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ev.Event]:
        """Parse what the peer sent; complete frames become events, a partial frame waits."""
        events: list[ev.Event] = []
        if self.state is ConnectionState.CLOSED or not data:
            return events
        buffer = self._inbound
        if buffer:
            buffer += data
            source: bytes | bytearray | memoryview = buffer
        else:
            source = data  # nothing pending: frames are cut straight out of what was read
        position = 0
        # One copy per payload (the bytes handed to the application), none for the bytes
        # around it: a large DATA frame is not copied through intermediate buffers.
        with memoryview(source) as view:
            flat = view.cast("B") if view.format != "B" or view.ndim != 1 else view
            size = len(flat)
            while size - position >= HEADER_SIZE:
                length, kind, flags, stream_id = HEADER.unpack_from(flat, position)
                problem = self._check_header(length, kind, flags, stream_id)
                if problem is not None:
                    self._fail(problem[0], problem[1], events)
                    break
                end = position + HEADER_SIZE + length
                if end > size:
                    break
                payload = bytes(flat[position + HEADER_SIZE:end])
                position = end
                self._dispatch(FrameType(kind), flags, stream_id, payload, events)
                if self.closed:
                    break
            if source is not buffer and position < size and not self.closed:
                buffer += flat[position:]  # a partial frame waits for the next read
            flat.release()  # the buffer may be resized only once no view is left
        if self.closed:
            buffer.clear()
        elif source is buffer:
            del buffer[:position]
        return events

    def _check_header(self, length: int, kind: int, flags: int,
                      stream_id: int) -> tuple[ErrorCode, str] | None:
        """Refuse a bad frame from its header alone, before buffering its payload."""
        if self.state is ConnectionState.AWAITING_HELLO and (
                kind != FrameType.HELLO or length != HELLO.size):
            return ErrorCode.PROTOCOL_ERROR, "the first frame must be a hello"
        if length > self.MAX_FRAME_PAYLOAD:
            return ErrorCode.FRAME_SIZE, f"frame of {length} bytes is over the limit"
        if kind not in ALLOWED_FLAGS:
            return ErrorCode.PROTOCOL_ERROR, f"unknown frame type {kind}"
        frame_type = FrameType(kind)
        if flags & ~ALLOWED_FLAGS[frame_type]:
            return ErrorCode.PROTOCOL_ERROR, f"unknown flags {flags:#x} on {frame_type.name}"
        if (stream_id == 0) != (frame_type in CONNECTION_FRAMES):
            return ErrorCode.PROTOCOL_ERROR, f"{frame_type.name} on stream {stream_id}"
        if frame_type in _FIXED_SIZE and length != _FIXED_SIZE[frame_type]:
            return ErrorCode.FRAME_SIZE, f"{frame_type.name} of {length} bytes"
        if frame_type is FrameType.GOAWAY and not 4 <= length <= 4 + MAX_GOAWAY_MESSAGE:
            return ErrorCode.FRAME_SIZE, f"GOAWAY of {length} bytes"
        if frame_type is FrameType.OPEN and not 2 <= length <= 1 + self.MAX_DESTINATION:
            return ErrorCode.FRAME_SIZE, f"OPEN of {length} bytes"
        return None

    def _dispatch(self, kind: FrameType, flags: int, stream_id: int, payload: bytes,
                  events: list[ev.Event]) -> None:
        if kind is FrameType.DATA:
            self._on_data(stream_id, payload, bool(flags & FLAG_FIN), events)
        elif kind is FrameType.WINDOW:
            self._on_window(stream_id, U32.unpack(payload)[0], events)
        elif kind is FrameType.HELLO:
            self._on_hello(payload, events)
        elif kind is FrameType.OPEN:
            self._on_open(stream_id, payload, events)
        elif kind is FrameType.RESET:
            self._on_reset(stream_id, U32.unpack(payload)[0], events)
        elif kind is FrameType.PING:
            if flags & FLAG_ACK:
                events.append(ev.PongReceived(payload))
            else:
                self._outbound.append(frame(FrameType.PING, FLAG_ACK, 0, payload))
                events.append(ev.PingReceived(payload))
        else:
            code = U32.unpack_from(payload)[0]
            message = payload[4:].decode("utf-8", "replace")
            self.state = ConnectionState.CLOSED
            self.streams.clear()
            self.window_granted = 0
            events.append(ev.GoAway(error_code(code), message))

    def _on_hello(self, payload: bytes, events: list[ev.Event]) -> None:
        if self.state is not ConnectionState.AWAITING_HELLO:
            return self._fail(ErrorCode.PROTOCOL_ERROR, "second hello", events)
        hello = Hello.unpack(payload)
        if hello is None:
            return self._fail(ErrorCode.PROTOCOL_ERROR, "not a Sekisho connector", events)
        if hello.role != self.role.peer:
            return self._fail(ErrorCode.PROTOCOL_ERROR, "both ends claim the same role", events)
        version = min(self.MAX_VERSION, hello.max_version)
        if hello.min_version > hello.max_version or version < max(self.MIN_VERSION,
                                                                  hello.min_version):
            return self._fail(
                ErrorCode.VERSION_MISMATCH,
                f"versions {hello.min_version}-{hello.max_version} do not meet "
                f"{self.MIN_VERSION}-{self.MAX_VERSION}", events)
        if not (self.MIN_PEER_WINDOW <= hello.initial_window <= MAX_WINDOW
                and self.MIN_PEER_FRAME_PAYLOAD <= hello.max_frame_payload <= MAX_WINDOW
                and hello.max_streams >= 1):
            return self._fail(ErrorCode.PROTOCOL_ERROR, "unusable limits in hello", events)
        self.version = version
        self.peer_initial_window = hello.initial_window
        self.peer_max_frame_payload = hello.max_frame_payload
        self.peer_max_streams = hello.max_streams
        self.state = ConnectionState.OPEN
        events.append(ev.VersionAgreed(version, Role(hello.role), hello.initial_window,
                                       hello.max_frame_payload, hello.max_streams))
        return None

    def _on_open(self, stream_id: int, payload: bytes, events: list[ev.Event]) -> None:
        # Blocks an agent (or anything that took over the agent's end) from opening streams
        # into the gateway's network: the tunnel only ever points inward.
        if self.role is not Role.AGENT:
            return self._fail(ErrorCode.PROTOCOL_ERROR, "an agent may not open streams", events)
        if stream_id <= self.highest_stream_id:
            return self._fail(ErrorCode.PROTOCOL_ERROR, f"stream id {stream_id} reused", events)
        if len(self.streams) >= self.MAX_STREAMS:
            return self._fail(ErrorCode.STREAM_LIMIT, "too many streams", events)
        kind = payload[0]
        if kind not in _KINDS:
            return self._fail(ErrorCode.PROTOCOL_ERROR, f"unknown stream kind {kind}", events)
        destination = payload[1:].decode("ascii", "replace")
        if not valid_destination(destination, self.MAX_DESTINATION):
            return self._fail(ErrorCode.PROTOCOL_ERROR, "invalid destination", events)
        self.highest_stream_id = stream_id
        self.streams[stream_id] = StreamInfo(StreamState.OPEN, self.peer_initial_window,
                                             self.INITIAL_WINDOW, self.INITIAL_WINDOW)
        events.append(ev.StreamOpened(stream_id, StreamKind(kind), destination))
        return None

    def _on_data(self, stream_id: int, payload: bytes, fin: bool,
                 events: list[ev.Event]) -> None:
        stream = self._known(stream_id, events)
        if stream is None:
            return
        if stream.state not in CAN_RECEIVE:
            return self._fail(ErrorCode.PROTOCOL_ERROR, f"data after close on {stream_id}",
                              events)
        size = len(payload)
        if size == 0 and not fin:
            # An empty frame costs us a loop turn and the peer nothing: refuse the flood.
            return self._fail(ErrorCode.PROTOCOL_ERROR, "empty data frame", events)
        if size > stream.recv_window:
            return self._fail(ErrorCode.FLOW_CONTROL,
                              f"{size} bytes over a window of {stream.recv_window}", events)
        stream.recv_window -= size
        stream.unacknowledged += size
        if size:
            events.append(ev.DataReceived(stream_id, payload))
        if fin:
            self._move(stream_id, stream, _Move.RECEIVE_FIN)
            events.append(ev.StreamClosed(stream_id))
        return None

    def _on_window(self, stream_id: int, increment: int, events: list[ev.Event]) -> None:
        stream = self._known(stream_id, events)
        if stream is None:
            return
        if increment == 0:
            return self._fail(ErrorCode.PROTOCOL_ERROR, "zero window increment", events)
        if stream.state not in CAN_SEND:
            return None  # we already finished sending; a late update is harmless
        if stream.send_window + increment > MAX_WINDOW:
            return self._fail(ErrorCode.FLOW_CONTROL, "window overflow", events)
        stream.send_window += increment
        events.append(ev.WindowUpdated(stream_id, increment))
        return None

    def _on_reset(self, stream_id: int, code: int, events: list[ev.Event]) -> None:
        if self._known(stream_id, events) is None:
            return
        self._forget(stream_id)
        events.append(ev.StreamReset(stream_id, error_code(code)))

    # -- helpers --------------------------------------------------------------------------

    def _known(self, stream_id: int, events: list[ev.Event]) -> StreamInfo | None:
        """The stream, or None: silently for one that existed (frames in flight when we reset
        or finished it), with a protocol error for an id that was never opened."""
        stream = self.streams.get(stream_id)
        if stream is None and stream_id > self.highest_stream_id:
            self._fail(ErrorCode.PROTOCOL_ERROR, f"stream {stream_id} was never opened", events)
        return stream

    def _move(self, stream_id: int, stream: StreamInfo, move: _Move) -> None:
        stream.state = TRANSITIONS[(stream.state, move)]
        if stream.state is StreamState.CLOSED:
            self._forget(stream_id)

    def _forget(self, stream_id: int) -> None:
        """Drop a finished stream and give its window growth back to the budget."""
        stream = self.streams.pop(stream_id)
        self.window_granted -= stream.window - self.INITIAL_WINDOW

    def _stream(self, stream_id: int) -> StreamInfo:
        self._require_open()
        stream = self.streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        return stream

    def _require_open(self) -> None:
        if self.state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"the connection is {self.state.value}")

    def _goaway(self, code: ErrorCode, message: str) -> None:
        reason = message.encode("utf-8")[:MAX_GOAWAY_MESSAGE]
        self._outbound.append(frame(FrameType.GOAWAY, 0, 0, U32.pack(code) + reason))
        self.state = ConnectionState.CLOSED
        self.streams.clear()
        self.window_granted = 0

    def _fail(self, code: ErrorCode, message: str, events: list[ev.Event]) -> None:
        self._goaway(code, message)
        events.append(ev.ProtocolError(code, message))
