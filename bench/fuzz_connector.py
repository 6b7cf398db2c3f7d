"""Fuzz the connector protocol decoder: a million mutated frame streams, no crash allowed.

    python bench/fuzz_connector.py [--inputs 1000000] [--seed 1]

Structure-aware mutation (no extra dependency): the seeds are byte streams recorded from
real conversations between two `Connection`s (hellos, opens, data split at frame limits,
windows, pings, half-closes, resets, goaway); each input applies 1–4 mutations (bit flips,
interesting bytes and u32 fields such as lengths and windows at their limits, insertions,
deletions, duplications, splices across seeds) and is fed to a fresh gateway- or agent-side
decoder in 1–3 chunks. A crash is any exception from `receive_data`, or an inconsistent
state afterwards (windows, stream table, buffer bound). Crashing inputs are written to
bench/results/. `main(argv) -> dict` returns the figures for bench/run.py.
"""

from __future__ import annotations

import argparse
import itertools
import random  # noqa: TID251 — reproducible fuzzing input, nothing secret
import time
import traceback
from pathlib import Path

from sekisho.connector.frames import (
    HEADER_SIZE,
    MAX_WINDOW,
    ErrorCode,
    Role,
    StreamKind,
)
from sekisho.connector.protocol import Connection, ConnectionState, StreamState

INTERESTING_U32 = (0, 1, 2, 8, 20, 255, 256, 1023, 1024, 16384, 65535, 65536,
                   Connection.MAX_FRAME_PAYLOAD, Connection.MAX_FRAME_PAYLOAD + 1,
                   Connection.INITIAL_WINDOW, MAX_WINDOW, MAX_WINDOW + 1, 0xFFFFFFFF)
INTERESTING_BYTES = (0, 1, 2, 3, 4, 5, 6, 7, 0x7F, 0x80, 0xFF)


def conversation(seed: int) -> tuple[bytes, bytes]:
    """Bytes each side sent in one scripted, legal conversation (gateway→agent, agent→gateway)."""
    rng = random.Random(seed)
    gateway, agent = Connection(Role.GATEWAY), Connection(Role.AGENT)
    to_agent, to_gateway = bytearray(), bytearray()

    def exchange() -> None:
        for _ in range(3):
            out_g, out_a = gateway.data_to_send(), agent.data_to_send()
            to_agent.extend(out_g)
            to_gateway.extend(out_a)
            agent.receive_data(out_g)
            gateway.receive_data(out_a)

    exchange()
    for _ in range(rng.randint(1, 6)):
        sid = gateway.open_stream(rng.choice(list(StreamKind)),
                                  rng.choice(["a:1", "db.internal:5432", "[fd00::5]:3389"]))
        exchange()
        gateway.send_data(sid, rng.randbytes(rng.choice([1, 100, 3000])))
        if rng.random() < 0.3:
            gateway.ping(rng.randbytes(8))
        exchange()
        agent.send_data(sid, rng.randbytes(rng.choice([1, 50, 2000])))
        agent.acknowledge(sid, agent.streams[sid].unacknowledged)
        choice = rng.random()
        if choice < 0.4:
            gateway.close_stream(sid)
            exchange()
            agent.close_stream(sid)
        elif choice < 0.7:
            gateway.reset_stream(sid, ErrorCode.CANCEL)
        exchange()
    if rng.random() < 0.3:
        gateway.close(ErrorCode.NO_ERROR, "bye")
        exchange()
    return bytes(to_agent), bytes(to_gateway)


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        size = len(buffer)
        choice = rng.randrange(8)
        if choice == 0 and size:
            buffer[rng.randrange(size)] ^= 1 << rng.randrange(8)
        elif choice == 1 and size:
            buffer[rng.randrange(size)] = rng.choice(INTERESTING_BYTES)
        elif choice == 2 and size >= 4:
            position = rng.randrange(size - 3)
            buffer[position:position + 4] = rng.choice(INTERESTING_U32).to_bytes(4, "big")
        elif choice == 3:
            position = rng.randrange(size + 1)
            buffer[position:position] = rng.randbytes(rng.randint(1, 16))
        elif choice == 4 and size:
            start = rng.randrange(size)
            del buffer[start:start + rng.randint(1, 32)]
        elif choice == 5 and size:
            start = rng.randrange(size)
            end = min(size, start + rng.randint(1, 64))
            buffer[end:end] = buffer[start:end]
        elif choice == 6:
            other = rng.choice(corpus)
            if other:
                start = rng.randrange(len(other))
                position = rng.randrange(size + 1)
                buffer[position:position] = other[start:start + rng.randint(1, 200)]
        else:
            buffer = buffer[:rng.randint(0, size)]
    return bytes(buffer)


def check(connection: Connection) -> None:
    """The same invariants as tests/connector/test_protocol_fuzz.py."""
    assert len(connection._inbound) < HEADER_SIZE + connection.MAX_FRAME_PAYLOAD
    if connection.state is ConnectionState.CLOSED:
        assert connection.streams == {} and not connection._inbound
    assert len(connection.streams) <= max(connection.MAX_STREAMS, connection.peer_max_streams)
    for stream_id, stream in connection.streams.items():
        assert 0 < stream_id <= connection.highest_stream_id
        assert stream.state is not StreamState.CLOSED
        assert 0 <= stream.send_window <= MAX_WINDOW
        assert stream.recv_window >= 0 and stream.unacknowledged >= 0
        assert stream.recv_window + stream.unacknowledged <= connection.INITIAL_WINDOW


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    seeds = [conversation(seed) for seed in range(64)]
    corpus = [side for pair in seeds for side in pair]
    crashes: list[str] = []
    errors = 0
    out = Path(__file__).resolve().parent / "results"
    started = time.perf_counter()
    for index in range(args.inputs):
        to_agent, to_gateway = rng.choice(seeds)
        if rng.random() < 0.5:
            role, base = Role.AGENT, to_agent
        else:
            role, base = Role.GATEWAY, to_gateway
        data = mutate(rng, base, corpus)
        connection = Connection(role)
        connection.data_to_send()
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 2)))
        edges = [0, *cuts, len(data)]
        try:
            for start, end in itertools.pairwise(edges):
                connection.receive_data(data[start:end])
                check(connection)
            connection.data_to_send()
        except Exception:
            if len(crashes) < 10:
                out.mkdir(exist_ok=True)
                path = out / f"fuzz-crash-{args.seed}-{index}.bin"
                path.write_bytes(bytes([role]) + data)
                crashes.append(f"{path.name}: {traceback.format_exc(limit=-2)}")
        errors += connection.state is ConnectionState.CLOSED
    elapsed = time.perf_counter() - started
    result: dict[str, object] = {
        "inputs": args.inputs, "seconds": round(elapsed, 1),
        "inputs_per_second": round(args.inputs / elapsed),
        "ended_in_protocol_error_or_goaway": errors, "crashes": len(crashes),
    }
    print(f"connector decoder fuzz: {args.inputs:,} inputs in {elapsed:.1f} s "
          f"({result['inputs_per_second']:,}/s), {errors:,} refused by the protocol, "
          f"{len(crashes)} crashes")
    for crash in crashes:
        print(crash)
    return result


if __name__ == "__main__":
    figures = main()
    raise SystemExit(1 if figures["crashes"] else 0)
