"""TCP access (`mode: tcp` routes): one decided request opens a byte splice to a TCP service.

`sekisho tcp` carries each local connection as one HTTP/1.1 request on the route's host:

    GET / HTTP/1.1                           HTTP/1.1 101 Switching Protocols
    Host: ssh.city.example.jp          →     Upgrade: sekisho-tcp
    Connection: Upgrade                      Connection: Upgrade
    Upgrade: sekisho-tcp
    Authorization: Bearer skc1.…             …then raw bytes both ways

An Upgrade rather than `CONNECT host:port`: it is routed by Host like every other request (the
route, not the client, names the destination: no `CONNECT` to an address of the client's
choosing), it passes the load balancers and reverse proxies that already pass WebSockets, and
the TLS name is the route's own. The credential is a bearer (`identity.cli_login`), never a
cookie: a web page cannot make a browser open a TCP stream with the user's session, and the
CLI credential opens no web page.

The decision is the one every request gets (`pep.decide`: session, device, network, time,
the route's policy under its (segment, tcp) guardrail) with method `CONNECT`. Allowed, the
destination is dialled — directly for `tcp://host:port`, through the connector broker's Unix
socket (stream kind `tcp`) for `connector:<site>/<host>:<port>` — and only then is 101 sent,
so a client never sees "connected" for a service that cannot be reached. The splice is
registered with the watch (`gateway.watch`), which decides it again on a timer, on every
change-feed change of its session, user or device, on reload, and cuts it when access ends.
Audit: `access.decision`, then `tcp.opened` and `tcp.closed` (bytes each way, duration, who
ended it and why). An audit writer that cannot record refuses the connection (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from sekisho.audit.events import TcpClosed, TcpOpened
from sekisho.config.model import Route
from sekisho.gateway.connection import ClientConnection, Exchange
from sekisho.gateway.paths import Target
from sekisho.gateway.pep import AUDIT_DENY, Verdict, decide, step_up_cures
from sekisho.gateway.proxy import Splice
from sekisho.gateway.upstream import Origin, UpstreamConnection, parse_origin
from sekisho.identity.principal import SessionInfo
from sekisho.runtime import Runtime
from sekisho.web import Response, json_response

if TYPE_CHECKING:
    from sekisho.gateway.server import Gateway
    from sekisho.identity.cli_login import CliCredentials

log = logging.getLogger("sekisho.gateway.tcp")

PROTOCOL = b"sekisho-tcp"
METHOD = "CONNECT"  # what the `method` criterion sees for a TCP connection
_SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: sekisho-tcp\r\n"
           b"Connection: Upgrade\r\n\r\n")
_MAX_BEARER = 2048

# Machine code -> (ja, en). The CLI shows both; `reasons` and `step_up` come along as data.
MESSAGES: dict[str, tuple[str, str]] = {
    "tcp-upgrade-required": (
        "このルートは TCP 用です。sekisho tcp で接続してください",
        "this is a TCP route: connect with sekisho tcp"),
    "credential-required": (
        "サインインが必要です。sekisho login を実行してください",
        "sign-in needed: run sekisho login"),
    "denied": ("このルートへの接続は許可されていません", "access to this route is denied"),
    "step-up-required": (
        "2 段階目の認証が必要です。sekisho login --step-up を実行してください",
        "a second factor is needed: run sekisho login --step-up"),
    "unavailable": ("いま判定できません（安全側で拒否しました）。しばらくして再試行してください",
                    "access cannot be decided now (denied to stay safe); try again later"),
    "destination-unreachable": ("接続先に接続できません", "the destination cannot be reached"),
    "destination-timeout": ("接続先が応答しません", "the destination did not answer in time"),
}


def tcp_error(status: int, code: str, reasons: tuple[str, ...] = (),
              **extra: Any) -> Response:
    ja, en = MESSAGES[code]
    return json_response({"error": code, "message": ja, "message_en": en,
                          "reasons": list(reasons), **extra}, status)


def destination_of(route: Route) -> tuple[Origin, str, str]:
    """(origin to dial, "host:port" for the audit, "direct" | "connector:<site>")."""
    if route.to.startswith("tcp://"):
        host_port = route.to[len("tcp://"):]
        host, _, port = host_port.rpartition(":")
        return Origin("tcp", host.strip("[]"), int(port), ""), host_port, "direct"
    origin = parse_origin(route.to)
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    return origin, f"{host}:{origin.port}", f"connector:{origin.site}"


def bearer(exchange: Exchange) -> str | None:
    for name, value in exchange.headers:
        if name.lower() == b"authorization":
            scheme, _, credential = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and 0 < len(credential) <= _MAX_BEARER:
                try:
                    return credential.strip().decode("ascii")
                except UnicodeDecodeError:
                    return None
            return None
    return None


def _raw_destination(origin: Origin) -> UpstreamConnection:
    # Bytes may arrive (SSH speaks first) before the splice is in place: `upgrading`
    # keeps them instead of treating them as an unasked-for HTTP response.
    connection = UpstreamConnection(origin)
    connection.upgrading = True
    return connection


class TcpAccess:
    """The gateway's `mode: tcp` handler (one per Gateway)."""

    def __init__(self, gateway: Gateway, credentials: CliCredentials | None) -> None:
        self.gateway = gateway
        self.credentials = credentials
        self.open: set[Splice] = set()

    async def handle(self, conn: ClientConnection, exchange: Exchange, runtime: Runtime, *,
                     route: Route, target: Target, host: str, client_ip: Any) -> bool:
        started = time.perf_counter()
        gateway = self.gateway
        upgrade = exchange.upgrade and exchange.method == "GET" and any(
            n.lower() == b"upgrade" and v.strip().lower() == PROTOCOL
            for n, v in exchange.headers)
        if not upgrade:
            return gateway.respond(conn, exchange, tcp_error(426, "tcp-upgrade-required"),
                                   keep=False)[0]
        config = runtime.config
        token = await self._token(exchange)
        policy = runtime.policy_for(route)
        verdict = await decide(
            sessions=gateway.sessions, token=token, policy=policy, route=route,
            client_ip=client_ip, method=METHOD, path=target.path, host=host,
            now=gateway.clock(), holidays=config.holidays, certificate=conn.certificate,
            devices=gateway.devices, device_ttl=config.session.cache_ttl,
            posture=config.devices)
        if verdict.decision.allow and not getattr(gateway.audit, "healthy", True):
            verdict = Verdict(AUDIT_DENY, verdict.session, 503)
        if not verdict.decision.allow:
            return self._refuse(conn, exchange, route=route, target=target, verdict=verdict,
                                policy=policy, client_ip=client_ip, started=started)
        session = verdict.session
        origin, destination, via = destination_of(route)
        timeouts = route.timeouts or config.timeouts
        try:
            upstream = await self._dial(origin, timeouts.connect)
        except TimeoutError:
            return self._failed(conn, exchange, route=route, verdict=verdict,
                                client_ip=client_ip, target=target, started=started,
                                status=504, code="destination-timeout")
        except OSError as exc:
            log.warning("TCP destination unreachable", extra={"fields": {
                "route": route.id, "destination": destination, "error": str(exc)}})
            return self._failed(conn, exchange, route=route, verdict=verdict,
                                client_ip=client_ip, target=target, started=started,
                                status=502, code="destination-unreachable")
        source = conn.peer_text if client_ip is conn.peer else str(client_ip)
        user = session.username if session else ""
        short = session.short_id if session else ""
        try:
            gateway.audit.record(TcpOpened(route=route.id, user=user, session=short,
                                           destination=destination, via=via, source_ip=source))
        except Exception:
            upstream.close()  # cannot audit the start: no connection (fail closed)
            return self._failed(conn, exchange, route=route,
                                verdict=Verdict(AUDIT_DENY, session, 503), client_ip=client_ip,
                                target=target, started=started, status=503, code="unavailable")
        gateway._account(conn, route, verdict, client_ip, exchange, path=target.path,
                         status=101, bytes_out=0, started=started)
        await self._splice(conn, upstream, route=route, target=target, host=host, token=token,
                           session=session, client_ip=client_ip, destination=destination,
                           source=source)
        return False

    async def _token(self, exchange: Exchange) -> str | None:
        """The session token inside the bearer credential; None when absent or not valid
        (then the decision is "not signed in", like a request without a cookie)."""
        credential = bearer(exchange)
        if credential is None or self.credentials is None:
            return None
        try:
            await self.credentials.ready()
            return self.credentials.open_credential(credential)
        except Exception:
            log.warning("CLI credential key unavailable: treating the request as signed out")
            return None

    async def _dial(self, origin: Origin, timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()

        def factory() -> UpstreamConnection:
            return _raw_destination(origin)

        async with asyncio.timeout(timeout):
            if origin.scheme != "connector":
                _, protocol = await loop.create_connection(factory, origin.host, origin.port)
                return protocol
            from sekisho.connector.relay import (
                SOCKET_ENV,
                RelayRefused,
                connect_local,
                dial,
                local_server,
            )

            path = self.gateway.pool.connector_socket or os.environ.get(SOCKET_ENV)
            if not path:
                raise OSError("connector broker not running (connector.listen unset)")
            host = f"[{origin.host}]" if ":" in origin.host else origin.host
            destination = f"{host}:{origin.port}"
            try:
                # The broker in this very process (`workers: 1`): straight onto the tunnel
                # stream, without the Unix socket's hop.
                if (server := local_server(path)) is not None:
                    _, local = await connect_local(server, "tcp", origin.site, destination,
                                                   factory)
                    return cast(UpstreamConnection, local)
                sock = await dial(path, "tcp", origin.site, destination)
            except RelayRefused as exc:
                raise OSError(f"connector: {exc.code}") from None
            _, protocol = await loop.create_unix_connection(factory, sock=sock)
            return protocol

    # -- refusals -------------------------------------------------------------------------

    def _refuse(self, conn: ClientConnection, exchange: Exchange, *, route: Route,
                target: Target, verdict: Verdict, policy: Any, client_ip: Any,
                started: float) -> bool:
        reasons = verdict.decision.reasons
        if verdict.deny_status != 403:
            response = tcp_error(verdict.deny_status, "unavailable", reasons)
        elif verdict.session is None:
            response = tcp_error(401, "credential-required", reasons)
        elif cures := step_up_cures(verdict, policy):
            response = tcp_error(403, "step-up-required", reasons, step_up=sorted(cures))
        else:
            response = tcp_error(403, "denied", reasons)
        keep, sent = self.gateway.respond(conn, exchange, response, keep=False)
        self.gateway._account(conn, route, verdict, client_ip, exchange, path=target.path,
                              status=response.status, bytes_out=sent, started=started)
        return keep

    def _failed(self, conn: ClientConnection, exchange: Exchange, *, route: Route,
                verdict: Verdict, client_ip: Any, target: Target, started: float, status: int,
                code: str) -> bool:
        keep, sent = self.gateway.respond(conn, exchange, tcp_error(status, code), keep=False)
        self.gateway._account(conn, route, verdict, client_ip, exchange, path=target.path,
                              status=status, bytes_out=sent, started=started)
        return keep

    # -- the splice -----------------------------------------------------------------------

    async def _splice(self, conn: ClientConnection, upstream: UpstreamConnection, *,
                      route: Route, target: Target, host: str, token: str | None,
                      session: SessionInfo | None, client_ip: Any, destination: str,
                      source: str) -> None:
        loop = conn.loop
        client_transport, upstream_transport = conn.transport, upstream.transport
        assert client_transport is not None and upstream_transport is not None
        opened = time.monotonic()
        splice = Splice(conn, upstream)
        done: asyncio.Future[None] = loop.create_future()
        end = {"ended": "", "trigger": "", "reasons": ()}

        def finish(ended: str) -> None:
            if not end["ended"]:
                end["ended"] = ended
            if not done.done():
                done.set_result(None)

        def to_upstream(data: bytes) -> None:
            splice.bytes_in += len(data)
            upstream_transport.write(data)

        def to_client(data: bytes) -> None:
            splice.bytes_out += len(data)
            client_transport.write(data)

        conn.write(_SWITCH)
        with_nodelay(client_transport)
        upstream.splice = to_client
        conn.splice = to_upstream
        conn.producer = upstream_transport  # client cannot keep up: stop reading upstream
        def destination_gone() -> None:
            conn.close()
            finish("destination")

        def client_gone() -> None:
            upstream.close()
            finish("client")

        upstream.client = _Side(conn, destination_gone)
        if upstream.upgraded:
            early, upstream.upgraded = upstream.upgraded, b""
            to_client(early)
        if conn.upgrade_data:
            early, conn.upgrade_data = conn.upgrade_data, b""
            to_upstream(early)
        upstream.upgrading = False
        conn.resume("upgrade")
        conn.on_lost = client_gone
        if conn.closed:
            client_gone()
        if upstream.closed:
            destination_gone()

        def cut(trigger: str, reasons: tuple[str, ...]) -> None:
            end.update(ended="cut", trigger=trigger, reasons=reasons)
            finish("cut")  # the watch has aborted both sockets already

        release = None
        watch = self.gateway.watch
        if watch is not None:
            release = watch.hook(
                token=token, session=session, route=route, host=host, path=target.path,
                method=METHOD, client_ip=client_ip, certificate=conn.certificate,
                ambiguous=bool(target.ambiguous), kind="tcp", on_cut=cut)(splice)
        self.open.add(splice)
        try:
            await done
        except asyncio.CancelledError:
            end["ended"] = end["ended"] or "shutdown"
            splice.cut()
            raise
        finally:
            self.open.discard(splice)
            if release is not None:
                release()
            self._closed(route=route, session=session, destination=destination,
                         source=source, splice=splice, opened=opened, end=end)

    def _closed(self, *, route: Route, session: SessionInfo | None, destination: str,
                source: str, splice: Splice, opened: float, end: dict[str, Any]) -> None:
        try:
            self.gateway.audit.record(TcpClosed(
                route=route.id, user=session.username if session else "",
                session=session.short_id if session else "", destination=destination,
                source_ip=source, ended=str(end["ended"]), trigger=str(end["trigger"]),
                reasons=tuple(end["reasons"]), bytes_in=splice.bytes_in,
                bytes_out=splice.bytes_out, duration_s=round(time.monotonic() - opened, 3)))
        except Exception as exc:  # the connection is over either way
            log.warning("TCP connection end could not be audited: %s", exc)


def with_nodelay(transport: Any) -> None:
    """Small interactive writes (SSH keystrokes) go out at once (no Nagle delay)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Side:
    """The client as the destination connection sees it: flow control passes through, and
    the destination closing ends the client too."""

    def __init__(self, client: ClientConnection, on_close: Callable[[], None]) -> None:
        self._client = client
        self._on_close = on_close

    def pause(self, reason: str) -> None:
        self._client.pause(reason)

    def resume(self, reason: str) -> None:
        self._client.resume(reason)

    def close(self) -> None:
        self._on_close()
