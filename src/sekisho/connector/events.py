"""Events that `Connection.receive_data` reports: what the peer did, as plain data.

The shell (or a test) reads these and acts; none of them carries a socket or a callback.
"""

from __future__ import annotations

from dataclasses import dataclass

from sekisho.connector.frames import ErrorCode, Role, StreamKind


@dataclass(frozen=True, slots=True)
class VersionAgreed:
    """Both hellos are in: the version both ends speak and the peer's announced limits."""

    version: int
    peer_role: Role
    peer_initial_window: int
    peer_max_frame_payload: int
    peer_max_streams: int


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The gateway asked the agent to reach `destination` ("host:port")."""

    stream_id: int
    kind: StreamKind
    destination: str


@dataclass(frozen=True, slots=True)
class DataReceived:
    """`data` arrived on a stream; pass its length to `acknowledge` once consumed."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """The peer half-closed: it will send no more data on this stream (it may still read)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer aborted the stream; it is gone on both sides."""

    stream_id: int
    code: ErrorCode | int


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """The peer consumed data: we may send `increment` more bytes on the stream."""

    stream_id: int
    increment: int


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The peer pinged (the pong is already queued)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The answer to one of our pings."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class GoAway:
    """The peer closed the connection, with a reason."""

    code: ErrorCode | int
    message: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The peer broke the protocol; a GOAWAY with `code` is queued and the connection is closed."""

    code: ErrorCode
    message: str


Event = (VersionAgreed | StreamOpened | DataReceived | StreamClosed | StreamReset
         | WindowUpdated | PingReceived | PongReceived | GoAway | ProtocolError)
