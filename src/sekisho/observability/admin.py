"""The admin listener: /metrics, /healthz, /readyz and the JWKS, on a separate address.

It binds to loopback by default and is never served on the public listener, so scrapers
and load balancers see health without the internet seeing internals.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import httptools
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger("sekisho.admin")

ReadinessCheck = Callable[[], Awaitable[tuple[bool, dict[str, str]]]]
JwksProvider = Callable[[], bytes]

_MAX_HEAD = 16 * 1024


class _Head:
    """Collects the request line and ends at the end of the head; bodies are not accepted."""

    def __init__(self) -> None:
        self.url = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.complete = True


class AdminServer:
    def __init__(
        self,
        ready: ReadinessCheck,
        jwks: JwksProvider | None = None,
        registry: CollectorRegistry | None = None,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._ready = ready
        self._before_scrape = before_scrape
        self._jwks = jwks
        self._registry = registry or REGISTRY
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> asyncio.Server:
        self._server = await asyncio.start_server(self._serve, host, port)
        return self._server

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, content_type, body = await asyncio.wait_for(self._answer(reader), 10)
        except (TimeoutError, ConnectionError, httptools.HttpParserError, ValueError):
            status, content_type, body = 400, "text/plain", b"bad request\n"
        head = (
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        head = _Head()
        parser = httptools.HttpRequestParser(head)
        received = 0
        while not head.complete:
            chunk = await reader.read(4096)
            if not chunk:
                raise ConnectionError("closed before the request head")
            received += len(chunk)
            if received > _MAX_HEAD:
                raise ValueError("request head too large")
            parser.feed_data(chunk)
        if parser.get_method() != b"GET":
            return 405, "text/plain", b"method not allowed\n"
        path = httptools.parse_url(head.url).path.decode("ascii", "replace")
        if path == "/metrics":
            if self._before_scrape is not None:
                try:
                    await self._before_scrape()
                except Exception:  # a gauge that cannot refresh must not hide the others
                    log.warning("metrics refresh failed", exc_info=True)
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            return 200, "application/json", b'{"status":"ok"}'
        if path == "/readyz":
            ok, checks = await self._ready()
            body = json.dumps({"status": "ok" if ok else "unavailable", "checks": checks})
            return (200 if ok else 503), "application/json", body.encode()
        if path == "/.well-known/sekisho/jwks.json" and self._jwks is not None:
            return 200, "application/json", self._jwks()
        return 404, "text/plain", b"not found\n"
