"""One client connection: bytes in, parsed `Exchange`s out, in order; responses written back.

httptools (llhttp) parses; this module adds what llhttp lets through and enforces limits:
- request smuggling (CL.TE, TE.CL, TE.TE): llhttp rejects CL with TE, duplicate or invalid
  Content-Length, obs-fold and whitespace before the colon; here we also refuse any
  Transfer-Encoding other than exactly `chunked` and Transfer-Encoding on HTTP/1.0. Every
  parse error answers 400 and closes, so no byte after a confusing request is ever read as
  the next request. Bodies are re-framed by us, never copied through with the client's framing;
- limits on URL length (414), header count and size (431);
- slowloris: a request head must arrive within `timeouts.header`; idle keep-alives close
  after `timeouts.idle`;
- pipelining: requests are queued and answered strictly in order.
Request bodies stream: chunks go to the exchange's sink (the upstream) when one is attached,
else into a small buffer; reading pauses while that buffer or the upstream is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING

import httptools

from sekisho.gateway.mtls import ClientCertificate, peer_certificate

if TYPE_CHECKING:
    from sekisho.gateway.server import Gateway

log = logging.getLogger("sekisho.gateway")

BUFFER_HIGH = 256 * 1024  # request body bytes held while no upstream is attached
_NAME = itemgetter(0)


@dataclass(frozen=True, slots=True)
class ConnLimits:
    """The per-connection limits, taken from the snapshot current when the connection opened."""

    max_url_bytes: int = 8 * 1024
    max_header_count: int = 100
    max_header_bytes: int = 16 * 1024
    header_timeout: float = 15.0
    idle_timeout: float = 75.0

    @property
    def max_head_bytes(self) -> int:
        # A head that never completes (one endless header line) is cut off here.
        return self.max_url_bytes + self.max_header_bytes + 1024


class RequestRejected(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Exchange:
    """One request as parsed, plus the state of its body."""

    __slots__ = (
        "body_bytes", "body_done", "buffered", "chunked", "content_length", "error", "expect",
        "headers", "host_count", "host_value", "keep_alive", "method", "names", "pending",
        "sink", "upgrade", "url", "version", "waiter",
    )

    def __init__(self) -> None:
        self.method = ""
        self.url = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.names: list[bytes] = []  # the header names lower-cased, in order (`values`)
        self.host_count = 0  # how many Host headers arrived (exactly one is acceptable)
        self.host_value = b""
        self.keep_alive = False
        self.chunked = False
        self.content_length: int | None = None
        self.expect = False
        self.upgrade = False
        self.error = 0  # status of a protocol error (400/414/431) found while parsing
        self.pending: deque[bytes] = deque()  # body chunks not yet taken by a sink
        self.buffered = 0
        self.body_bytes = 0
        self.body_done = False
        # Called with each body chunk once the request is forwarded; None before.
        self.sink: Callable[[bytes], None] | None = None
        self.waiter: asyncio.Future[None] | None = None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def values(self, name: bytes) -> list[bytes]:
        """The values of the headers named `name` (lower case), in order."""
        names = self.names
        count = names.count(name)
        if count == 0:
            return []
        if count == 1:
            return [self.headers[names.index(name)][1]]
        return [value for key, (_, value) in zip(names, self.headers, strict=True)
                if key == name]

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class ClientConnection(asyncio.Protocol):
    """asyncio protocol for one client socket; the gateway's `serve()` consumes exchanges."""

    def __init__(self, gateway: Gateway, scheme: str) -> None:
        self.gateway = gateway
        self.scheme = scheme
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address("0.0.0.0")  # noqa: S104
        self.peer_text = "0.0.0.0"  # noqa: S104  # str(peer), formatted once per connection
        self.peer_bytes = b"0.0.0.0"  # and encoded once (X-Forwarded-For)
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.current: Exchange | None = None  # the exchange being parsed
        self.queue_waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.stop_parsing = False
        self.upgrade_data = b""
        self.splice: Callable[[bytes], None] | None = None  # raw bytes after a WebSocket 101
        self.producer: asyncio.BaseTransport | None = None  # upstream feeding our transport
        self.on_lost: Callable[[], None] | None = None
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self._paused_by: set[str] = set()
        self._head_bytes = 0
        self._headers: list[tuple[bytes, bytes]] = []  # the headers of the head being parsed
        self.started = False  # a request has begun on this connection
        self._in_head = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self.busy = False
        self.limits: ConnLimits = gateway.limits()
        self._tick = min(self.limits.header_timeout, self.limits.idle_timeout)
        self.task: asyncio.Task[None] | None = None
        # The verified client certificate (mTLS), read once: it cannot change on a connection.
        self.certificate: ClientCertificate | None = None
        # The last (cookie name, Cookie header values, token, session id) (Gateway._credentials).
        self.credentials: tuple[bytes, list[bytes], str | None, str] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if peer:
            with contextlib.suppress(ValueError):
                self.peer = ipaddress.ip_address(peer[0])
                self.peer_text = str(self.peer)
                self.peer_bytes = self.peer_text.encode("ascii")
        self.certificate = peer_certificate(transport.get_extra_info("ssl_object"))
        high = BUFFER_HIGH
        transport.set_write_buffer_limits(high=high)  # type: ignore[attr-defined]
        self.gateway.connections.add(self)
        self._arm(self.limits.header_timeout)
        self.task = self.loop.create_task(self.gateway.serve(self))

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.started:
            # A connection cut before its first request (a TLS error, a reset) leaves no other
            # trace: no request, no decision, no audit record. Its cause, never its data.
            log.info("connection lost before a request", extra={"fields": {
                "peer": self.peer_text, "error": type(exc).__name__, "detail": str(exc)[:200]}})
        self.closed = True
        self.gateway.connections.discard(self)
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.queue_waiter is not None and not self.queue_waiter.done():
            self.queue_waiter.set_result(None)
        for exchange in (*self.queue, self.current):
            if exchange is not None:
                exchange.wake()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)
        if self.producer is not None:
            self.producer.close()
        if self.on_lost is not None:
            self.on_lost()

    def data_received(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice(data)
            return
        if self.stop_parsing:
            return
        if self._in_head or self.current is None:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgrade_data = data[upgrade.args[0]:]
            self.stop_parsing = True
            self.pause("upgrade")
            return
        except (httptools.HttpParserCallbackError, httptools.HttpParserError) as exc:
            cause = exc.__context__
            status = cause.status if isinstance(cause, RequestRejected) else 400
            self._reject(status)
            return
        if self._in_head and self._head_bytes > self.limits.max_head_bytes:
            self._reject(431)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.producer is not None:
            self.producer.pause_reading()  # type: ignore[attr-defined]

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.producer is not None:
            self.producer.resume_reading()  # type: ignore[attr-defined]
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.started = True
        self.current = Exchange()
        self._headers = self.current.headers
        self._in_head = True
        if not self.busy:
            self._arm(self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url
        if len(self.current.url) > self.limits.max_url_bytes:
            self.current.error = 414
            raise RequestRejected(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called once per header line: only kept here. The limits are checked once the head
        # is complete, and the head's bytes after every read (`data_received`), so a head
        # that never completes is cut off at `max_head_bytes` all the same. After the head,
        # llhttp calls this for a chunked body's trailer fields: never forwarded (bodies are
        # re-framed), and not kept either, or an endless trailer section would grow the list.
        if self._in_head:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.current
        assert exchange is not None
        parser = self.parser
        headers = exchange.headers
        limits = self.limits
        # Each line counts its name, its value, ": " and CRLF.
        if (len(headers) > limits.max_header_count or sum(map(len, chain.from_iterable(
                headers))) + 4 * len(headers) > limits.max_header_bytes):
            raise RequestRejected(431)
        # The names lower-cased by C loops (no bytecode per header), then searched by name.
        exchange.names = names = list(map(bytes.lower, map(_NAME, headers)))
        exchange.version = parser.get_http_version()
        exchange.keep_alive = parser.should_keep_alive()
        self._in_head = False
        self._head_bytes = 0
        if b"transfer-encoding" in names:
            # TE.TE / TE.CL: anything but one plain "chunked" could be read differently
            # by the upstream (e.g. "gzip, chunked", "chunked\x0b", doubled headers).
            encodings = exchange.values(b"transfer-encoding")
            if len(encodings) != 1 or encodings[0].strip().lower() != b"chunked":
                raise RequestRejected(400)
            exchange.chunked = True
        if b"content-length" in names:
            exchange.content_length = int(exchange.values(b"content-length")[-1])
        exchange.host_count = hosts = names.count(b"host")
        if hosts:  # more than one is refused (400) before anything reads the value
            exchange.host_value = headers[names.index(b"host")][1]
        if b"expect" in names:
            exchange.expect = exchange.values(b"expect")[-1].strip().lower() == b"100-continue"
        if exchange.chunked and (exchange.version == "1.0" or exchange.content_length is not None):
            raise RequestRejected(400)  # HTTP/1.0 has no chunked framing; CL+TE is CL.TE
        if exchange.content_length is None and not exchange.chunked:
            exchange.content_length = 0
        exchange.upgrade = bool(parser.should_upgrade())
        exchange.method = parser.get_method().decode("ascii")  # marks the head as accepted
        if not self.busy:
            self._disarm()
        self._enqueue(exchange)

    def on_body(self, body: bytes) -> None:
        exchange = self.current
        assert exchange is not None
        exchange.body_bytes += len(body)
        if exchange.sink is not None:
            exchange.sink(body)
            return
        exchange.pending.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > BUFFER_HIGH:
            self.pause("buffer")
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self.current
        assert exchange is not None
        exchange.body_done = True
        if exchange.sink is not None:
            exchange.sink(b"")
        exchange.wake()
        self.current = None

    # -- used by the gateway ------------------------------------------------------------

    def _enqueue(self, exchange: Exchange) -> None:
        self.queue.append(exchange)
        if len(self.queue) > 8:
            self.pause("pipeline")  # a client pipelining without reading: stop reading it
        if self.queue_waiter is not None and not self.queue_waiter.done():
            self.queue_waiter.set_result(None)

    def _reject(self, status: int) -> None:
        self.stop_parsing = True
        self.pause("error")
        exchange = self.current or Exchange()
        self.current = None
        exchange.keep_alive = False
        if exchange.method:
            # The head was accepted and the exchange is queued or being forwarded: its body
            # is broken (bad chunk framing). Nothing more can be trusted on this socket.
            exchange.error = exchange.error or status
            exchange.body_done = True
            if exchange.sink is not None:
                self.abort()
            exchange.wake()
            return
        exchange.error = status
        exchange.body_done = True
        self._enqueue(exchange)

    async def next_exchange(self) -> Exchange | None:
        while not self.queue:
            if self.closed:
                return None
            self.queue_waiter = self.loop.create_future()
            await self.queue_waiter
            self.queue_waiter = None
        self.busy = True
        exchange = self.queue.popleft()
        if len(self.queue) <= 8:
            self.resume("pipeline")
        return exchange

    def finished(self) -> None:
        """The current response is fully written; arm the idle timer if nothing waits."""
        self.busy = False
        if self.current is not None and self._in_head:
            self._arm(self.limits.header_timeout)  # a pipelined head still arriving
        elif not self.queue and self.current is None:
            self._arm(self.limits.idle_timeout)

    def take_pending(self, exchange: Exchange) -> list[bytes]:
        chunks = list(exchange.pending)
        exchange.pending.clear()
        exchange.buffered = 0
        self.resume("buffer")
        return chunks

    def pause(self, reason: str) -> None:
        if not self._paused_by and self.transport is not None:
            self.transport.pause_reading()
        self._paused_by.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._paused_by:
            self._paused_by.discard(reason)
            if not self._paused_by and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.write_paused and not self.closed:
            self.drain_waiter = self.loop.create_future()
            await self.drain_waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- timers ---------------------------------------------------------------------------

    # One timer handle per connection, not one per request: arming only moves a deadline.
    # The handle is always due no later than `_tick` (the shorter of the two timeouts) after
    # it was scheduled, and every deadline is set at least `_tick` ahead, so the timer never
    # fires after the deadline it guards; when it fires early it re-schedules itself.

    def _arm(self, delay: float) -> None:
        now = self.loop.time()
        self._deadline = now + delay
        if self._timer is None:
            self._timer = self.loop.call_at(now + min(delay, self._tick), self._expired)

    def _disarm(self) -> None:
        self._deadline = None

    def _expired(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.closed:
            return
        now = self.loop.time()
        if now < deadline:
            self._timer = self.loop.call_at(min(deadline, now + self._tick), self._expired)
        elif not self.busy:
            self.abort()  # slowloris / idle keep-alive: nothing useful is in flight
