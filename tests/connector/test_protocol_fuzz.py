"""Property tests of the decoder: whatever the peer sends, `receive_data` never raises and the
connection's accounting stays consistent; valid conversations survive any chunking.

A short run here (a few thousand examples); `bench/fuzz_connector.py` runs a million inputs.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sekisho.connector import events as ev
from sekisho.connector.frames import HEADER_SIZE, MAX_WINDOW, FrameType, Role, StreamKind, frame
from sekisho.connector.protocol import Connection, ConnectionState, StreamState

from .helpers import data, hello, open_frame, pump, reset, window

FUZZ = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def check_invariants(connection: Connection) -> None:
    """What must hold after any input (also used by bench/fuzz_connector.py's twin)."""
    assert len(connection._inbound) < HEADER_SIZE + connection.MAX_FRAME_PAYLOAD
    if connection.state is ConnectionState.CLOSED:
        assert connection.streams == {}
        assert not connection._inbound
    assert len(connection.streams) <= max(connection.MAX_STREAMS, connection.peer_max_streams)
    for stream_id, stream in connection.streams.items():
        assert 0 < stream_id <= connection.highest_stream_id
        assert stream.state is not StreamState.CLOSED
        assert 0 <= stream.send_window <= MAX_WINDOW
        assert stream.recv_window >= 0 and stream.unacknowledged >= 0
        # What the peer may still send plus what we hold never passes the window granted,
        # and no stream's window passes its cap nor all growth the connection's budget.
        assert stream.recv_window + stream.unacknowledged <= stream.window
        assert connection.INITIAL_WINDOW <= stream.window <= connection.MAX_STREAM_WINDOW
    assert connection.window_granted == sum(
        stream.window - connection.INITIAL_WINDOW for stream in connection.streams.values())
    assert 0 <= connection.window_granted <= connection.WINDOW_BUDGET


def chunks(payload: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(payload) + 1) for cut in cuts})
    edges = [0, *points, len(payload)]
    return [payload[a:b] for a, b in itertools.pairwise(edges)]


SEEDS = [b"", hello(), hello() + open_frame(1), hello() + open_frame(1) + data(1, b"abc")]


@FUZZ
@given(prefix=st.sampled_from(SEEDS), noise=st.binary(max_size=300),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
       role=st.sampled_from([Role.AGENT, Role.GATEWAY]))
def test_random_bytes_never_break_the_decoder(prefix: bytes, noise: bytes, cuts: list[int],
                                              role: Role) -> None:
    connection = Connection(role)
    connection.data_to_send()
    for piece in chunks(prefix + noise, cuts):
        for event in connection.receive_data(piece):
            assert isinstance(event, ev.Event)  # type: ignore[misc,arg-type]
        check_invariants(connection)


FRAME_PARTS = st.tuples(
    st.sampled_from([*FrameType, 7, 200]),
    st.sampled_from([0, 1, 2, 255]),
    st.sampled_from([0, 1, 2, 3, 0xFFFFFFFF]),
    st.one_of(st.binary(max_size=40), st.sampled_from([
        b"\x00\x00\x00\x01", b"\xff\xff\xff\xff", b"\x01a:1", b"\x02[::1]:80", b"12345678"])),
)


@FUZZ
@given(frames=st.lists(FRAME_PARTS, max_size=12), cuts=st.lists(st.integers(0, 600),
                                                                   max_size=4))
def test_random_well_framed_sequences(frames: list[tuple[Any, int, int, bytes]],
                                      cuts: list[int]) -> None:
    """Frames with valid headers but arbitrary types, flags, ids and payloads after a hello:
    this reaches the per-frame rules rather than stopping at the first header."""
    stream = hello() + b"".join(frame(kind, flags, sid, payload)
                                for kind, flags, sid, payload in frames)
    agent = Connection(Role.AGENT)
    agent.data_to_send()
    for piece in chunks(stream, cuts):
        agent.receive_data(piece)
        check_invariants(agent)


OPERATIONS = st.lists(st.tuples(
    st.sampled_from(["open", "send", "fin", "reset", "ack", "ping", "agent-send", "agent-fin",
                     "agent-reset", "gateway-ack", "deliver"]),
    st.integers(min_value=0, max_value=7),
    st.integers(min_value=0, max_value=300_000),
), max_size=40)


def agent_move(agent: Connection, action: str, sid: int, size: int) -> None:
    stream = agent.streams.get(sid)
    if stream is None:
        return
    can_send = stream.state in (StreamState.OPEN, StreamState.REMOTE_CLOSED)
    if action == "agent-send" and can_send:
        agent.send_data(sid, b"a" * min(size, stream.send_window))
    elif action == "agent-fin" and can_send:
        agent.close_stream(sid)
    elif action == "agent-reset":
        agent.reset_stream(sid)
    elif action == "ack" and stream.unacknowledged:
        # Window growth and shrinking ride on acknowledgements: both must stay legal.
        agent.acknowledge(sid, 1 + size % stream.unacknowledged, grow=size % 3 == 1,
                          shrink=size % 3 == 2)


@FUZZ
@given(operations=OPERATIONS, cuts=st.lists(st.integers(0, 10_000_000), max_size=8))
def test_valid_conversations_survive_any_chunking(operations: list[tuple[str, int, int]],
                                                   cuts: list[int]) -> None:
    """Two real connections driven by random legal moves; the bytes between them are cut at
    random points. No side may ever see a protocol error, and the receiving side's events are
    the same however the bytes were cut."""
    gateway, agent = Connection(Role.GATEWAY), Connection(Role.AGENT)
    pump(gateway, agent)
    mirror = Connection(Role.AGENT)  # fed the same bytes whole, to compare
    mirror.data_to_send()
    mirror.receive_data(Connection(Role.GATEWAY).data_to_send())
    seen_agent: list[ev.Event] = []
    seen_mirror: list[ev.Event] = []
    for action, pick, size in operations:
        ids = sorted(set(gateway.streams) | set(agent.streams)) or [0]
        sid = ids[pick % len(ids)]
        if action == "open" and len(gateway.streams) < gateway.peer_max_streams:
            gateway.open_stream(StreamKind(1 + pick % 2), f"host{pick}.internal:{1 + size}"
                                if size < 65535 else "[fd00::1]:22")
        elif action == "send" and sid in gateway.streams \
                and gateway.streams[sid].state in (StreamState.OPEN, StreamState.REMOTE_CLOSED):
            gateway.send_data(sid, b"g" * min(size, gateway.send_window(sid)))
        elif action == "fin" and sid in gateway.streams \
                and gateway.streams[sid].state in (StreamState.OPEN, StreamState.REMOTE_CLOSED):
            gateway.close_stream(sid)
        elif action == "reset" and sid:
            gateway.reset_stream(sid)
        elif action == "ping":
            gateway.ping(pick.to_bytes(8, "big"))
        elif action.startswith("agent") or action == "ack":
            for receiver in (agent, mirror):  # same bytes in so far: same state, same moves
                agent_move(receiver, action, sid, size)
        elif action == "gateway-ack" and sid in gateway.streams \
                and gateway.streams[sid].unacknowledged:
            gateway.acknowledge(sid, 1 + size % gateway.streams[sid].unacknowledged)
        elif action == "deliver":
            outgoing = gateway.data_to_send()
            seen_mirror += mirror.receive_data(outgoing)
            for piece in chunks(outgoing, cuts):
                seen_agent += agent.receive_data(piece)
            gateway.receive_data(agent.data_to_send())
            mirror.data_to_send()
        for connection in (gateway, agent, mirror):
            check_invariants(connection)
    seen_gateway, seen_rest = pump(gateway, agent)
    assert seen_agent == seen_mirror
    for event in seen_agent + seen_rest + seen_gateway:
        assert not isinstance(event, ev.ProtocolError | ev.GoAway), event
    assert gateway.state is agent.state is ConnectionState.OPEN


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1,
                      max_size=4))
def test_corrupted_valid_streams(flips: list[tuple[int, int]]) -> None:
    base = bytearray(hello() + open_frame(1) + data(1, b"x" * 100) + window(1, 7)
                     + frame(FrameType.PING, 0, 0, b"abcdefgh") + reset(1, 6)
                     + open_frame(2, "db.internal:5432") + data(2, b"", fin=True))
    for position, mask in flips:
        base[position % len(base)] ^= mask
    agent = Connection(Role.AGENT)
    agent.data_to_send()
    agent.receive_data(bytes(base))
    check_invariants(agent)
