"""The staff machine's side of TCP access: open streams through the gateway, pipe local sockets.

`open_stream` makes one TLS connection to the gateway and asks for the route with an
Upgrade to `sekisho-tcp` (see `gateway.tcp`), carrying the CLI credential as a bearer; on
101 the connection is a plain byte pipe to the route's destination. `LocalListener` accepts
connections on a loopback port and carries each one over its own stream. Both sides are
asyncio protocols wired transport to transport (no per-chunk task, no stream buffering):
each side stops reading while the other cannot take more, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

HEAD_MAX = 16 * 1024
BODY_MAX = 64 * 1024
WRITE_HIGH = 512 * 1024


@dataclass(frozen=True, slots=True)
class Gateway:
    """Where to connect (`address`) and what to say (`host`: the route's host name)."""

    scheme: str  # "https" (or "http" for a test gateway without TLS)
    address: str
    port: int
    host: str  # Host header and TLS server name: the route's host
    tls: ssl.SSLContext | None = None

    @classmethod
    def parse(cls, route: str, gateway: str | None, context: ssl.SSLContext | None
              ) -> Gateway:
        """ROUTE is the route's host (or an https:// URL of it); `--gateway` an address to
        connect to when it differs (a load balancer, a test port)."""
        route_url = urlsplit(route if "://" in route else f"https://{route}")
        host = (route_url.hostname or "").lower()
        if not host:
            raise ValueError("ROUTE")
        where = urlsplit(gateway) if gateway else route_url
        scheme = where.scheme.lower()
        if scheme not in ("https", "http"):
            raise ValueError("--gateway")
        port = where.port or (443 if scheme == "https" else 80)
        if scheme == "https" and context is None:
            context = ssl.create_default_context()
        return cls(scheme, where.hostname or host, port, host,
                   context if scheme == "https" else None)


class Refused(Exception):
    """The gateway did not open the stream: HTTP status and its JSON error (code, messages,
    reasons, step_up)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.code = str(body.get("error", f"http-{status}"))
        self.ja = str(body.get("message", ""))
        self.en = str(body.get("message_en", ""))
        self.reasons = [str(r) for r in body.get("reasons", ()) or ()]
        self.step_up = [str(r) for r in body.get("step_up", ()) or ()]
        super().__init__(f"{status} {self.code}")


class _Pipe(asyncio.Protocol):
    """One side of a spliced pair: what it reads goes to `peer`; flow control crosses over."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []
        self.closed = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH)  # type: ignore[attr-defined]

    def link(self, peer: _Pipe) -> None:
        self.peer = peer
        if self.pending:
            assert peer.transport is not None
            peer.transport.write(b"".join(self.pending))
            self.pending = []
        if self.closed:
            peer.close()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        return False  # a half-close ends the pair (as the gateway's splice does)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        if self.peer is not None:
            self.peer.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _Upgrade(_Pipe):
    """The gateway side: reads the answer to the upgrade request, then becomes a pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.head = b""
        self.answered: asyncio.Future[tuple[int, dict[str, str], bytes]] = \
            asyncio.get_running_loop().create_future()
        self.switched = False

    def data_received(self, data: bytes) -> None:
        if self.switched:
            super().data_received(data)
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            if len(self.head) > HEAD_MAX:
                self._fail(ConnectionError("response head too large"))
            return
        if self.answered.done():  # a refusal's body
            if len(self.head) > HEAD_MAX + BODY_MAX:
                self.close()
            return
        head, _, rest = self.head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self._fail(ConnectionError("not an HTTP response"))
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 101:
            self.switched = True
            if rest:
                self.pending.append(rest)
        self.answered.set_result((status, headers, rest))

    def _fail(self, exc: Exception) -> None:
        if not self.answered.done():
            self.answered.set_exception(exc)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(ConnectionError("the gateway closed the connection"))
        super().connection_lost(exc)


def request_head(gateway: Gateway, credential: str | None) -> bytes:
    lines = ["GET / HTTP/1.1", f"Host: {gateway.host}", "Connection: Upgrade",
             "Upgrade: sekisho-tcp", "User-Agent: sekisho-tcp"]
    if credential:
        lines.append(f"Authorization: Bearer {credential}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def open_stream(gateway: Gateway, credential: str | None, *, timeout: float = 15.0
                      ) -> _Upgrade:
    """A stream to the route's destination, or `Refused` (or OSError/TimeoutError when the
    gateway cannot be reached)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, protocol = await loop.create_connection(
            _Upgrade, gateway.address, gateway.port, ssl=gateway.tls,
            server_hostname=gateway.host if gateway.tls is not None else None)
        assert protocol.transport is not None
        protocol.transport.write(request_head(gateway, credential))
        status, headers, _ = await protocol.answered
        if status == 101:
            return protocol
        length = int(headers.get("content-length", "0") or 0)
        while len(protocol.head.partition(b"\r\n\r\n")[2]) < min(length, BODY_MAX) \
                and not protocol.closed:
            await asyncio.sleep(0.005)
    protocol.close()
    body_bytes = protocol.head.partition(b"\r\n\r\n")[2]
    try:
        body = json.loads(body_bytes) if body_bytes else {}
    except ValueError:
        body = {}
    raise Refused(status, body if isinstance(body, dict) else {})


@dataclass
class LocalListener:
    """`sekisho tcp`'s loopback listener: one gateway stream per accepted connection."""

    gateway: Gateway
    credential: str | None
    on_refused: Any = None  # called with Refused / OSError for each failed connection
    server: asyncio.AbstractServer | None = None
    active: set[_Pipe] = field(default_factory=set)
    carried: int = 0

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._accept, host, port)
        return int(self.server.sockets[0].getsockname()[1])

    def _accept(self) -> _Pipe:
        local = _Pipe()
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: loop.create_task(self._carry(local)))
        return local

    async def _carry(self, local: _Pipe) -> None:
        if local.transport is None:
            return
        local.transport.pause_reading()  # nothing to send to yet
        try:
            remote = await open_stream(self.gateway, self.credential)
        except (Refused, OSError, TimeoutError) as exc:
            local.close()
            if self.on_refused is not None:
                self.on_refused(exc)
            return
        self.carried += 1
        remote.link(local)
        local.link(remote)
        self.active.update((local, remote))
        if not local.closed:
            local.transport.resume_reading()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([local.lost, remote.lost], return_when=asyncio.ALL_COMPLETED)
        self.active.difference_update((local, remote))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for pipe in list(self.active):
            pipe.close()
