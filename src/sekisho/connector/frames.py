"""The connector tunnel's wire format: frame header, frame types, codes and the hello.

This module only knows bytes: how a frame is laid out and how the fixed-size payloads are
packed. What a frame *means* in a given state lives in `protocol.py`.

Every frame is a 10-byte header followed by `length` payload bytes (all integers big-endian):

    offset  size  field
    0       4     length     payload length (never above the receiver's max frame payload)
    4       1     type       FrameType
    5       1     flags      bit 0 = FIN on DATA, ACK on PING; every other bit must be 0
    6       4     stream     stream id; 0 for connection frames (HELLO, PING, GOAWAY)

Payloads:
    HELLO   20 bytes: magic b"SKSH", min version, max version, role, 0,
            initial window (u32), max frame payload (u32), max streams (u32)
    OPEN    kind (u8: 1 tcp, 2 http) + destination "host:port" (ASCII, ≤ 255 bytes)
    DATA    application bytes (empty only with FIN)
    WINDOW  increment (u32, > 0)
    RESET   error code (u32)
    PING    8 opaque bytes, echoed back with the ACK flag
    GOAWAY  error code (u32) + UTF-8 reason (≤ 256 bytes)
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">IBBI")
HEADER_SIZE = HEADER.size
HELLO = struct.Struct(">4sBBBBIII")
U32 = struct.Struct(">I")
MAGIC = b"SKSH"
MAX_U32 = 0xFFFFFFFF
MAX_WINDOW = 0x7FFFFFFF
PING_SIZE = 8
MAX_GOAWAY_MESSAGE = 256

FLAG_FIN = 0x1
FLAG_ACK = 0x1


class FrameType(enum.IntEnum):
    HELLO = 0
    OPEN = 1
    DATA = 2
    WINDOW = 3
    RESET = 4
    PING = 5
    GOAWAY = 6


# Which flag bits each frame type may carry; anything else is a protocol error (strictness
# leaves room for later versions to give the bits a meaning without ambiguity).
ALLOWED_FLAGS: dict[FrameType, int] = {
    FrameType.HELLO: 0, FrameType.OPEN: 0, FrameType.DATA: FLAG_FIN, FrameType.WINDOW: 0,
    FrameType.RESET: 0, FrameType.PING: FLAG_ACK, FrameType.GOAWAY: 0,
}
CONNECTION_FRAMES = frozenset({FrameType.HELLO, FrameType.PING, FrameType.GOAWAY})


class Role(enum.IntEnum):
    """Which end of the tunnel: only the gateway opens streams."""

    GATEWAY = 1
    AGENT = 2

    @property
    def peer(self) -> Role:
        return Role.AGENT if self is Role.GATEWAY else Role.GATEWAY


class StreamKind(enum.IntEnum):
    TCP = 1
    HTTP = 2


class ErrorCode(enum.IntEnum):
    """Codes carried by RESET and GOAWAY (unknown codes from a peer are kept as plain ints)."""

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    FLOW_CONTROL = 2
    FRAME_SIZE = 3
    VERSION_MISMATCH = 4
    STREAM_LIMIT = 5
    CANCEL = 6
    REFUSED = 7
    CONNECT_FAILED = 8
    TIMEOUT = 9
    INTERNAL = 10
    FLOOD = 11


def error_code(value: int) -> ErrorCode | int:
    try:
        return ErrorCode(value)
    except ValueError:
        return value


@dataclass(frozen=True, slots=True)
class Hello:
    min_version: int
    max_version: int
    role: int
    initial_window: int
    max_frame_payload: int
    max_streams: int

    def pack(self) -> bytes:
        return HELLO.pack(MAGIC, self.min_version, self.max_version, self.role, 0,
                          self.initial_window, self.max_frame_payload, self.max_streams)

    @classmethod
    def unpack(cls, payload: bytes) -> Hello | None:
        """None when the payload is not a Sekisho hello (wrong size or magic)."""
        if len(payload) != HELLO.size:
            return None
        magic, low, high, role, _, window, frame, streams = HELLO.unpack(payload)
        if magic != MAGIC:
            return None
        return cls(low, high, role, window, frame, streams)


# host:port, the host a DNS name, an IPv4 address or a bracketed IPv6 address. Anything else
# (spaces, control characters, user-info, paths) is refused so that a destination string can
# never smuggle a second target past the agent's allow-list or into its log lines.
_DESTINATION = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?"
    r"|\[[0-9A-Fa-f:.]{2,45}\]):(?:[1-9][0-9]{0,4})"
)


def valid_destination(destination: str, max_length: int) -> bool:
    if len(destination) > max_length or not _DESTINATION.fullmatch(destination):
        return False
    return int(destination.rsplit(":", 1)[1]) <= 65535


def frame(frame_type: FrameType, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One whole frame as bytes (for control frames and for tests)."""
    return HEADER.pack(len(payload), frame_type, flags, stream_id) + payload
