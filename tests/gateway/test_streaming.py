"""Streaming both ways with back-pressure, and WebSocket pass-through, against real servers."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import time

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.sync.client import connect

from sekisho.config.model import Route
from sekisho.runtime import build_runtime

from .conftest import HOST, STAFF, GatewayUnderTest, echoed, parse_response

SIZE = 300 * 1024 * 1024
RSS_BUDGET = 80 * 1024 * 1024  # far below SIZE: the body never sits in memory


def rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_large_download_streams(gw: GatewayUnderTest) -> None:
    before = peak = rss()
    with gw.connect() as sock:
        sock.sendall(f"GET /download?n={SIZE} HTTP/1.1\r\nHost: {HOST}\r\n"
                     f"Cookie: __Host-sekisho={STAFF}\r\nConnection: close\r\n\r\n".encode())
        received = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
            if received % (16 << 20) < len(chunk):
                peak = max(peak, rss())
                time.sleep(0.01)  # a slow reader: the gateway must stop reading upstream
    print("download", received, "rss growth", peak - before)
    assert received > SIZE  # head + body
    assert peak - before < RSS_BUDGET


@pytest.mark.slow
def test_large_upload_streams(gw: GatewayUnderTest) -> None:
    before = peak = rss()
    digest = hashlib.sha256()
    block = b"u" * (1 << 20)
    with gw.connect() as sock:
        sock.sendall(f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nCookie: __Host-sekisho={STAFF}"
                     f"\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n".encode())
        for i in range(SIZE // len(block)):
            sock.sendall(block)
            digest.update(block)
            if i % 16 == 0:
                peak = max(peak, rss())
        sock.settimeout(30)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status, _, body = parse_response(reply)
    assert status == 200
    assert echoed(body)["body_len"] == SIZE
    assert echoed(body)["body_sha256"] == digest.hexdigest()
    assert peak - before < RSS_BUDGET


def test_websocket_pass_through(gw: GatewayUnderTest) -> None:
    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async def start() -> int:
        server = await serve(echo, "127.0.0.1", 0)
        gw.ws_server = server  # type: ignore[attr-defined]
        return int(next(iter(server.sockets)).getsockname()[1])

    port = gw.harness.call(start())
    config = gw.runtime.config
    route = Route(id="ws", host="ws.localhost", path_prefix="/", to=f"http://127.0.0.1:{port}",
                  policy="staff", websocket=True)
    gw.runtime = build_runtime(dataclasses.replace(config, routes=(*config.routes, route)))
    sock = socket.create_connection(("127.0.0.1", gw.port))
    with connect(f"ws://ws.localhost:{gw.port}/chat", sock=sock,
                 additional_headers={"Cookie": f"__Host-sekisho={STAFF}"}) as client:
        client.send("こんにちは")
        assert client.recv(timeout=5) == "こんにちは"
        client.send(b"\x00" * 200_000)
        assert client.recv(timeout=5) == b"\x00" * 200_000
    # Without a session the upgrade is refused before reaching the upstream.
    sock = socket.create_connection(("127.0.0.1", gw.port))
    with pytest.raises(Exception, match="signin"):
        connect(f"ws://ws.localhost:{gw.port}/chat", sock=sock)

    async def stop() -> None:
        gw.ws_server.close()  # type: ignore[attr-defined]

    gw.harness.call(stop())
