"""Forwarding one allowed exchange to its upstream and streaming the answer back.

The request head is rebuilt from parsed values (never copied bytes), and the body is
re-framed by us (Content-Length or chunked), so what the upstream reads as one request is
exactly what we parsed as one request: no framing disagreement, no smuggling. Bodies stream
both ways with back-pressure. A WebSocket upgrade, once the upstream answers 101, becomes a
byte splice between the two sockets, handed to `on_splice` (the gateway's watch, which
re-decides it while it lasts and cuts it when access ends).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from sekisho.gateway.connection import ClientConnection, Exchange
from sekisho.gateway.upstream import Origin, UpstreamConnection, UpstreamError, UpstreamPool

Header = tuple[bytes, bytes]
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii"))
                 for s in HTTPStatus}


class Splice:
    """One upgraded connection as the watch sees it: bytes each way so far, and `cut()`."""

    __slots__ = ("_client", "_upstream", "bytes_in", "bytes_out")

    def __init__(self, client: ClientConnection, upstream: UpstreamConnection) -> None:
        self._client = client
        self._upstream = upstream
        self.bytes_in = 0  # client to upstream
        self.bytes_out = 0  # upstream to client

    def cut(self) -> None:
        """Drop both sockets now (abort, not close: nothing still buffered for a client
        whose access just ended is delivered after the decision)."""
        self._upstream.closed = True
        for transport in (self._upstream.transport, self._client.transport):
            if transport is not None:
                transport.abort()


# Called with the splice once bytes flow; returns what to call when the splice ends.
SpliceHook = Callable[[Splice], Callable[[], None]]


@dataclass(slots=True)
class Outcome:
    status: int
    bytes_out: int
    keep_alive: bool
    upstream_seconds: float


def request_head(method: str, path: bytes, host: bytes, fields: Sequence[bytes],
                 exchange: Exchange) -> bytes:
    """The request head for the upstream: `fields` flattened as `upstream_headers` gives them,
    the framing ours (Content-Length or chunked, from what we parsed)."""
    parts = [method.encode("ascii"), b" ", path, b" HTTP/1.1\r\nHost: ", host, b"\r\n",
             *fields]
    if exchange.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif exchange.content_length:
        parts += (b"Content-Length: ", str(exchange.content_length).encode("ascii"), b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def _body_sink(upstream: UpstreamConnection, chunked: bool) -> Callable[[bytes], None]:
    write = upstream.write
    if not chunked:
        return lambda chunk: write(chunk) if chunk else None

    def sink(chunk: bytes) -> None:
        if chunk:
            write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            write(b"0\r\n\r\n")

    return sink


async def forward(
    pool: UpstreamPool,
    client: ClientConnection,
    exchange: Exchange,
    origin: Origin,
    head: bytes,
    *,
    connect_timeout: float,
    read_timeout: float,
    websocket: bool,
    extra_headers: Sequence[Header] = (),
    on_splice: SpliceHook | None = None,
) -> Outcome:
    """Send the exchange upstream and stream the response to the client."""
    loop = client.loop
    upstream: UpstreamConnection | None = None
    started = loop.time()
    for attempt in range(2):
        upstream = pool.idle(origin) if attempt == 0 else None
        if upstream is None:
            upstream = await pool.acquire(origin, connect_timeout, fresh=attempt > 0)
        upstream.begin(head_only=exchange.method == "HEAD")
        upstream.client = client
        client.producer = upstream.transport
        upstream.write(head)
        if exchange.has_body:
            if exchange.expect and not exchange.body_done:
                client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            sink = _body_sink(upstream, exchange.chunked)
            for chunk in client.take_pending(exchange):
                sink(chunk)
            if exchange.body_done:
                if exchange.chunked:
                    sink(b"")
            else:
                exchange.sink = sink
        upstream.arm(read_timeout)
        try:
            assert upstream.head is not None
            await upstream.head
            break
        except UpstreamError as exc:
            upstream.close()
            # A pooled connection the upstream closed while idle: retry once on a new one,
            # only when nothing of the body was consumed (so the request can be replayed).
            if attempt == 0 and upstream.reused and not exc.timeout and not exchange.has_body:
                continue
            raise
    assert upstream is not None
    upstream_seconds = loop.time() - started
    status = upstream.status

    if websocket and status == 101:
        return await _splice(client, upstream, upstream_seconds, on_splice)

    fields, length = upstream.fields, upstream.length
    no_body = exchange.method == "HEAD" or status in (204, 304) or status < 200
    keep_alive = exchange.keep_alive and not exchange.upgrade
    rechunk = not no_body and length is None
    if rechunk and exchange.version == "1.0":
        rechunk, keep_alive = False, False  # HTTP/1.0: delimit by closing
    parts = [status_line(status), *fields]
    if length is not None:
        parts += (b"Content-Length: ", length, b"\r\n")
    for name, value in extra_headers:
        parts += (name, b": ", value, b"\r\n")
    if rechunk:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    sent = [0]
    write = client.write
    assert upstream.done is not None
    if upstream.done.done() and not upstream.done.exception() and not rechunk:
        # The whole response arrived in one read (the common small case): one write, one
        # syscall for head and body.
        early, upstream.early = upstream.early, []
        sent[0] = sum(len(chunk) for chunk in early)
        write(b"".join([*parts, *early]))
    else:
        write(b"".join(parts))
    if rechunk:
        def to_client(chunk: bytes) -> None:
            sent[0] += len(chunk)
            write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    else:
        def to_client(chunk: bytes) -> None:
            sent[0] += len(chunk)
            write(chunk)
    upstream.attach(to_client)
    try:
        assert upstream.done is not None
        await upstream.done
    except UpstreamError:
        upstream.close()
        client.abort()  # the head is out; a truncated body must not look complete
        raise
    finally:
        upstream.disarm()
        client.producer = None
    if rechunk:
        write(b"0\r\n\r\n")
    if not exchange.body_done:
        keep_alive = False  # the upstream answered before the body ended: cannot reuse
        upstream.keep_alive = False
    exchange.sink = None
    pool.release(upstream)
    return Outcome(status, sent[0], keep_alive, upstream_seconds)


async def _splice(client: ClientConnection, upstream: UpstreamConnection,
                  upstream_seconds: float, on_splice: SpliceHook | None) -> Outcome:
    """After a 101: forward the upgrade answer, then copy bytes both ways until either closes."""
    upstream.disarm()
    parts = [status_line(101)]
    for name, value in upstream.headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    client.write(b"".join(parts))
    client_transport, upstream_transport = client.transport, upstream.transport
    assert client_transport is not None and upstream_transport is not None
    done: asyncio.Future[None] = client.loop.create_future()
    splice = Splice(client, upstream)

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def to_upstream(data: bytes) -> None:
        splice.bytes_in += len(data)
        upstream_transport.write(data)

    def to_client(data: bytes) -> None:
        splice.bytes_out += len(data)
        client_transport.write(data)

    upstream.splice = to_client
    client.splice = to_upstream
    client.producer = upstream_transport
    if upstream.upgraded:
        to_client(upstream.upgraded)
    if client.upgrade_data:
        to_upstream(client.upgrade_data)
    upstream.upgrading = False
    client.resume("upgrade")
    close_client, close_upstream = client.close, upstream.close

    def client_gone() -> None:
        close_upstream()
        finish()

    def upstream_gone() -> None:
        close_client()
        finish()

    client.on_lost = client_gone
    upstream.client = _Closer(upstream_gone, client)
    if client.closed:
        client_gone()
    if upstream.closed:
        upstream_gone()
    release = on_splice(splice) if on_splice is not None else None
    try:
        await done
    finally:
        if release is not None:
            release()
    return Outcome(101, splice.bytes_out, False, upstream_seconds)


class _Closer:
    """Adapts the client for a spliced upstream: flow control passes, close ends both."""

    def __init__(self, on_close: Callable[[], None], client: ClientConnection) -> None:
        self._on_close = on_close
        self._client = client

    def pause(self, reason: str) -> None:
        self._client.pause(reason)

    def resume(self, reason: str) -> None:
        self._client.resume(reason)

    def close(self) -> None:
        self._on_close()
