"""Screen transfer (画面転送): the page, its WebSocket, and the pump through the RFB filter.

A `mode: screen` route is served by the gateway itself, after the same decision as any
request (route policy under its segment guardrail, β′ for lgwan): `<prefix>/` is the page
(noVNC, served locally, with the watermark), `<prefix>/ws` the WebSocket that the gateway
connects to the route's VNC server (`vnc://host:port`, or `connector:<site>/<host>:<port>`
through the connector broker). Every byte between them passes `gateway.rfb.RfbFilter`, so
what the route forbids (clipboard both ways, file transfer, printing, extensions) is removed
by the gateway, not by a client that could be modified. The connection is registered with the
watch (revocation and re-evaluation cut it), ended after `screen.idle_timeout` without
keyboard or mouse input, and its start and end are audited (`screen.started`, `screen.ended`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import RemoteProtocolError, generate_accept_token

from sekisho.audit.events import ScreenSessionEnded, ScreenSessionStarted
from sekisho.config.model import Route
from sekisho.gateway.connection import ClientConnection, Exchange
from sekisho.gateway.paths import Target
from sekisho.gateway.pep import Verdict
from sekisho.gateway.proxy import status_line
from sekisho.gateway.rfb import RfbFilter, RfbViolation
from sekisho.gateway.screen_page import ScreenAssets, page_response
from sekisho.runtime import Runtime

if TYPE_CHECKING:
    from sekisho.gateway.server import Gateway

log = logging.getLogger("sekisho.gateway")

WS_SUFFIX = "/ws"
CONNECTOR_PREFIX = "connector:"
VNC_PREFIX = "vnc://"
# Targets the gateway serves itself (page, WebSocket, RFB filter); an http(s) screen route
# is proxied to a screen-transfer product like any HTTP route.
SCREEN_TARGETS = (VNC_PREFIX, CONNECTOR_PREFIX)
# WebSocket close codes the page explains to the person (screen.js).
CLOSE_IDLE, CLOSE_FILTER, CLOSE_SERVER = 4000, 1008, 1011


class _ScreenSplice:
    """The session as the watch sees it (`watch.Spliced`), and `cut()` on revocation.
    `bytes_in` counts keyboard and mouse events only: noVNC asks for updates all the time, and
    an unattended page must not keep the sign-in session alive (the watch's activity rule).
    Not a `proxy.Splice`: that class is compiled (mypyc), and this module is not."""

    __slots__ = ("_session", "bytes_in", "bytes_out")

    def __init__(self, session: _Session) -> None:
        self._session = session
        self.bytes_in = 0
        self.bytes_out = 0

    def cut(self) -> None:
        self._session.finish("revoked", abort=True)


class _VncSide(asyncio.Protocol):
    """The VNC server's socket; flow control runs both ways through the client connection."""

    def __init__(self, session: _Session) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        # The server speaks first (its version): nothing may reach the browser before the 101.
        transport.pause_reading()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.session.from_server(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.finish("server")

    def pause_writing(self) -> None:  # the VNC server reads slowly: stop reading the browser
        self.session.client.pause("screen")

    def resume_writing(self) -> None:
        self.session.client.resume("screen")


class _Session:
    """One browser ↔ VNC server session: WebSocket framing, the filter, the idle timer."""

    def __init__(self, client: ClientConnection, route: Route, loop: asyncio.AbstractEventLoop,
                 idle_timeout: float) -> None:
        self.client = client
        self.route = route
        self.loop = loop
        self.filter = RfbFilter(clipboard=route.screen.clipboard)
        self.ws = Connection(ConnectionType.SERVER)
        self.vnc = _VncSide(self)
        self.splice = _ScreenSplice(self)
        self.done: asyncio.Future[None] = loop.create_future()
        self.reason = ""
        self.detail = ""
        self.bytes_in = 0  # browser to VNC server, after the filter (the audit record)
        self.opened = time.monotonic()
        self.idle_timeout = idle_timeout
        self.last_input = self.opened
        self._inputs = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self.started = False
        self._early: list[bytes] = []

    def start(self) -> None:
        client = self.client
        assert self.vnc.transport is not None
        self.started = True
        client.splice = self.from_client
        client.producer = self.vnc.transport  # browser reads slowly: stop reading the server
        client.on_lost = lambda: self.finish("closed")
        self._arm_idle(self.idle_timeout)
        if client.upgrade_data:
            self.from_client(client.upgrade_data)
        client.resume("upgrade")
        early, self._early = b"".join(self._early), []
        if early:
            self.from_server(early)
        if not self.reason:
            self.vnc.transport.resume_reading()
        if client.closed:
            self.finish("closed")

    # -- browser → VNC server ----------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if self.reason:
            return
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, BytesMessage):
                    out = self.filter.client_data(bytes(event.data))
                    if out and self.vnc.transport is not None:
                        self.bytes_in += len(out)
                        self.vnc.transport.write(out)
                elif isinstance(event, Ping):
                    self.client.write(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(Exception):
                        self.client.write(self.ws.send(event.response()))
                    self.finish("closed")
                    return
                elif isinstance(event, TextMessage):
                    raise RfbViolation("text-message", "RFB travels in binary messages only")
        except RfbViolation as exc:
            self.finish("filter", exc.code, close_code=CLOSE_FILTER)
            return
        except RemoteProtocolError:
            self.finish("error", "websocket")
            return
        inputs = self.filter.stats.input_events
        if inputs != self._inputs:
            self._inputs = inputs
            self.splice.bytes_in = inputs
            self.last_input = time.monotonic()

    # -- VNC server → browser ----------------------------------------------------------

    def from_server(self, data: bytes) -> None:
        if self.reason:
            return
        if not self.started:  # a read already under way when reading was paused
            self._early.append(data)
            return
        try:
            out = self.filter.server_data(data)
        except RfbViolation as exc:
            self.finish("filter", exc.code, close_code=CLOSE_FILTER)
            return
        if out:
            self.splice.bytes_out += len(out)
            self.client.write(self.ws.send(BytesMessage(data=out)))
        if self.filter.finished:  # the server refused (security, authentication)
            self.finish("server", close_code=CLOSE_SERVER)

    # -- idle and the end ----------------------------------------------------------------

    def _arm_idle(self, delay: float) -> None:
        self._idle_timer = self.loop.call_later(max(delay, 0.05), self._idle_check)

    def _idle_check(self) -> None:
        if self.reason:
            return
        quiet = time.monotonic() - self.last_input
        if quiet >= self.idle_timeout:
            self.finish("idle", close_code=CLOSE_IDLE)
        else:
            self._arm_idle(self.idle_timeout - quiet)

    def finish(self, reason: str, detail: str = "", *, close_code: int = 0,
               abort: bool = False) -> None:
        """End the session once: say why to the browser (a close frame) unless `abort`."""
        if self.reason:
            return
        self.reason, self.detail = reason, detail
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.vnc.transport is not None:
            self.vnc.transport.abort()
        if not self.started:  # still answering the upgrade request: the caller decides
            self.done.set_result(None)
            return
        client = self.client
        client.splice = lambda data: None
        client.producer = None
        if abort:
            client.abort()
        else:
            if close_code:
                with contextlib.suppress(Exception):
                    client.write(self.ws.send(CloseConnection(code=close_code, reason=reason)))
            client.close()
        if not self.done.done():
            self.done.set_result(None)


class ScreenTransfer:
    """`mode: screen` routes of one gateway: the page, its assets and the WebSockets."""

    def __init__(self, gateway: Gateway, assets: ScreenAssets | None = None) -> None:
        self.gateway = gateway
        self.assets = assets if assets is not None else ScreenAssets.load()
        self.sessions: set[_Session] = set()

    def handlers(self) -> dict[str, Any]:
        """The page's static files, under /.sekisho/screen/<version>/ (no decision: they
        are public code; the page and the WebSocket are decided like any request)."""
        return {self.assets.prefix + "*": self.assets.serve}

    async def handle(self, conn: ClientConnection, exchange: Exchange, runtime: Runtime, *,
                     route: Route, target: Target, verdict: Verdict, token: str | None,
                     client_ip: Any, scheme: str, host: str, host_header: str,
                     started: float) -> bool:
        """An allowed request on a screen route: the page, the WebSocket, or 404."""
        gateway = self.gateway
        base = "/" + route.path_prefix.strip("/")
        base = "" if base == "/" else base
        path = target.path
        headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in exchange.headers}
        status, sent, keep = 404, 0, True
        if path == base + WS_SUFFIX:
            status, sent = await self._websocket(conn, exchange, runtime, route=route,
                                                 verdict=verdict, headers=headers,
                                                 client_ip=client_ip, scheme=scheme,
                                                 host=host, host_header=host_header, token=token,
                                                 path=path)
            keep = False
        elif path in (base, base + "/") and exchange.method in ("GET", "HEAD"):
            session = verdict.session
            response = page_response(
                self.assets, route=route, user=session.username if session else "",
                ws_path=base + WS_SUFFIX, language=headers.get("accept-language", ""),
                cookies=headers.get("cookie", ""), secure=scheme == "https")
            keep, sent = gateway.respond(conn, exchange, response)
            status = 200
        else:
            status = 405 if path in (base, base + "/") else 404
            keep, sent = gateway.page(conn, exchange, status)
        gateway._account(conn, route, verdict, client_ip, exchange, path=path, status=status,
                         bytes_out=sent, started=started)
        return keep

    async def _websocket(self, conn: ClientConnection, exchange: Exchange, runtime: Runtime, *,
                         route: Route, verdict: Verdict, headers: Mapping[str, str],
                         client_ip: Any, scheme: str, host: str, host_header: str,
                         token: str | None, path: str) -> tuple[int, int]:
        gateway = self.gateway
        key = headers.get("sec-websocket-key", "")
        try:
            key_ok = len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            key_ok = False
        if not (exchange.method == "GET" and exchange.upgrade and key_ok
                and headers.get("upgrade", "").lower() == "websocket"
                and headers.get("sec-websocket-version") == "13"):
            return 400, gateway.page(conn, exchange, 400)[1]
        # Cross-site WebSocket hijacking: a page on another site could open this socket with
        # the person's cookie; only the screen page itself (same origin) may.
        if headers.get("origin", "") != f"{scheme}://{host_header}":
            return 403, gateway.page(conn, exchange, 403)[1]
        session = verdict.session
        idle = route.screen.idle_timeout
        screen = _Session(conn, route, conn.loop, idle)
        timeouts = route.timeouts or runtime.config.timeouts
        try:
            await asyncio.wait_for(self._connect(route, screen), timeouts.connect)
        except Exception as exc:
            log.warning("screen route %s: VNC server unreachable: %s", route.id,
                        type(exc).__name__)
            return 502, gateway.page(conn, exchange, 502)[1]
        source = conn.peer_text if client_ip is conn.peer else str(client_ip)
        user = session.username if session else ""
        short = session.short_id if session else ""
        try:  # the recording metadata is durable before a single pixel crosses
            await gateway.audit.append(ScreenSessionStarted(
                route=route.id, user=user, session=short, source_ip=source, target=route.to,
                clipboard=route.screen.clipboard))
        except Exception:
            log.exception("screen session could not be audited: refused (fail closed)")
            if screen.vnc.transport is not None:
                screen.vnc.transport.abort()
            return 503, gateway.page(conn, exchange, 503)[1]
        if screen.reason:  # the VNC server hung up before the browser was answered
            return 502, gateway.page(conn, exchange, 502)[1]
        accept = generate_accept_token(key.encode("ascii"))
        conn.write(status_line(101) + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        # The handshake was parsed by the gateway; wsproto frames from here (server side).
        self.sessions.add(screen)
        screen.start()
        release = None
        if gateway.watch is not None:
            release = gateway.watch.hook(
                token=token, session=session, route=route, host=host, path=path,
                method=exchange.method, client_ip=client_ip, certificate=conn.certificate,
                ambiguous=False)(screen.splice)
        try:
            await screen.done
        finally:
            if release is not None:
                release()
            self.sessions.discard(screen)
        stats = screen.filter.stats
        reason = str(screen.reason)  # set by finish() while this coroutine waited
        if gateway.closing and reason == "closed":
            reason = "shutdown"
        log.info("screen session on %s ended: %s %s", route.id, reason, screen.detail)
        try:
            await gateway.audit.append(ScreenSessionEnded(
                route=route.id, user=user, session=short, source_ip=source, reason=reason,
                detail=screen.detail, duration_s=round(time.monotonic() - screen.opened, 3),
                bytes_in=screen.bytes_in, bytes_out=screen.splice.bytes_out,
                client_cut_dropped=stats.client_cut_dropped,
                server_cut_dropped=stats.server_cut_dropped,
                encodings_removed=stats.encodings_removed))
        except Exception as exc:  # the session is over either way
            log.warning("screen session end could not be audited: %s", exc)
        return 101, screen.splice.bytes_out

    async def _connect(self, route: Route, screen: _Session) -> None:
        loop = asyncio.get_running_loop()
        target = route.to
        if target.startswith(CONNECTOR_PREFIX):
            from sekisho.connector.relay import SOCKET_ENV, dial

            site, _, destination = target[len(CONNECTOR_PREFIX):].partition("/")
            socket_path = self.gateway.pool.connector_socket or os.environ.get(SOCKET_ENV)
            if not socket_path:
                raise ConnectionError("connector broker not running (connector.listen unset)")
            sock = await dial(socket_path, "tcp", site, destination)
            await loop.create_unix_connection(lambda: screen.vnc, sock=sock)
            return
        if not target.startswith(VNC_PREFIX):
            raise ConnectionError("a screen route needs vnc:// or connector: (config.routes)")
        host, _, port = target[len(VNC_PREFIX):].rpartition(":")
        await loop.create_connection(lambda: screen.vnc, host.strip("[]"), int(port))

