"""Connector tunnel over loopback: throughput and latency against plain TCP in the same run.

    python bench/bench_connector_channel.py [--size-mib 256] [--streams 200] [--rounds 2000]

A child process plays the far end (the agent, and for the reference a plain TCP server);
this process plays the gateway, so each end has its own core, as in a deployment. Both use
uvloop. Figures:
- one stream: SIZE bytes sent and counted at the far end, vs. one plain TCP connection;
- N concurrent streams over one tunnel (SIZE/N each) vs. N plain TCP connections;
- small-message round trip (64 bytes, echo) p50/p99 vs. plain TCP: the added latency;
- gateway-side memory per idle stream (tracemalloc over 250 open, idle streams).
The child accepts the TCP connection (which way the TCP handshake goes does not change the
figures; the real agent dials out). `main(argv) -> dict` returns the figures for bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import uvloop

from sekisho.connector.channel import Channel, TunnelStream
from sekisho.connector.frames import Role, StreamKind
from sekisho.connector.protocol import Connection
from sekisho.errors import SekishoError

CHUNK = 256 * 1024
LIMIT = 1 << 20  # StreamReader buffer for both contenders


# -- the far end (child process) --------------------------------------------------------------

async def plain_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    mode = await reader.readexactly(1)
    if mode == b"S":  # sink: count until EOF, answer with the count
        total = 0
        while chunk := await reader.read(CHUNK):
            total += len(chunk)
        writer.write(total.to_bytes(8, "big"))
    else:  # echo
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    writer.close()


async def tunnel_stream(stream: TunnelStream) -> None:
    with contextlib.suppress(SekishoError):  # streams reset or the tunnel closed at the end
        await serve_stream(stream)


async def serve_stream(stream: TunnelStream) -> None:
    if stream.destination.startswith("sink"):
        total = 0
        while chunk := await stream.read():
            total += len(chunk)
        await stream.write(total.to_bytes(8, "big"))
    else:
        while chunk := await stream.read():
            await stream.write(chunk)
    await stream.close_write()


async def tunnel_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    channel = Channel(reader, writer, Connection(Role.AGENT))
    await channel.start()
    tasks = set()
    with contextlib.suppress(SekishoError):  # the gateway closed the tunnel: the run is over
        while True:
            stream = await channel.accept()
            task = asyncio.create_task(tunnel_stream(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


async def far_end() -> None:
    plain = await asyncio.start_server(plain_client, "127.0.0.1", 0, limit=LIMIT)
    tunnel = await asyncio.start_server(tunnel_client, "127.0.0.1", 0, limit=LIMIT)
    print(plain.sockets[0].getsockname()[1], tunnel.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# -- the gateway end (this process) -----------------------------------------------------------

async def plain_send(port: int, size: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=LIMIT)
    writer.write(b"S")
    block = b"x" * CHUNK
    sent = 0
    while sent < size:
        writer.write(block[:size - sent])
        sent += min(CHUNK, size - sent)
        await writer.drain()
    writer.write_eof()
    assert int.from_bytes(await reader.readexactly(8), "big") == size
    writer.close()


async def tunnel_send(channel: Channel, size: int) -> None:
    stream = await channel.open_stream(StreamKind.TCP, "sink:9")
    block = b"x" * CHUNK
    sent = 0
    while sent < size:
        await stream.write(block[:size - sent])
        sent += min(CHUNK, size - sent)
    await stream.close_write()
    assert int.from_bytes(await stream.readexactly(8), "big") == size


async def timed(label: str, size: int, coroutines: list[Any]) -> float:
    started = time.perf_counter()
    await asyncio.gather(*coroutines)
    rate = size / (time.perf_counter() - started) / 1e6
    print(f"  {label:<34} {rate:9.0f} MB/s", flush=True)
    return rate


async def round_trips(write: Any, read: Any, rounds: int) -> list[float]:
    message = b"m" * 64
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await write(message)
        got = 0
        while got < len(message):
            got += len(await read(64 - got))
        times.append((time.perf_counter() - started) * 1e6)
    return times


def percentile(values: list[float], fraction: float) -> float:
    return statistics.quantiles(values, n=1000)[int(fraction * 1000) - 1]


async def gateway(plain_port: int, tunnel_port: int, size: int, streams: int,
                  rounds: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", tunnel_port, limit=LIMIT)
    channel = Channel(reader, writer, Connection(Role.GATEWAY))
    await channel.start()
    results: dict[str, Any] = {"size_mib": size >> 20, "streams": streams}
    print(f"bulk transfer of {size >> 20} MiB over loopback:", flush=True)
    plain1 = await timed("plain TCP, 1 connection", size, [plain_send(plain_port, size)])
    tunnel1 = await timed("tunnel, 1 stream", size, [tunnel_send(channel, size)])
    each = size // streams
    plain_n = await timed(f"plain TCP, {streams} connections", each * streams,
                          [plain_send(plain_port, each) for _ in range(streams)])
    tunnel_n = await timed(f"tunnel, {streams} concurrent streams", each * streams,
                           [tunnel_send(channel, each) for _ in range(streams)])
    results.update(plain_1_mbps=round(plain1), tunnel_1_mbps=round(tunnel1),
                   ratio_1=round(tunnel1 / plain1, 2), plain_n_mbps=round(plain_n),
                   tunnel_n_mbps=round(tunnel_n), ratio_n=round(tunnel_n / plain_n, 2))
    print(f"  ratio tunnel/plain: 1 stream {results['ratio_1']}, {streams} streams "
          f"{results['ratio_n']}")

    echo_reader, echo_writer = await asyncio.open_connection("127.0.0.1", plain_port)
    echo_writer.write(b"E")

    async def plain_write(data: bytes) -> None:
        echo_writer.write(data)

    plain_rtt = await round_trips(plain_write, echo_reader.read, rounds)
    echo_writer.close()
    stream = await channel.open_stream(StreamKind.TCP, "echo:7")
    tunnel_rtt = await round_trips(stream.write, stream.read, rounds)
    await stream.close_write()
    for name, values in (("plain", plain_rtt), ("tunnel", tunnel_rtt)):
        results[f"{name}_rtt_p50_us"] = round(percentile(values, 0.5))
        results[f"{name}_rtt_p99_us"] = round(percentile(values, 0.99))
    results["added_p99_us"] = results["tunnel_rtt_p99_us"] - results["plain_rtt_p99_us"]
    print(f"64-byte round trip ({rounds}): plain p50 {results['plain_rtt_p50_us']} µs "
          f"p99 {results['plain_rtt_p99_us']} µs; tunnel p50 {results['tunnel_rtt_p50_us']} "
          f"µs p99 {results['tunnel_rtt_p99_us']} µs; added p99 {results['added_p99_us']} µs")

    idle = 250
    await asyncio.sleep(0.2)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    opened = [await channel.open_stream(StreamKind.TCP, "echo:7") for _ in range(idle)]
    await asyncio.sleep(0.2)
    per_stream = (tracemalloc.get_traced_memory()[0] - before) / idle
    tracemalloc.stop()
    results["gateway_bytes_per_idle_stream"] = round(per_stream)
    print(f"gateway memory per idle stream: {per_stream:.0f} bytes (buffers bounded by the "
          f"{Connection.INITIAL_WINDOW >> 10} KiB window when busy, grown up to "
          f"{Connection.MAX_STREAM_WINDOW >> 20} MiB for a reader that keeps up, within "
          f"{Connection.WINDOW_BUDGET >> 20} MiB per tunnel)")
    for stream in opened:
        stream.reset()
    await channel.close()
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--far-end", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.far_end:
        uvloop.run(far_end())
        return {}
    child = subprocess.Popen([sys.executable, __file__, "--far-end"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        plain_port, tunnel_port = map(int, child.stdout.readline().split())
        return uvloop.run(gateway(plain_port, tunnel_port, args.size_mib << 20,
                                  args.streams, args.rounds))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


if __name__ == "__main__":
    main()
