"""The asyncio shell: two channels over a real loopback TCP connection on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sekisho.connector import events as ev
from sekisho.connector.channel import Channel, ChannelClosed, StreamResetError, TunnelStream
from sekisho.connector.frames import HEADER_SIZE, ErrorCode, FrameType, Role, StreamKind, frame
from sekisho.connector.protocol import Connection

from .helpers import hello


def run(coroutine: Awaitable[None], timeout: float = 60) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coroutine, timeout)
    asyncio.run(bounded())


@contextlib.asynccontextmanager
async def tunnel(gateway_connection: Connection | None = None, **options: Any
                 ) -> AsyncIterator[tuple[Channel, Channel]]:
    """A gateway channel (the listening side) and an agent channel that dialled it."""
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
        asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result((reader, writer))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    agent_reader, agent_writer = await asyncio.open_connection("127.0.0.1", port)
    gateway_reader, gateway_writer = await accepted
    gateway = Channel(gateway_reader, gateway_writer,
                      gateway_connection or Connection(Role.GATEWAY), **options)
    agent = Channel(agent_reader, agent_writer, Connection(Role.AGENT), **options)
    await asyncio.gather(gateway.start(), agent.start())
    try:
        yield gateway, agent
    finally:
        await gateway.close()
        await agent.close()
        server.close()
        await server.wait_closed()


async def read_all(stream: TunnelStream) -> bytes:
    parts = []
    while chunk := await stream.read():
        parts.append(chunk)
    return b"".join(parts)


async def echo_server(agent: Channel) -> None:
    """The agent's side: echo every stream back, then half-close it."""
    async def echo(stream: TunnelStream) -> None:
        while chunk := await stream.read():
            await stream.write(chunk)
        await stream.close_write()

    tasks = set()
    with contextlib.suppress(ChannelClosed):
        while True:
            stream = await agent.accept()
            task = asyncio.create_task(echo(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


def test_many_concurrent_streams_keep_their_bytes_apart() -> None:
    async def scenario() -> None:
        async with tunnel() as (gateway, agent):
            server = asyncio.create_task(echo_server(agent))

            async def one(index: int) -> None:
                payload = os.urandom(20_000 + index * 97)
                stream = await gateway.open_stream(StreamKind.TCP, f"app{index}.internal:80")
                writer = asyncio.create_task(stream.write(payload))
                await writer
                await stream.close_write()
                echoed = await read_all(stream)
                assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()

            await asyncio.gather(*(one(index) for index in range(200)))
            assert gateway._streams == {} and agent._streams == {}  # all finished and forgotten
            assert gateway.connection.streams == {} and agent.connection.streams == {}
            server.cancel()
    run(scenario())


def test_large_transfer_integrity_both_ways() -> None:
    async def scenario() -> None:
        async with tunnel() as (gateway, agent):
            server = asyncio.create_task(echo_server(agent))
            payload = os.urandom(1 << 20) * 24  # 24 MiB
            stream = await gateway.open_stream(StreamKind.TCP, "files.internal:445")

            async def send() -> None:
                await stream.write(payload)
                await stream.close_write()

            sender = asyncio.create_task(send())
            echoed = await read_all(stream)
            await sender
            assert len(echoed) == len(payload)
            assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(payload).hexdigest()
            server.cancel()
    run(scenario())


def test_a_slow_reader_bounds_what_the_sender_buffers() -> None:
    window = Connection.INITIAL_WINDOW
    piece = 64 * 1024

    async def scenario() -> None:
        async with tunnel() as (gateway, agent):
            stream = await gateway.open_stream(StreamKind.TCP, "slow.internal:80")
            remote = await agent.accept()
            written = 0

            async def fast_writer() -> None:
                nonlocal written
                block = b"z" * piece
                while True:
                    await stream.write(block)
                    written += piece

            writer = asyncio.create_task(fast_writer())
            consumed = 0
            peak_sender = peak_receiver = peak_gap = 0
            for _ in range(60):  # 16 KiB every 10 ms: far slower than loopback
                await asyncio.sleep(0.01)
                consumed += len(await remote.read(16 * 1024))
                peak_sender = max(peak_sender, gateway.buffered_bytes)
                peak_receiver = max(peak_receiver, agent.buffered_bytes, remote.buffered)
                peak_gap = max(peak_gap, written - consumed)
            writer.cancel()
            # The shell on the sending side holds at most one window (plus frame headers);
            # the receiving side at most the window it announced; and what the application
            # managed to write is never more than one window (and one write) ahead of what
            # the slow reader consumed, the rest waits in the writer's own buffer.
            assert peak_sender <= window + 4 * HEADER_SIZE
            assert peak_receiver <= window
            assert peak_gap <= window + piece
            assert consumed == 60 * 16 * 1024
            # A reader that is behind never earns a larger window (auto-tuning).
            assert agent.connection.stream_window(stream.stream_id) == window
            assert agent.connection.window_granted == 0
    run(scenario())


def test_reset_reaches_the_other_side_with_its_code() -> None:
    async def scenario() -> None:
        async with tunnel() as (gateway, agent):
            stream = await gateway.open_stream(StreamKind.TCP, "forbidden.internal:23")
            remote = await agent.accept()
            assert (remote.kind, remote.destination) == (StreamKind.TCP, "forbidden.internal:23")
            remote.reset(ErrorCode.REFUSED)  # e.g. not on the agent's allow-list
            with pytest.raises(StreamResetError) as caught:
                await stream.read()
            assert caught.value.reason is ErrorCode.REFUSED
            with pytest.raises(StreamResetError):
                await stream.write(b"late")
            with pytest.raises(StreamResetError):
                await remote.read()
            assert gateway._streams == {} and agent._streams == {}
    run(scenario())


def test_pings_keep_a_live_peer_and_measure_the_round_trip() -> None:
    async def scenario() -> None:
        async with tunnel(ping_interval=0.05, dead_after=0.3) as (gateway, agent):
            await asyncio.sleep(0.8)  # idle, but answering pings: stays up
            assert gateway.closed is None and agent.closed is None
            assert gateway.rtt is not None and 0 <= gateway.rtt < 0.3
    run(scenario())


async def raw_peer(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                     Awaitable[None]],
                   **options: Any) -> tuple[Channel, asyncio.Task[None]]:
    """A gateway channel whose 'agent' is a raw socket driven by `handler`."""
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
        asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result((reader, writer))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    peer = asyncio.create_task(handler(reader, writer))
    gateway_reader, gateway_writer = await accepted
    server.close()
    return Channel(gateway_reader, gateway_writer, Connection(Role.GATEWAY), **options), peer


def test_a_silent_peer_is_dropped_after_the_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(hello(role=Role.AGENT))  # a valid hello, then nothing, pings unanswered
        await asyncio.sleep(30)

    async def scenario() -> None:
        gateway, peer = await raw_peer(silent, ping_interval=0.05, dead_after=0.3)
        await gateway.start()
        stream = await gateway.open_stream(StreamKind.TCP, "rdp.internal:3389")
        started = time.monotonic()
        with pytest.raises(ChannelClosed) as caught:
            await stream.read()
        elapsed = time.monotonic() - started
        assert caught.value.reason is ErrorCode.TIMEOUT
        assert 0.2 <= elapsed < 1.0
        with pytest.raises(ChannelClosed):
            await gateway.open_stream(StreamKind.TCP, "rdp.internal:3389")
        await gateway.wait_closed()
        peer.cancel()
    run(scenario())


def test_a_peer_breaking_the_protocol_closes_the_channel_with_goaway() -> None:
    received = bytearray()

    async def rogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(hello(role=Role.AGENT))
        # The agent's end tries to open a stream into the gateway's network.
        writer.write(frame(FrameType.OPEN, 0, 1, b"\x01admin.gateway:22"))
        while chunk := await reader.read(65536):
            received.extend(chunk)

    async def scenario() -> None:
        gateway, peer = await raw_peer(rogue)
        with contextlib.suppress(ChannelClosed):
            await gateway.start()
        await gateway.wait_closed()
        assert gateway.closed is not None
        assert gateway.closed.reason is ErrorCode.PROTOCOL_ERROR
        await asyncio.wait_for(peer, 5)
        agent = Connection(Role.AGENT)
        seen = agent.receive_data(bytes(received))
        assert isinstance(seen[-1], ev.GoAway) and seen[-1].code is ErrorCode.PROTOCOL_ERROR
    run(scenario())


def test_version_mismatch_fails_start() -> None:
    class Future(Connection):
        MIN_VERSION = 2
        MAX_VERSION = 3

    async def scenario() -> None:
        with pytest.raises(ChannelClosed) as caught:
            async with tunnel(gateway_connection=Future(Role.GATEWAY)):
                pass
        assert caught.value.reason is ErrorCode.VERSION_MISMATCH
    run(scenario())


def test_a_peer_flooding_pings_without_reading_is_cut_off() -> None:
    async def flooder(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Small window and one stream: the gateway's write-buffer cap is then ~1.3 MiB.
        writer.write(hello(role=Role.AGENT, window=1024, streams=1))
        ping = frame(FrameType.PING, 0, 0, b"flooding") * 4096
        with contextlib.suppress(ConnectionError):
            for _ in range(400):  # never reads the pongs
                writer.write(ping)
                await writer.drain()

    async def scenario() -> None:
        gateway, peer = await raw_peer(flooder)
        sock = gateway._writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        with contextlib.suppress(ChannelClosed):
            await gateway.start()
        await asyncio.wait_for(gateway.wait_closed(), 20)
        assert gateway.closed is not None and gateway.closed.reason is ErrorCode.FLOOD
        peer.cancel()
    run(scenario())


def test_a_reader_that_keeps_up_grows_its_window_and_gives_it_back() -> None:
    size = 16 * 1024 * 1024

    async def scenario() -> None:
        async with tunnel() as (gateway, agent):
            stream = await gateway.open_stream(StreamKind.TCP, "bulk.internal:80")
            remote = await agent.accept()
            grown = 0

            async def send() -> None:
                block = b"b" * (256 * 1024)
                for _ in range(size // len(block)):
                    await stream.write(block)
                await stream.close_write()

            sender = asyncio.create_task(send())
            received = 0
            while chunk := await remote.read():
                received += len(chunk)
                grown = max(grown, agent.connection.stream_window(remote.stream_id))
                assert remote.buffered <= agent.connection.MAX_STREAM_WINDOW
            await sender
            assert received == size
            # Drained as fast as it came: the window doubled up to the per-stream cap, and
            # the sender was granted it (its send window grew past the initial one).
            assert grown == Connection.MAX_STREAM_WINDOW
            await remote.close_write()
            await asyncio.sleep(0.05)
            assert agent.connection.window_granted == 0  # back to the budget at the end
    run(scenario())
