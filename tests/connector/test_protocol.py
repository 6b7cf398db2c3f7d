"""The sans-IO tunnel protocol: frame sequences in, events and frames out, no sockets."""

from __future__ import annotations

import pytest

from sekisho.connector import events as ev
from sekisho.connector.frames import (
    HEADER,
    HEADER_SIZE,
    U32,
    ErrorCode,
    FrameType,
    Role,
    StreamKind,
    frame,
    valid_destination,
)
from sekisho.connector.protocol import (
    TRANSITIONS,
    Connection,
    ConnectionState,
    LocalProtocolError,
    StreamState,
)

from .helpers import data, fresh_agent, hello, open_frame, pair, pump, reset, window


def goaway_code(sent: bytes) -> int:
    """The code of the GOAWAY at the end of `sent`."""
    for position in range(len(sent) - HEADER_SIZE + 1):
        length, kind, _, stream_id = HEADER.unpack_from(sent, position)
        if kind == FrameType.GOAWAY and stream_id == 0 \
                and position + HEADER_SIZE + length == len(sent):
            return int(U32.unpack_from(sent, position + HEADER_SIZE)[0])
    raise AssertionError(f"no GOAWAY at the end of {sent!r}")


class TwoStreams(Connection):
    MAX_STREAMS = 2


# -- peer errors: every one ends in ProtocolError + GOAWAY + a closed connection ------------

AGENT_ERRORS = [
    ("first frame not a hello", [frame(FrameType.PING, 0, 0, b"12345678")],
     ErrorCode.PROTOCOL_ERROR),
    ("hello of the wrong size", [frame(FrameType.HELLO, 0, 0, b"SKSH")],
     ErrorCode.PROTOCOL_ERROR),
    ("not our magic", [frame(FrameType.HELLO, 0, 0, b"HTTP" + hello()[HEADER_SIZE + 4:])],
     ErrorCode.PROTOCOL_ERROR),
    ("HTTP instead of the protocol", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
     ErrorCode.PROTOCOL_ERROR),
    ("same role", [hello(role=Role.AGENT)], ErrorCode.PROTOCOL_ERROR),
    ("versions above ours", [hello(low=2, high=3)], ErrorCode.VERSION_MISMATCH),
    ("inverted version range", [hello(low=1, high=0)], ErrorCode.VERSION_MISMATCH),
    ("tiny window", [hello(window=10)], ErrorCode.PROTOCOL_ERROR),
    ("tiny frames", [hello(max_frame=10)], ErrorCode.PROTOCOL_ERROR),
    ("no streams", [hello(streams=0)], ErrorCode.PROTOCOL_ERROR),
    ("second hello", [hello(), hello()], ErrorCode.PROTOCOL_ERROR),
    ("frame over the size limit",
     [hello(), HEADER.pack(Connection.MAX_FRAME_PAYLOAD + 1, FrameType.DATA, 0, 1)],
     ErrorCode.FRAME_SIZE),
    ("unknown frame type", [hello(), HEADER.pack(0, 9, 0, 0)], ErrorCode.PROTOCOL_ERROR),
    ("unknown flag", [hello(), open_frame(1), frame(FrameType.DATA, 0x2, 1, b"x")],
     ErrorCode.PROTOCOL_ERROR),
    ("ping on a stream", [hello(), frame(FrameType.PING, 0, 1, b"12345678")],
     ErrorCode.PROTOCOL_ERROR),
    ("data on stream 0", [hello(), data(0, b"x")], ErrorCode.PROTOCOL_ERROR),
    ("short window frame", [hello(), open_frame(1), frame(FrameType.WINDOW, 0, 1, b"abc")],
     ErrorCode.FRAME_SIZE),
    ("short ping", [hello(), frame(FrameType.PING, 0, 0, b"1234567")], ErrorCode.FRAME_SIZE),
    ("short goaway", [hello(), frame(FrameType.GOAWAY, 0, 0, b"ab")], ErrorCode.FRAME_SIZE),
    ("long goaway", [hello(), frame(FrameType.GOAWAY, 0, 0, b"\0" * 300)],
     ErrorCode.FRAME_SIZE),
    ("empty open", [hello(), frame(FrameType.OPEN, 0, 1, b"\x01")], ErrorCode.FRAME_SIZE),
    ("huge open", [hello(), open_frame(1, "a" * 300 + ":1")], ErrorCode.FRAME_SIZE),
    ("unknown stream kind", [hello(), open_frame(1, kind=9)], ErrorCode.PROTOCOL_ERROR),
    ("destination with a space", [hello(), open_frame(1, "a b:80")], ErrorCode.PROTOCOL_ERROR),
    ("destination without port", [hello(), open_frame(1, "intranet")],
     ErrorCode.PROTOCOL_ERROR),
    ("destination port 0", [hello(), open_frame(1, "intranet:0")], ErrorCode.PROTOCOL_ERROR),
    ("destination port 70000", [hello(), open_frame(1, "intranet:70000")],
     ErrorCode.PROTOCOL_ERROR),
    ("destination with user-info", [hello(), open_frame(1, "root@db:22")],
     ErrorCode.PROTOCOL_ERROR),
    ("destination with a newline", [hello(), open_frame(1, "db\n:22")],
     ErrorCode.PROTOCOL_ERROR),
    ("destination not ASCII", [hello(), open_frame(1, "庁内:80")], ErrorCode.PROTOCOL_ERROR),
    ("stream id reused", [hello(), open_frame(1), open_frame(1)], ErrorCode.PROTOCOL_ERROR),
    ("stream id going down", [hello(), open_frame(5), open_frame(3)],
     ErrorCode.PROTOCOL_ERROR),
    ("closed stream id reused",
     [hello(), open_frame(1), reset(1, ErrorCode.CANCEL), open_frame(1)],
     ErrorCode.PROTOCOL_ERROR),
    ("data on a stream never opened", [hello(), open_frame(1), data(7, b"x")],
     ErrorCode.PROTOCOL_ERROR),
    ("window on a stream never opened", [hello(), window(3, 10)], ErrorCode.PROTOCOL_ERROR),
    ("reset on a stream never opened", [hello(), reset(3, 0)], ErrorCode.PROTOCOL_ERROR),
    ("data beyond the window",
     [hello(), open_frame(1), data(1, b"x" * 1024)] * 1
     + [data(1, b"x" * 16384) for _ in range(16)], ErrorCode.FLOW_CONTROL),
    ("data after FIN", [hello(), open_frame(1), data(1, b"x", fin=True), data(1, b"y")],
     ErrorCode.PROTOCOL_ERROR),
    ("empty data without FIN", [hello(), open_frame(1), data(1, b"")],
     ErrorCode.PROTOCOL_ERROR),
    ("zero window increment", [hello(), open_frame(1), window(1, 0)],
     ErrorCode.PROTOCOL_ERROR),
    ("window overflow", [hello(), open_frame(1), window(1, 0x7FFFFFFF)],
     ErrorCode.FLOW_CONTROL),
]


@pytest.mark.parametrize(("frames", "code"), [case[1:] for case in AGENT_ERRORS],
                         ids=[case[0] for case in AGENT_ERRORS])
def test_agent_refuses(frames: list[bytes], code: ErrorCode) -> None:
    agent = Connection(Role.AGENT)
    agent.data_to_send()
    seen: list[ev.Event] = []
    for piece in frames:
        seen += agent.receive_data(piece)
    assert seen[-1] == ev.ProtocolError(code, seen[-1].message)  # type: ignore[union-attr]
    assert agent.state is ConnectionState.CLOSED and agent.streams == {}
    assert goaway_code(agent.data_to_send()) == code
    assert agent.receive_data(data(1, b"more")) == []  # closed: input is ignored
    with pytest.raises(LocalProtocolError):
        agent.ping(b"12345678")


def test_data_beyond_window_is_caught_at_the_exact_byte() -> None:
    agent = fresh_agent()
    agent.receive_data(open_frame(1))
    size = Connection.INITIAL_WINDOW
    chunks = [data(1, b"x" * 16384) for _ in range(size // 16384)]
    seen = [event for chunk in chunks for event in agent.receive_data(chunk)]
    assert all(isinstance(event, ev.DataReceived) for event in seen)
    assert agent.streams[1].recv_window == 0
    assert agent.receive_data(data(1, b"y")) == [
        ev.ProtocolError(ErrorCode.FLOW_CONTROL, "1 bytes over a window of 0")]


def test_stream_limit() -> None:
    agent = fresh_agent(TwoStreams)
    assert len(agent.receive_data(open_frame(1) + open_frame(2))) == 2
    seen = agent.receive_data(open_frame(3))
    assert seen == [ev.ProtocolError(ErrorCode.STREAM_LIMIT, "too many streams")]


def test_gateway_refuses_streams_opened_by_the_agent() -> None:
    gateway = Connection(Role.GATEWAY)
    gateway.data_to_send()
    gateway.receive_data(hello(role=Role.AGENT))
    seen = gateway.receive_data(open_frame(1))
    assert seen == [ev.ProtocolError(ErrorCode.PROTOCOL_ERROR, "an agent may not open streams")]
    assert goaway_code(gateway.data_to_send()) == ErrorCode.PROTOCOL_ERROR


def test_gateway_refuses_data_on_ids_it_never_opened() -> None:
    gateway, agent = pair()
    gateway.open_stream(StreamKind.TCP, "db.internal:5432")
    pump(gateway, agent)
    seen = gateway.receive_data(data(2, b"x"))
    assert seen == [ev.ProtocolError(ErrorCode.PROTOCOL_ERROR, "stream 2 was never opened")]


# -- our own mistakes raise LocalProtocolError ---------------------------------------------

def test_local_errors() -> None:
    gateway = Connection(Role.GATEWAY)
    with pytest.raises(LocalProtocolError, match="awaiting-hello"):
        gateway.open_stream(StreamKind.TCP, "a:1")
    agent = Connection(Role.AGENT)
    pump(gateway, agent)
    with pytest.raises(LocalProtocolError, match="only the gateway"):
        agent.open_stream(StreamKind.TCP, "a:1")
    with pytest.raises(LocalProtocolError, match="invalid destination"):
        gateway.open_stream(StreamKind.TCP, "a:1/path")
    sid = gateway.open_stream(StreamKind.HTTP, "a:1")
    with pytest.raises(LocalProtocolError, match="exceed the peer's window"):
        gateway.send_data(sid, b"x" * (Connection.INITIAL_WINDOW + 1))
    with pytest.raises(LocalProtocolError, match="not open"):
        gateway.send_data(99, b"x")
    with pytest.raises(LocalProtocolError, match="unknown stream"):
        gateway.reset_stream(99)
    with pytest.raises(LocalProtocolError, match="exactly 8"):
        gateway.ping(b"short")
    gateway.close_stream(sid)
    with pytest.raises(LocalProtocolError, match="closed for sending"):
        gateway.send_data(sid, b"x")
    pump(gateway, agent)
    agent.send_data(sid, b"abc")
    pump(gateway, agent)
    with pytest.raises(LocalProtocolError, match="cannot acknowledge 4"):
        gateway.acknowledge(sid, 4)
    with pytest.raises(LocalProtocolError, match="cannot acknowledge 0"):
        gateway.acknowledge(sid, 0)
    gateway.close()
    with pytest.raises(LocalProtocolError, match="closed"):
        gateway.open_stream(StreamKind.TCP, "a:1")


def test_open_respects_the_agents_stream_limit() -> None:
    gateway, _agent = pair(agent_cls=TwoStreams)
    gateway.open_stream(StreamKind.TCP, "a:1")
    gateway.open_stream(StreamKind.TCP, "a:2")
    with pytest.raises(LocalProtocolError, match="stream limit"):
        gateway.open_stream(StreamKind.TCP, "a:3")


# -- the happy paths ------------------------------------------------------------------------

@pytest.mark.parametrize(("gateway_range", "agent_range", "agreed"), [
    ((1, 1), (1, 1), 1), ((1, 3), (1, 2), 2), ((2, 3), (1, 2), 2), ((1, 5), (3, 9), 5),
    ((2, 2), (1, 1), None), ((1, 1), (2, 4), None),
])
def test_version_negotiation(gateway_range: tuple[int, int], agent_range: tuple[int, int],
                             agreed: int | None) -> None:
    def ranged(bounds: tuple[int, int]) -> type[Connection]:
        return type("Ranged", (Connection,), {"MIN_VERSION": bounds[0],
                                              "MAX_VERSION": bounds[1]})
    gateway, agent = ranged(gateway_range)(Role.GATEWAY), ranged(agent_range)(Role.AGENT)
    seen_gateway, seen_agent = pump(gateway, agent)
    for seen in (seen_gateway, seen_agent):
        if agreed is None:
            assert isinstance(seen[0], ev.ProtocolError)
            assert seen[0].code is ErrorCode.VERSION_MISMATCH
        else:
            assert isinstance(seen[0], ev.VersionAgreed) and seen[0].version == agreed
    assert gateway.version == agent.version == agreed


def test_stream_lifecycle_with_half_close() -> None:
    gateway, agent = pair()
    sid = gateway.open_stream(StreamKind.TCP, "[fd00::10]:3389")
    gateway.send_data(sid, b"hello", end_stream=True)
    _, seen = pump(gateway, agent)
    assert seen == [ev.StreamOpened(sid, StreamKind.TCP, "[fd00::10]:3389"),
                    ev.DataReceived(sid, b"hello"), ev.StreamClosed(sid)]
    assert gateway.streams[sid].state is StreamState.LOCAL_CLOSED
    assert agent.streams[sid].state is StreamState.REMOTE_CLOSED
    agent.send_data(sid, b"world")  # the other direction still flows
    seen, _ = pump(gateway, agent)
    assert seen == [ev.DataReceived(sid, b"world")]
    agent.close_stream(sid)
    assert sid not in agent.streams
    seen, _ = pump(gateway, agent)
    assert seen == [ev.StreamClosed(sid)] and gateway.streams == {}


def test_flow_control_accounting() -> None:
    gateway, agent = pair()
    sid = gateway.open_stream(StreamKind.TCP, "a:1")
    assert gateway.send_window(sid) == Connection.INITIAL_WINDOW
    gateway.send_data(sid, b"x" * Connection.INITIAL_WINDOW)
    assert gateway.send_window(sid) == 0
    _, seen = pump(gateway, agent)
    # Split at the agent's announced max frame payload.
    frames = Connection.INITIAL_WINDOW // Connection.MAX_FRAME_PAYLOAD
    assert [type(event) for event in seen] == [ev.StreamOpened] + [ev.DataReceived] * frames
    assert agent.streams[sid].recv_window == 0
    assert agent.streams[sid].unacknowledged == Connection.INITIAL_WINDOW
    agent.acknowledge(sid, 1000)
    agent.acknowledge(sid, 24)
    seen, _ = pump(gateway, agent)
    assert seen == [ev.WindowUpdated(sid, 1000), ev.WindowUpdated(sid, 24)]
    assert gateway.send_window(sid) == 1024
    assert agent.streams[sid].recv_window == 1024
    assert agent.streams[sid].unacknowledged == Connection.INITIAL_WINDOW - 1024


def test_data_is_split_at_the_peers_frame_size() -> None:
    agent = fresh_agent()  # the gateway hello announced 16 KiB frames and a 64 KiB window
    agent.receive_data(open_frame(1))
    agent.send_data(1, bytes(range(256)) * 200, end_stream=True)
    sent = agent.data_to_send()
    sizes = []
    position = 0
    while position < len(sent):
        length, _kind, flags, _ = HEADER.unpack_from(sent, position)
        sizes.append((length, flags))
        position += HEADER_SIZE + length
    assert sizes == [(16384, 0), (16384, 0), (16384, 0), (2048, 1)]


def test_reset_both_ways_and_frames_in_flight_are_dropped() -> None:
    gateway, agent = pair()
    sid = gateway.open_stream(StreamKind.TCP, "a:1")
    pump(gateway, agent)
    agent.send_data(sid, b"in flight")
    gateway.reset_stream(sid, ErrorCode.CANCEL)
    gateway.reset_stream(sid)  # already gone: a no-op, not an error
    assert gateway.streams == {}
    seen_gateway, seen_agent = pump(gateway, agent)
    assert seen_agent == [ev.StreamReset(sid, ErrorCode.CANCEL)]
    assert seen_gateway == []  # data for a stream we reset: ignored, not a protocol error
    assert gateway.state is agent.state is ConnectionState.OPEN
    sid2 = gateway.open_stream(StreamKind.TCP, "a:1")
    pump(gateway, agent)
    agent.reset_stream(sid2, ErrorCode.REFUSED)
    seen_gateway, _ = pump(gateway, agent)
    assert seen_gateway == [ev.StreamReset(sid2, ErrorCode.REFUSED)]
    assert agent.receive_data(reset(1, 12345)) == []  # stale
    gateway.receive_data(reset(sid2, 0))


def test_unknown_reset_codes_are_kept() -> None:
    agent = fresh_agent()
    agent.receive_data(open_frame(1))
    assert agent.receive_data(reset(1, 4000)) == [ev.StreamReset(1, 4000)]


def test_late_window_after_finishing_is_ignored() -> None:
    agent = fresh_agent()
    agent.receive_data(open_frame(1))
    agent.close_stream(1)
    assert agent.receive_data(window(1, 100)) == []
    assert agent.state is ConnectionState.OPEN


def test_acknowledge_after_the_peer_finished_sends_no_window() -> None:
    agent = fresh_agent()
    agent.receive_data(open_frame(1) + data(1, b"abc", fin=True))
    agent.acknowledge(1, 3)
    assert agent.data_to_send() == b""


def test_ping_pong_and_goaway() -> None:
    gateway, agent = pair()
    gateway.ping(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    seen_gateway, seen_agent = pump(gateway, agent)
    assert seen_agent == [ev.PingReceived(b"\x00\x01\x02\x03\x04\x05\x06\x07")]
    assert seen_gateway == [ev.PongReceived(b"\x00\x01\x02\x03\x04\x05\x06\x07")]
    gateway.open_stream(StreamKind.TCP, "a:1")
    gateway.close(ErrorCode.NO_ERROR, "保守のため停止 / maintenance")
    gateway.close()  # twice is fine
    _, seen_agent = pump(gateway, agent)
    assert seen_agent[-1] == ev.GoAway(ErrorCode.NO_ERROR, "保守のため停止 / maintenance")
    assert agent.state is ConnectionState.CLOSED and agent.streams == {}


def test_byte_by_byte_delivery_gives_the_same_events() -> None:
    stream = (hello() + open_frame(1) + data(1, b"abc") + window(1, 5)
              + frame(FrameType.PING, 0, 0, b"pingpong") + data(1, b"", fin=True))
    whole = fresh_agent_from(stream)
    agent = Connection(Role.AGENT)
    agent.data_to_send()
    pieces = [event for i in range(len(stream)) for event in agent.receive_data(stream[i:i + 1])]
    assert pieces == whole


def fresh_agent_from(stream: bytes) -> list[ev.Event]:
    agent = Connection(Role.AGENT)
    agent.data_to_send()
    return agent.receive_data(stream)


def test_transitions_table_is_complete_for_half_close() -> None:
    assert set(TRANSITIONS.values()) == {StreamState.LOCAL_CLOSED, StreamState.REMOTE_CLOSED,
                                         StreamState.CLOSED}


@pytest.mark.parametrize(("destination", "ok"), [
    ("intranet.city.local:443", True), ("10.0.0.5:22", True), ("[fd00::1]:5900", True),
    ("a:65535", True), ("a:65536", False), ("a:08", False), (":80", False), ("a:", False),
    ("http://a:80", False), ("a:80 ", False), ("-a:80", False), ("a" * 300 + ":1", False),
])
def test_destinations(destination: str, ok: bool) -> None:
    assert valid_destination(destination, 255) is ok


# -- window growth (auto-tuning) ------------------------------------------------------------


class SmallBudget(Connection):
    INITIAL_WINDOW = 4096
    MAX_STREAM_WINDOW = 16384
    WINDOW_BUDGET = 20480


def fill(gateway: Connection, agent: Connection, sid: int) -> None:
    """The gateway sends a whole window; the agent receives it all."""
    gateway.send_data(sid, b"x" * gateway.send_window(sid))
    pump(gateway, agent)


def test_a_window_grows_by_doubling_up_to_its_cap() -> None:
    gateway, agent = pair(agent_cls=SmallBudget)
    sid = gateway.open_stream(StreamKind.TCP, "a:1")
    pump(gateway, agent)
    windows = []
    for _ in range(4):
        fill(gateway, agent, sid)
        agent.acknowledge(sid, agent.streams[sid].unacknowledged, grow=True)
        pump(gateway, agent)
        windows.append((agent.stream_window(sid), gateway.send_window(sid)))
    # The sender sees every grant as a plain increment: 4 KiB → 8 → 16, then the cap.
    assert windows == [(8192, 8192), (16384, 16384), (16384, 16384), (16384, 16384)]
    assert agent.window_granted == 16384 - 4096


def test_the_grown_window_is_still_enforced_to_the_byte() -> None:
    gateway, agent = pair(agent_cls=SmallBudget)
    sid = gateway.open_stream(StreamKind.TCP, "a:1")
    pump(gateway, agent)
    fill(gateway, agent, sid)
    agent.acknowledge(sid, 4096, grow=True)
    pump(gateway, agent)
    assert agent.streams[sid].recv_window == 8192
    seen = agent.receive_data(data(sid, b"y" * 8193))
    assert seen == [ev.ProtocolError(ErrorCode.FLOW_CONTROL, "8193 bytes over a window of 8192")]


def test_growth_is_drawn_from_one_budget_and_given_back_when_streams_end() -> None:
    gateway, agent = pair(agent_cls=SmallBudget)
    sids = [gateway.open_stream(StreamKind.TCP, f"a:{n}") for n in (1, 2)]
    pump(gateway, agent)
    for _ in range(3):
        for sid in sids:
            fill(gateway, agent, sid)
            agent.acknowledge(sid, agent.streams[sid].unacknowledged, grow=True)
            pump(gateway, agent)
    # 16 KiB for the first stream (12 KiB of growth), 8 KiB left in the budget for the other.
    assert [agent.stream_window(sid) for sid in sids] == [16384, 12288]
    assert agent.window_granted == SmallBudget.WINDOW_BUDGET
    gateway.reset_stream(sids[0])
    pump(gateway, agent)
    assert agent.window_granted == 12288 - 4096
    third = gateway.open_stream(StreamKind.TCP, "a:3")
    pump(gateway, agent)
    fill(gateway, agent, third)
    assert agent.acknowledge(third, 4096, grow=True) == 4096  # the freed budget serves it
    agent.close_stream(sids[1])
    gateway.close_stream(sids[1])
    pump(gateway, agent)
    assert sids[1] not in agent.streams
    assert agent.window_granted == 4096


def test_shrinking_withholds_acknowledgements_down_to_the_initial_window() -> None:
    gateway, agent = pair(agent_cls=SmallBudget)
    sid = gateway.open_stream(StreamKind.TCP, "a:1")
    pump(gateway, agent)
    for _ in range(2):
        fill(gateway, agent, sid)
        agent.acknowledge(sid, agent.streams[sid].unacknowledged, grow=True)
        pump(gateway, agent)
    fill(gateway, agent, sid)  # 16 KiB window, all of it received, the reader is behind
    assert agent.acknowledge(sid, 8192, shrink=True) == -8192  # nothing sent back
    assert agent.data_to_send() == b""
    assert agent.acknowledge(sid, 8192, shrink=True) == -4096
    pump(gateway, agent)
    assert agent.stream_window(sid) == 4096 == gateway.send_window(sid)
    assert agent.window_granted == 0
    fill(gateway, agent, sid)
    assert agent.acknowledge(sid, 4096, shrink=True) == 0  # never below the initial window
    pump(gateway, agent)
    assert gateway.send_window(sid) == 4096


def test_large_frames_split_over_reads_arrive_whole() -> None:
    # The decoder cuts payloads straight out of what was read when nothing is pending, and
    # keeps only the partial frame: the same events for any split.
    gateway, agent = pair()
    sid = gateway.open_stream(StreamKind.TCP, "a:1")
    pump(gateway, agent)
    payload = bytes(range(256)) * 1024
    gateway.send_data(sid, payload)
    wire = gateway.data_to_send()
    for cut in (1, HEADER_SIZE, HEADER_SIZE + 1, 100_000, len(wire) - 1):
        receiver = Connection(Role.AGENT)
        receiver.receive_data(Connection(Role.GATEWAY).data_to_send())
        receiver.receive_data(open_frame(sid, "a:1"))
        events = receiver.receive_data(memoryview(wire)[:cut])
        events += receiver.receive_data(bytearray(wire[cut:]))
        assert b"".join(e.data for e in events if isinstance(e, ev.DataReceived)) == payload
        assert not receiver._inbound
