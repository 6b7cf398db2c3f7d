"""Real upstream servers for the gateway tests (loopback, ephemeral ports), and small real
implementations of the gateway's protocols (SessionLookup, AuditSink) — test doubles of
protocols, not mocks of code we ship.

All servers run on one background uvloop thread (`Harness`), so tests are plain functions
that talk to the gateway over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httptools
import uvloop

from sekisho.audit.events import AuditEvent
from sekisho.config.model import ListenAddress
from sekisho.errors import StorageError
from sekisho.gateway.server import Gateway
from sekisho.gateway.watch import LiveConnections
from sekisho.identity.principal import SessionInfo
from sekisho.storage import changes, users
from sekisho.storage.changes import ChangeWatcher

T = TypeVar("T")


class DictSessions:
    """SessionLookup over a dict; `broken = True` makes it fail like a dead database."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionInfo] = {}
        self.broken = False

    def add(self, token: str, username: str, groups: set[str], email: str = "") -> SessionInfo:
        now = datetime.now(UTC)
        info = SessionInfo(
            session_id=hashlib.sha256(token.encode()).hexdigest(), user_id=len(self.sessions) + 1,
            username=username, display_name=username.title(),
            email=email or f"{username}@city.example.jp",
            groups=frozenset(groups), auth_methods=frozenset({"pwd"}), auth_time=now,
            created_at=now, expires_at=now + timedelta(hours=1),
        )
        self.sessions[token] = info
        return info

    async def lookup(self, token: str) -> SessionInfo | None:
        if self.broken:
            raise StorageError("database unreachable")
        return self.sessions.get(token)


class ListAudit:
    """AuditSink keeping events in a list; `healthy = False` simulates a failed writer."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.healthy = True

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)

    async def append(self, event: AuditEvent) -> None:
        self.events.append(event)


class Harness:
    """A background event loop thread on which servers run; `call()` runs a coroutine there."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


# -- an HTTP/1.1 upstream that answers JSON about what it received --------------------------

Route = Callable[["UpstreamRequest", "_UpstreamProtocol"], Awaitable[None]]


class UpstreamRequest:
    def __init__(self) -> None:
        self.method = ""
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.body_len = 0
        self.sha = hashlib.sha256()
        self.keep_body = True
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class _UpstreamProtocol(asyncio.Protocol):
    def __init__(self, server: EchoUpstream) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.current: UpstreamRequest | None = None
        self.queue: asyncio.Queue[UpstreamRequest] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self.run())
        self.drained = asyncio.Event()
        self.drained.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.server.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.task.cancel()
        self.drained.set()

    def pause_writing(self) -> None:
        self.drained.clear()

    def resume_writing(self) -> None:
        self.drained.set()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.current = UpstreamRequest()

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method().decode()
        self.server.requests.append(self.current)
        self.queue.put_nowait(self.current)

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body_len += len(body)
        self.current.sha.update(body)
        if self.current.body_len <= 1 << 20:
            self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.done.set_result(None)

    async def run(self) -> None:
        while True:
            request = await self.queue.get()
            path = request.url.split(b"?")[0].decode()
            handler = self.server.routes.get(path, self.server.echo)
            await handler(request, self)

    async def send(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        assert self.transport is not None
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers)
        self.transport.write(head.encode() + b"\r\n" + body)


class EchoUpstream:
    """Answers every request with JSON: method, target, headers and a digest of the body.

    Extra routes: `/download?n=BYTES` streams n bytes; `/slow` never answers (timeouts);
    `/close` closes without answering.
    """

    def __init__(self) -> None:
        self.requests: list[UpstreamRequest] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.routes: dict[str, Route] = {
            "/download": self.download, "/slow": self.slow, "/close": self.close_now,
        }

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _UpstreamProtocol(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def echo(self, request: UpstreamRequest, proto: _UpstreamProtocol) -> None:
        await request.done
        payload = {
            "method": request.method, "target": request.url.decode("latin-1"),
            "headers": request.headers, "body_len": request.body_len,
            "body_sha256": request.sha.hexdigest(),
            "body": request.body.decode("latin-1") if request.body_len < 4096 else "",
        }
        await proto.send(200, json.dumps(payload).encode(), [("Content-Type", "application/json")])

    async def download(self, request: UpstreamRequest, proto: _UpstreamProtocol) -> None:
        await request.done
        query = request.url.partition(b"?")[2].decode()
        size = int(query.split("=")[1]) if "=" in query else 1024
        assert proto.transport is not None
        proto.transport.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            proto.transport.write(piece)
            sent += len(piece)
            await proto.drained.wait()
            if proto.transport.is_closing():
                return

    async def slow(self, request: UpstreamRequest, proto: _UpstreamProtocol) -> None:
        await asyncio.sleep(3600)

    async def close_now(self, request: UpstreamRequest, proto: _UpstreamProtocol) -> None:
        assert proto.transport is not None
        proto.transport.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


class WatchedStart:
    """A real gateway with continuous evaluation (`LiveConnections`) fed by the real change
    feed, started on `harness`, and user hanako in group staff — the feed caught up with that
    set-up before a test begins. Shared by the WebSocket, TCP and screen-transfer kits."""

    def __init__(self, harness: Harness, engine: Any, sessions: Any, audit: Any, keyring: Any,
                 runtime: Callable[[], Any], **gateway_options: Any) -> None:
        self.harness = harness
        self.live = LiveConnections(runtime, sessions, audit)
        self.gateway = Gateway(runtime, sessions, audit, keyring, {}, watch=self.live,
                               **gateway_options)
        sockets = harness.call(self.gateway.start([ListenAddress("127.0.0.1", 0)], None))
        self.port: int = sockets[0].getsockname()[1]
        self.feed = ChangeWatcher(engine, self.live.changed, self.live.resync)

        async def start_feed() -> asyncio.Future[None]:
            return asyncio.ensure_future(self.feed.run())

        self.feed_task = harness.call(start_feed())
        users.create_group(engine, "staff")
        self.user = users.create_user(engine, "hanako")
        users.add_member(engine, "staff", "hanako")
        newest, deadline = changes.latest_id(engine), time.monotonic() + 5
        while self.feed.last < newest:
            assert time.monotonic() < deadline, "the change feed did not catch up"
            time.sleep(0.01)

    def stop(self) -> None:
        """Feed, live connections, then the gateway (1 s grace), on the harness loop."""
        self.feed.stop()

        async def stop() -> None:
            self.feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.feed_task
            self.live.close()
            await self.gateway.close(1.0)

        self.harness.call(stop())
