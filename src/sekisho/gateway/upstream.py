"""Connections to upstream services: a keep-alive pool per origin and a response parser.

One `UpstreamConnection` carries one exchange at a time (no pipelining to upstreams). The
response is parsed by httptools; body chunks go straight to the client through a sink
callback, and when the client cannot keep up the upstream socket stops being read
(back-pressure), so a large download never accumulates in memory. A connection goes back
to the pool only after a complete, keep-alive response to a complete request.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import httptools

from sekisho.gateway.headers import response_fields

IDLE_PER_ORIGIN = 256
CONNECTOR_SCHEME = "connector:"


class ClientSide(Protocol):
    """What an upstream connection needs of the client it serves (flow control, close)."""

    def pause(self, reason: str) -> None: ...
    def resume(self, reason: str) -> None: ...
    def close(self) -> None: ...


class UpstreamError(Exception):
    """Connecting to or reading from the upstream failed; `timeout` selects 504 over 502."""

    def __init__(self, message: str, *, timeout: bool = False, started: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.started = started  # response bytes had already arrived


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str  # "http", "https", or "connector" (through a connector's tunnel)
    host: str
    port: int
    base_path: str  # the `to` URL's path without trailing slash ("" for none)
    site: str = ""  # the connector site when scheme is "connector"
    # The pool looks origins up twice a request: their hash is computed once, not each time.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.scheme, self.host, self.port,
                                                self.base_path, self.site)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode("ascii")


def parse_origin(url: str) -> Origin:
    if url.startswith(CONNECTOR_SCHEME):  # connector:<site>/<host>:<port> (config.connector)
        site, _, destination = url[len(CONNECTOR_SCHEME):].partition("/")
        name, _, port_text = destination.rpartition(":")
        return Origin("connector", name.strip("[]"), int(port_text), "", site)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return Origin(scheme, parts.hostname or "", port, parts.path.rstrip("/"))


class UpstreamConnection(asyncio.Protocol):
    """A client protocol to one upstream origin."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        # The response head as it reaches the client (`response_fields`), read once per head.
        self.fields: list[bytes] = []
        self.length: bytes | None = None
        self.keep_alive = False
        self.head: asyncio.Future[None] | None = None
        self.done: asyncio.Future[None] | None = None
        self.sink: Callable[[bytes], None] | None = None
        self.early: list[bytes] = []
        self.received = 0
        self.upgraded = b""
        self.splice: Callable[[bytes], None] | None = None
        self.client: ClientSide | None = None  # whose request body we are sending
        self.upgrading = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._armed = False
        self._timeout = 0.0
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.last_activity = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._head_only = False
        self._interim = False
        self._framed = False

    # -- lifecycle --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        high = 256 * 1024
        transport.set_write_buffer_limits(high=high)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self.splice is not None and self.client is not None:
            self.client.close()
        if self.head is not None and not self.head.done():
            _fail(self.head, UpstreamError("upstream closed before the response"))
        if self.done is not None and not self.done.done():
            if self.status and not self._framed and not self._head_only:
                self.done.set_result(None)  # body delimited by close: this is its end
            else:
                _fail(self.done, UpstreamError("upstream closed mid-response", started=True))
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def begin(self, head_only: bool) -> None:
        """Prepare for the response to the request about to be written."""
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers = []
        self.keep_alive = False
        self.head = self.loop.create_future()
        self.done = self.loop.create_future()
        self.sink = None
        self.early = []
        self.received = 0
        self._head_only = head_only
        self._interim = False
        self._framed = False
        self.last_activity = self.loop.time()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.splice is not None:
            self.splice(data)
            return
        if self.upgrading:
            self.upgraded += data  # after a 101, before the splice is in place
            return
        if self._parser is None:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        self.received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgraded = data[upgrade.args[0]:]
            self.upgrading = True
            if self.done is not None and not self.done.done():
                self.done.set_result(None)
        except (httptools.HttpParserError, httptools.HttpParserCallbackError):
            error = UpstreamError("invalid response from upstream", started=self.status != 0)
            for future in (self.head, self.done):
                if future is not None and not future.done():
                    _fail(future, error)
            self.close()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100/103: not forwarded, the final response follows
            self.headers = []
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        self.fields, self.length, chunked = response_fields(self.headers)
        self._framed = self.length is not None or chunked or status in (204, 304)
        if self.head is not None and not self.head.done():
            self.head.set_result(None)
        if self._head_only and self.done is not None and not self.done.done():
            self.keep_alive = False  # llhttp cannot skip a HEAD body: never reuse
            self.done.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._head_only:
            return
        if self.sink is not None:
            self.sink(body)
        else:
            self.early.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self._parser = httptools.HttpResponseParser(self)
            return
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # -- flow control -----------------------------------------------------------------------

    def attach(self, sink: Callable[[bytes], None]) -> None:
        self.sink = sink
        early, self.early = self.early, []
        for chunk in early:
            sink(chunk)

    def arm(self, timeout: float) -> None:
        """Fail the exchange when the upstream stays silent for `timeout` seconds.

        The timer handle outlives the exchange (a pooled connection keeps it): arming only
        sets the deadline, and a new handle is scheduled only when none is due by then.
        """
        self._timeout = timeout
        self._armed = True
        now = self.last_activity = self.loop.time()
        due = now + timeout
        if self._timer is not None and self._timer_at > due:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer_at = due
            self._timer = self.loop.call_at(due, self._check)

    def disarm(self) -> None:
        self._armed = False

    def _cancel_timer(self) -> None:
        self._armed = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if not self._armed or self.closed:
            return
        due = self.last_activity + self._timeout
        if due > self.loop.time():
            self._timer_at = due
            self._timer = self.loop.call_at(due, self._check)
            return
        error = UpstreamError("upstream read timeout", timeout=True, started=self.status != 0)
        for future in (self.head, self.done):
            if future is not None and not future.done():
                _fail(future, error)
        if self.transport is not None:
            self.transport.abort()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.client is not None:
            self.client.pause("upstream")

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.client is not None:
            self.client.resume("upstream")
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    async def drain(self) -> None:
        if self.write_paused and not self.closed:
            self.drain_waiter = self.loop.create_future()
            await self.drain_waiter

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.last_activity = self.loop.time()
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def reusable(self) -> bool:
        return not self.closed and self.keep_alive and self.splice is None


def _fail(future: asyncio.Future[None], error: UpstreamError) -> None:
    """Fail the exchange's future. A failure nobody awaits any more (the client left first)
    is not an error to log, so it is marked retrieved at once; an awaiting task still gets
    the exception (no done-callback per exchange, which cost two loop callbacks a request)."""
    future.set_exception(error)
    future.exception()


class UpstreamPool:
    """Idle keep-alive connections per origin; new ones are made on demand.

    A `connector` origin is reached through the connector broker's Unix socket
    (`connector.relay`): the connection, once the broker has opened the tunnel stream, is
    pooled and framed exactly like a TCP connection to an upstream."""

    def __init__(self, client_ssl: ssl.SSLContext | None = None,
                 connector_socket: str | None = None) -> None:
        self._idle: dict[Origin, deque[UpstreamConnection]] = {}
        self._ssl = client_ssl
        self.connector_socket = connector_socket
        self.created = 0

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def idle(self, origin: Origin) -> UpstreamConnection | None:
        """A pooled connection to `origin`, or None: `acquire` without a coroutine (the
        usual case, on the request path)."""
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                connection.reused = True
                return connection
        return None

    async def acquire(self, origin: Origin, connect_timeout: float,
                      fresh: bool = False) -> UpstreamConnection:
        connection = None if fresh else self.idle(origin)
        if connection is not None:
            return connection
        loop = asyncio.get_running_loop()
        if origin.scheme == "connector":
            protocol = await self._via_connector(origin, connect_timeout)
            self.created += 1
            return protocol
        ssl_context = self._ssl_context() if origin.scheme == "https" else None
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamConnection(origin), origin.host, origin.port,
                    ssl=ssl_context, server_hostname=origin.host if ssl_context else None,
                ),
                connect_timeout,
            )
        except TimeoutError:
            raise UpstreamError("connect timeout", timeout=True) from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(f"connect failed: {type(exc).__name__}") from None
        self.created += 1
        return protocol

    async def _via_connector(self, origin: Origin, connect_timeout: float
                             ) -> UpstreamConnection:
        from sekisho.connector.relay import SOCKET_ENV, RelayRefused, dial

        path = self.connector_socket or os.environ.get(SOCKET_ENV)
        if not path:
            raise UpstreamError("connector broker not running (connector.listen unset)")
        host = f"[{origin.host}]" if ":" in origin.host else origin.host
        loop = asyncio.get_running_loop()
        try:
            sock = await asyncio.wait_for(
                dial(path, "http", origin.site, f"{host}:{origin.port}"), connect_timeout)
            _, protocol = await loop.create_unix_connection(
                lambda: UpstreamConnection(origin), sock=sock)
        except TimeoutError:
            raise UpstreamError("connector connect timeout", timeout=True) from None
        except RelayRefused as exc:
            raise UpstreamError(f"connector: {exc.code}") from None
        except OSError as exc:
            raise UpstreamError(f"connector broker unreachable: {type(exc).__name__}") from None
        return protocol

    def release(self, connection: UpstreamConnection) -> None:
        if not connection.reusable():
            connection.close()
            return
        connection.disarm()
        connection.client = None
        connection.sink = None
        connection._parser = None
        idle = self._idle.setdefault(connection.origin, deque())
        if len(idle) >= IDLE_PER_ORIGIN:
            connection.close()
            return
        idle.append(connection)

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
