"""Building blocks for the connector tests: hand-made frames and a pair of connections."""

from __future__ import annotations

from sekisho.connector import events as ev
from sekisho.connector.frames import (
    FLAG_FIN,
    U32,
    FrameType,
    Hello,
    Role,
    StreamKind,
    frame,
)
from sekisho.connector.protocol import Connection


def hello(role: Role = Role.GATEWAY, low: int = 1, high: int = 1, window: int = 65536,
          max_frame: int = 16384, streams: int = 100) -> bytes:
    return frame(FrameType.HELLO, 0, 0, Hello(low, high, role, window, max_frame,
                                              streams).pack())


def open_frame(stream_id: int, destination: str = "intranet.example:443",
               kind: int = StreamKind.TCP) -> bytes:
    return frame(FrameType.OPEN, 0, stream_id, bytes([kind]) + destination.encode())


def data(stream_id: int, payload: bytes, fin: bool = False) -> bytes:
    return frame(FrameType.DATA, FLAG_FIN if fin else 0, stream_id, payload)


def window(stream_id: int, increment: int) -> bytes:
    return frame(FrameType.WINDOW, 0, stream_id, U32.pack(increment))


def reset(stream_id: int, code: int) -> bytes:
    return frame(FrameType.RESET, 0, stream_id, U32.pack(code))


def fresh_agent(cls: type[Connection] = Connection) -> Connection:
    """An agent that has already received the gateway's hello (its own hello discarded)."""
    agent = cls(Role.AGENT)
    agent.data_to_send()
    events = agent.receive_data(hello())
    assert isinstance(events[0], ev.VersionAgreed)
    return agent


def pump(a: Connection, b: Connection) -> tuple[list[ev.Event], list[ev.Event]]:
    """Carry bytes both ways until nothing moves; the events each side saw."""
    seen_a: list[ev.Event] = []
    seen_b: list[ev.Event] = []
    while True:
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_a and not to_b:
            return seen_a, seen_b
        seen_b += b.receive_data(to_b)
        seen_a += a.receive_data(to_a)


def pair(gateway_cls: type[Connection] = Connection,
         agent_cls: type[Connection] = Connection) -> tuple[Connection, Connection]:
    gateway, agent = gateway_cls(Role.GATEWAY), agent_cls(Role.AGENT)
    seen_gateway, seen_agent = pump(gateway, agent)
    assert isinstance(seen_gateway[0], ev.VersionAgreed), seen_gateway
    assert isinstance(seen_agent[0], ev.VersionAgreed), seen_agent
    return gateway, agent
