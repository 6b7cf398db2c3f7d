"""The worker ↔ broker relay over a real Unix socket and a real tunnel on 127.0.0.1: the
header handshake, refusals, bytes both ways, and backpressure from a slow worker all the way
to the agent (the master never buffers more than about a window per stream)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from pathlib import Path

import pytest

from sekisho.connector.channel import Channel, ChannelClosed, StreamResetError, TunnelStream
from sekisho.connector.frames import ErrorCode, StreamKind
from sekisho.connector.protocol import Connection
from sekisho.connector.relay import (
    RelayRefused,
    RelayServer,
    connect_local,
    dial,
    local_server,
)

from .test_channel import run, tunnel

BULK = 24 * 1024 * 1024


async def _agent(agent_channel: Channel, payload: bytes, sent: list[int]) -> None:
    """The agent's side: answer each stream with `payload` (counting what it managed to
    write into `sent`), then half-close."""

    async def serve(stream: TunnelStream) -> None:
        request = await stream.read()
        assert request.startswith(b"GET")
        view = memoryview(payload)
        for start in range(0, len(payload), 64 * 1024):
            await stream.write(view[start:start + 64 * 1024])
            sent[0] += len(view[start:start + 64 * 1024])
        await stream.close_write()

    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            task = asyncio.create_task(serve(await agent_channel.accept()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except ChannelClosed:
        return


def test_a_slow_worker_slows_the_agent_instead_of_growing_the_master(tmp_path: Path) -> None:
    payload = os.urandom(BULK)
    # While the Unix socket's buffers still soak up data the relay keeps up, so the stream's
    # window may grow (auto-tuning), never beyond the per-stream cap.
    window = Connection.MAX_STREAM_WINDOW

    async def scenario() -> None:
        async with tunnel() as (gateway, agent):
            streams: list[TunnelStream] = []

            async def opener(kind: StreamKind, site: str, destination: str) -> TunnelStream:
                assert (kind, site, destination) == (StreamKind.HTTP, "dc1", "10.0.0.5:80")
                stream = await gateway.open_stream(kind, destination)
                streams.append(stream)
                return stream

            relay = RelayServer(str(tmp_path / "c.sock"), opener)
            await relay.start()
            assert os.stat(relay.path).st_mode & 0o777 == 0o600
            sent = [0]
            server = asyncio.create_task(_agent(agent, payload, sent))
            sock = await dial(relay.path, "http", "dc1", "10.0.0.5:80")
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\n\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            peak = 0
            for _ in range(40):  # the worker reads nothing for 0.4 s
                await asyncio.sleep(0.01)
                peak = max(peak, gateway.buffered_bytes)
            # The agent is held back: one window in the tunnel, plus what the Unix socket's
            # buffers hold. Without the relay's drain it would have sent everything.
            stalled = sent[0]
            assert stalled <= window + 1024 * 1024, stalled
            digest = hashlib.sha256()
            received = 0
            while True:
                chunk = await loop.sock_recv(sock, 256 * 1024)
                if not chunk:
                    break
                digest.update(chunk)
                received += len(chunk)
                peak = max(peak, gateway.buffered_bytes)
            sock.close()
            assert received == BULK and digest.digest() == hashlib.sha256(payload).digest()
            # What the broker's side of the tunnel held never passed one (grown) window
            # (+ control slack): the rest waited at the agent, 24 MiB never sat in the master.
            assert peak <= window + 64 * 1024, peak
            server.cancel()
            await relay.close()
    run(scenario())


def test_refusals_and_bad_headers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async def opener(kind: StreamKind, site: str, destination: str) -> TunnelStream:
            raise RelayRefused("no-connector", f"no connector of site {site}")

        relay = RelayServer(str(tmp_path / "c.sock"), opener)
        await relay.start()
        with pytest.raises(RelayRefused) as refused:
            await dial(relay.path, "http", "dc1", "10.0.0.5:80")
        assert refused.value.code == "no-connector" and "dc1" in refused.value.message
        for bad in ("bad site", "../x"):
            with pytest.raises(RelayRefused) as refused:
                await dial(relay.path, "http", bad, "10.0.0.5:80")
            assert refused.value.code == "bad-header"
        reader, writer = await asyncio.open_unix_connection(relay.path)
        writer.write(b"SKSH1 http dc1 " + b"a" * 2000 + b"\n")  # over the header limit
        assert (await reader.read()).startswith(b"ER ")
        writer.close()
        await relay.close()
    run(scenario())


# -- callers in the broker's own process: no socket, same backpressure -----------------------


class Collector(asyncio.Protocol):
    """A protocol as the gateway's TCP splice drives one: counts, pauses, sees the end."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.paused_writing = 0
        self.resumed_writing = 0
        self.lost: asyncio.Future[Exception | None] = \
            asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def pause_writing(self) -> None:
        self.paused_writing += 1

    def resume_writing(self) -> None:
        self.resumed_writing += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def _local(tmp_path: Path, gateway: Channel) -> RelayServer:
    async def opener(kind: StreamKind, site: str, destination: str) -> TunnelStream:
        if destination == "10.0.0.9:1":
            raise RelayRefused("no-connector", "none")
        return await gateway.open_stream(kind, destination)

    relay = RelayServer(str(tmp_path / "l.sock"), opener)
    await relay.start()
    assert local_server(relay.path) is relay
    return relay


def test_in_process_bytes_both_ways_with_a_slow_protocol_and_a_slow_agent(
        tmp_path: Path) -> None:
    up, down = os.urandom(6 * 1024 * 1024), os.urandom(12 * 1024 * 1024)

    async def scenario() -> None:
        async with tunnel() as (gateway, agent):
            relay = await _local(tmp_path, gateway)
            transport, protocol = await connect_local(relay, "tcp", "dc1", "10.0.0.5:22",
                                                      Collector)
            assert isinstance(protocol, Collector)
            remote = await agent.accept()
            assert (remote.kind, remote.destination) == (StreamKind.TCP, "10.0.0.5:22")
            # The protocol stops reading: the agent's writer stalls at about one window
            # instead of the gateway buffering 12 MiB.
            transport.pause_reading()
            sent = 0

            async def agent_sends() -> None:
                nonlocal sent
                for start in range(0, len(down), 64 * 1024):
                    await remote.write(down[start:start + 64 * 1024])
                    sent += 64 * 1024
                await remote.close_write()

            sender = asyncio.create_task(agent_sends())
            # The agent does not read yet: a burst from the protocol is queued and the
            # protocol is told to stop writing (as a full socket would).
            transport.write(up)
            await asyncio.sleep(0.3)
            assert protocol.paused_writing == 1 and protocol.resumed_writing == 0
            assert transport.get_write_buffer_size() > 0
            assert sent <= Connection.MAX_STREAM_WINDOW + 64 * 1024
            assert gateway.buffered_bytes <= Connection.MAX_STREAM_WINDOW + 64 * 1024
            assert not protocol.received
            transport.resume_reading()
            got = bytearray()
            while len(got) < len(up):
                got += await remote.read()
            assert bytes(got) == up and protocol.resumed_writing == 1
            await sender
            while len(protocol.received) < len(down):
                await asyncio.sleep(0.01)
            assert hashlib.sha256(protocol.received).digest() == hashlib.sha256(down).digest()
            transport.close()  # flushes and half-closes: the agent reads EOF
            assert await remote.read() == b""
            assert await asyncio.wait_for(protocol.lost, 5) is None
            assert gateway._streams == {}
            await relay.close()
            assert local_server(relay.path) is None
    run(scenario())


def test_in_process_refusals_resets_and_abort(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with tunnel() as (gateway, agent):
            relay = await _local(tmp_path, gateway)
            failed: list[tuple[str, int]] = []
            relay.on_failed = lambda stream, site, code: failed.append((site, code))
            with pytest.raises(RelayRefused) as caught:
                await connect_local(relay, "tcp", "dc1", "10.0.0.9:1", Collector)
            assert caught.value.code == "no-connector"
            # The agent refuses the destination: the broker hears of it (to audit it) and
            # the protocol sees the connection lost.
            _, refused = await connect_local(relay, "tcp", "dc1", "10.0.0.5:23", Collector)
            assert isinstance(refused, Collector)
            (await agent.accept()).reset(ErrorCode.REFUSED)
            assert isinstance(await asyncio.wait_for(refused.lost, 5), StreamResetError)
            assert failed == [("dc1", int(ErrorCode.REFUSED))]
            # A cut (the watch revoking access) aborts: the agent's stream is reset at once.
            transport, cut = await connect_local(relay, "tcp", "dc1", "10.0.0.5:22", Collector)
            assert isinstance(cut, Collector)
            remote = await agent.accept()
            transport.write(b"hello")
            assert await remote.read() == b"hello"
            transport.abort()
            with pytest.raises(StreamResetError):
                await asyncio.wait_for(remote.read(), 5)
            assert await asyncio.wait_for(cut.lost, 5) is None
            await relay.close()
    run(scenario())
