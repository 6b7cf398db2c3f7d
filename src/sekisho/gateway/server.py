"""The Gateway: listeners, the per-request enforcement flow, and graceful shutdown.

One request: parse (connection.py) → host and normalised path → route → reserved prefix or
JWKS → session → policy (pep.py) → audit health → header hygiene + assertion → upstream
(proxy.py) → audit record and metrics. Each step that cannot complete denies; the snapshot
(`current()`) is read once per request, so a reload never splits a request across configs.
A WebSocket, once upgraded, is handed to the watch (watch.py), which decides it again while
it lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl as ssl_module
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sekisho.audit.events import AccessDecision, AccessFields
from sekisho.config.model import ListenAddress, Route
from sekisho.devices.trust import DeviceTrust
from sekisho.gateway.assertion import AssertionSigner
from sekisho.gateway.connection import ClientConnection, ConnLimits, Exchange
from sekisho.gateway.decisions import DecisionMemo
from sekisho.gateway.headers import (
    canonical_name,
    client_address,
    forwarded_headers,
    is_trusted,
    trusted_forwarded_value,
    upstream_headers,
)
from sekisho.gateway.keys import KeyRing
from sekisho.gateway.pages import error_page, prefers_english
from sekisho.gateway.paths import InvalidTarget, Target, normalise, strip_port
from sekisho.gateway.pep import (
    AUDIT_DENY,
    Verdict,
    cookie_value,
    decide,
    find_session,
    signin_location,
    step_up_cures,
    step_up_location,
)
from sekisho.gateway.proxy import forward, request_head, status_line
from sekisho.gateway.screen import SCREEN_TARGETS, ScreenTransfer
from sekisho.gateway.tcp import TcpAccess
from sekisho.gateway.upstream import Origin, UpstreamError, UpstreamPool, parse_origin
from sekisho.gateway.watch import LiveConnections
from sekisho.identity.cli_login import CliCredentials
from sekisho.identity.sessions import session_id_for
from sekisho.observability import metrics
from sekisho.policy import Policy
from sekisho.runtime import Runtime
from sekisho.services import AuditSink, SessionLookup
from sekisho.web import PORTAL_PATH, RESERVED_PREFIX, Handler, Request, Response, redirect

ADMIN_PREFIXES = (RESERVED_PREFIX + "api/", RESERVED_PREFIX + "admin/")

log = logging.getLogger("sekisho.gateway")

JWKS_PATH = "/.well-known/sekisho/jwks.json"
_HOST_RE = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9.\-]+)(:[0-9]{1,5})?$")
KEY_RELOAD_INTERVAL = 60.0
_HOSTS_MAX = 1024  # raw Host values remembered; more only miss the cache (same result)
# Normalised request-targets remembered, per (raw target, host): the same few paths arrive
# again and again. Only short targets, so the memo stays small (1,024 × 256 bytes at most);
# a miss computes the identical `Target`, and errors are never remembered.
_TARGETS_MAX = 1024
_TARGET_BYTES_MAX = 256
METRICS_FLUSH_INTERVAL = 1.0  # /metrics lags the request path by at most this (operations.md)


# Where a request goes: (Host header lower-cased, host without port, target, route).
Plan = tuple[str, str, Target, Route]


def jwks_response(keyring: KeyRing) -> Response:
    return Response(200, [("Content-Type", "application/jwk-set+json"),
                          ("Cache-Control", "public, max-age=300")], keyring.jwks_json)


class Gateway:
    """The identity-aware reverse proxy (PEP). See docs/gateway.md."""

    def __init__(
        self,
        current: Callable[[], Runtime],
        sessions: SessionLookup,
        audit: AuditSink,
        keyring: KeyRing,
        handlers: Mapping[str, Handler],
        *,
        clock: Callable[[], float] = time.time,
        upstream_ssl: ssl_module.SSLContext | None = None,
        devices: DeviceTrust | None = None,
        watch: LiveConnections | None = None,
        cli_credentials: CliCredentials | None = None,
    ) -> None:
        self.current = current
        self.sessions = sessions
        self.audit = audit
        self.keyring = keyring
        self.screen = ScreenTransfer(self)  # `mode: screen` routes (gateway.screen)
        handlers = {**handlers, **self.screen.handlers()}
        self.handlers = handlers
        # Keys ending in "*" serve a whole subtree (the admin API and console route inside).
        self.subtrees = tuple(sorted(((k[:-1], h) for k, h in handlers.items()
                                      if k.endswith("*")), key=lambda kv: -len(kv[0])))
        self.devices = devices  # the registry behind client certificates (mTLS); None: off
        self.watch = watch  # open WebSockets, decided again while they last (gateway.watch)
        self.tcp = TcpAccess(self, cli_credentials)  # `mode: tcp` routes (gateway.tcp)
        self.clock = clock
        self.pool = UpstreamPool(upstream_ssl)
        self.signer = AssertionSigner(keyring, clock)
        self.decisions = DecisionMemo(sessions)  # allows reused while provably the same
        self.connections: set[ClientConnection] = set()
        self.closing = False
        self._servers: list[asyncio.AbstractServer] = []
        self._origins: dict[str, tuple[Origin, bytes, bytes]] = {}
        self._origin_runtime: Runtime | None = None
        self._reloader: asyncio.Task[None] | None = None
        self.tally = metrics.RequestTally()
        self._flusher: asyncio.TimerHandle | None = None
        # Per-snapshot byte constants (cookie names, assertion header), rebuilt on reload.
        self._consts_runtime: Runtime | None = None
        self._cookie_name = b""
        self._cookie_names: frozenset[bytes] = frozenset()
        self._assertion_header = b""
        # Raw Host value -> (lower-cased header, host without port), or None when invalid.
        self._hosts: dict[bytes, tuple[str, str] | None] = {}
        self._targets: dict[tuple[bytes, str], Target] = {}
        # (raw Host, raw request-target) -> where it goes, for this snapshot (`_plan`).
        self._plans: dict[tuple[bytes, bytes], Plan] = {}
        self._plans_runtime: Runtime | None = None
        self.audit_failures = 0
        self._audit_warned_at = 0.0

    @property
    def audit(self) -> AuditSink:
        return self._audit

    @audit.setter
    def audit(self, sink: AuditSink) -> None:
        self._audit = sink
        # `record(AccessDecision(*fields))`; a sink may take the fields directly.
        self._record_access: Callable[[AccessFields], None] = getattr(
            sink, "record_access", lambda fields: sink.record(AccessDecision(*fields)))

    # -- lifecycle ----------------------------------------------------------------------------

    def limits(self) -> ConnLimits:
        config = self.current().config
        return ConnLimits(config.limits.max_url_bytes, config.limits.max_header_count,
                          config.limits.max_header_bytes, config.timeouts.header,
                          config.timeouts.idle)

    async def start(self, listen: Sequence[ListenAddress], ssl: ssl_module.SSLContext | None,
                    reuse_port: bool = False) -> list[socket.socket]:
        loop = asyncio.get_running_loop()
        scheme = "https" if ssl is not None else "http"
        sockets: list[socket.socket] = []
        for address in listen:
            server = await loop.create_server(
                lambda: ClientConnection(self, scheme), address.host, address.port,
                ssl=ssl, reuse_port=reuse_port or None, backlog=1024,
            )
            self._servers.append(server)
            # typeshed says tuple; uvloop gives a list (compiled code checks the type).
            sockets.extend(cast(Any, server).sockets)
        self._reloader = loop.create_task(self._reload_keys())
        self._flusher = loop.call_later(METRICS_FLUSH_INTERVAL, self._flush_metrics)
        return sockets

    def _flush_metrics(self) -> None:
        try:
            self.tally.flush()
        except Exception:
            log.exception("metrics could not be flushed")
        if not self.closing:
            self._flusher = asyncio.get_running_loop().call_later(
                METRICS_FLUSH_INTERVAL, self._flush_metrics)

    async def close(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for `grace` seconds, then cut."""
        self.closing = True
        for server in self._servers:
            server.close()
        if self._reloader is not None:
            self._reloader.cancel()
        for connection in list(self.connections):
            if not connection.busy and not connection.queue:
                connection.close()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self.pool.close()
        if self._flusher is not None:
            self._flusher.cancel()
        self.tally.flush()

    async def _reload_keys(self) -> None:
        while True:
            await asyncio.sleep(KEY_RELOAD_INTERVAL)
            try:
                await asyncio.to_thread(self.keyring.reload)
            except Exception:
                log.exception("signing keys could not be reloaded; keeping the current ones")

    # -- per connection -----------------------------------------------------------------------

    async def serve(self, conn: ClientConnection) -> None:
        try:
            while True:
                exchange = await conn.next_exchange()
                if exchange is None:
                    return
                keep = await self.handle(conn, exchange, self.current())
                if not keep or conn.closed or (self.closing and not conn.queue):
                    conn.close()
                    return
                conn.finished()
        except Exception:
            log.exception("connection failed")
            conn.abort()

    def _parse_host(self, raw: bytes) -> tuple[str, str] | None:
        host_header = raw.decode("latin-1").strip().lower()
        parsed = (host_header, strip_port(host_header)) if _HOST_RE.match(host_header) else None
        if len(self._hosts) < _HOSTS_MAX:
            self._hosts[raw] = parsed
        return parsed

    def _normalise(self, raw: bytes, host: str) -> Target:
        target = normalise(raw, host)
        if len(raw) <= _TARGET_BYTES_MAX and len(self._targets) < _TARGETS_MAX:
            self._targets[raw, host] = target
        return target

    def _plan(self, runtime: Runtime, key: tuple[bytes, bytes], plan: Plan) -> Plan:
        """Remember where a (Host, request-target) pair goes under this snapshot: parsed
        host, normalised target and route are a pure function of the two raw values, so a
        repeated request skips them. Only requests routed to an upstream, only short targets
        (at most `_TARGETS_MAX` of them); errors and other outcomes are never remembered."""
        if self._plans_runtime is not runtime:
            self._plans, self._plans_runtime = {}, runtime
        if len(key[1]) <= _TARGET_BYTES_MAX and len(self._plans) < _TARGETS_MAX:
            self._plans[key] = plan
        return plan

    @staticmethod
    def _client(conn: ClientConnection, exchange: Exchange, config: Any
                ) -> tuple[Any, list[Any], str]:
        """(client address, X-Forwarded-For chain, scheme): the peer's own unless the peer
        is a trusted proxy (`trusted_proxies`), whose forwarded values are then believed."""
        trusted = config.trusted_proxies
        if not is_trusted(conn.peer, trusted):
            return conn.peer, [conn.peer], conn.scheme
        xff = [v for n, v in exchange.headers if canonical_name(n) == b"x-forwarded-for"]
        client_ip, chain = client_address(conn.peer, xff, trusted)
        proto_value = trusted_forwarded_value(exchange.headers, b"x-forwarded-proto", True)
        scheme = proto_value.decode("latin-1") if proto_value in (b"http", b"https") else \
            conn.scheme
        return client_ip, chain, scheme

    def _credentials(self, conn: ClientConnection, exchange: Exchange) -> tuple[str | None, str]:
        """The session token from the Cookie headers and its session id (SHA-256, as storage
        keys it; "" without a token). The answer is kept per connection and reused while the
        Cookie headers and the cookie name are byte for byte the same: a browser sends the
        same cookies on every request of a kept-alive connection."""
        name = self._cookie_name
        values = exchange.values(b"cookie")
        known = conn.credentials
        if known is not None and known[0] == name and known[1] == values:
            return known[2], known[3]
        token = cookie_value(exchange.headers, name)
        session_id = session_id_for(token) if token is not None else ""
        conn.credentials = (name, values, token, session_id)
        return token, session_id

    def _origin(self, runtime: Runtime, route: Route) -> tuple[Origin, bytes, bytes]:
        """The route's upstream origin, with its Host header and base path as bytes."""
        if self._origin_runtime is not runtime:
            self._origins, self._origin_runtime = {}, runtime
        found = self._origins.get(route.id)
        if found is None:
            origin = parse_origin(route.to)
            found = self._origins[route.id] = (origin, origin.host_header,
                                               origin.base_path.encode("ascii"))
        return found

    def _constants(self, runtime: Runtime) -> None:
        if self._consts_runtime is runtime:
            return
        config = runtime.config
        name = config.session.cookie_name.encode("latin-1")
        self._cookie_name = name
        self._cookie_names = frozenset({name, name + b"-csrf", b"sekisho_csrf",
                                        b"__Host-sekisho-csrf"})
        self._assertion_header = config.assertion.header.encode("ascii")
        self._consts_runtime = runtime

    def respond(self, conn: ClientConnection, exchange: Exchange, response: Response,
                keep: bool = True) -> tuple[bool, int]:
        keep = (keep and exchange.keep_alive and exchange.body_done and not exchange.upgrade
                and not self.closing)
        parts = [status_line(response.status)]
        for name, value in response.headers:
            parts += (name.encode("latin-1"), b": ", value.encode("utf-8"), b"\r\n")
        parts += (b"Content-Length: ", str(len(response.body)).encode(), b"\r\n")
        if not keep:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if exchange.method != "HEAD":
            parts.append(response.body)
        conn.write(b"".join(parts))
        return keep, len(response.body)

    def page(self, conn: ClientConnection, exchange: Exchange, status: int,
             reasons: Sequence[str] = ()) -> tuple[bool, int]:
        accept = language = cookies = ""
        for name, value in exchange.headers:
            key = name.lower()
            if key == b"accept":
                accept = value.decode("latin-1")
            elif key == b"accept-language":
                language = value.decode("latin-1")
            elif key == b"cookie":
                cookies += value.decode("latin-1")
        as_json = "application/json" in accept and "text/html" not in accept
        response = error_page(status, english=prefers_english(language, cookies),
                              as_json=as_json, reasons=reasons)
        keep = status not in (400, 414, 431) and not exchange.error
        return self.respond(conn, exchange, response, keep)

    # -- one request --------------------------------------------------------------------------

    async def handle(self, conn: ClientConnection, exchange: Exchange, runtime: Runtime) -> bool:
        started = time.perf_counter()
        if exchange.error:
            return self.page(conn, exchange, exchange.error)[0]
        config = runtime.config
        if exchange.host_count != 1:
            return self.page(conn, exchange, 400)[0]  # missing or doubled Host: host confusion
        key = (exchange.host_value, exchange.url)
        plan = self._plans.get(key) if self._plans_runtime is runtime else None
        if plan is None:
            raw_host = exchange.host_value
            hosts = self._hosts
            parsed = hosts[raw_host] if raw_host in hosts else self._parse_host(raw_host)
            if parsed is None:
                return self.page(conn, exchange, 400)[0]
            host_header, host = parsed
            target = self._targets.get((exchange.url, host))
            if target is None:
                try:
                    target = self._normalise(exchange.url, host)
                except InvalidTarget:
                    return self.page(conn, exchange, 400)[0]
            # The portal host (`portal.host`) serves Sekisho's own pages even without a route.
            if not runtime.routes.has_host(host) and host != config.portal.host:
                return self.page(conn, exchange, 404)[0]
            if target.path == JWKS_PATH:
                return self.respond(conn, exchange, jwks_response(self.keyring))[0]
            if target.path.startswith(RESERVED_PREFIX):
                client_ip, _, scheme = self._client(conn, exchange, config)
                return await self._reserved(conn, exchange, runtime, target=target, host=host,
                                            client_ip=str(client_ip), scheme=scheme)
            route = runtime.routes.match(host, target.path)
            if route is None:
                if host == config.portal.host and target.path == "/" and \
                        exchange.method in ("GET", "HEAD"):
                    return self.respond(conn, exchange, redirect(PORTAL_PATH, 302))[0]
                return self.page(conn, exchange, 404)[0]
            if target.ambiguous and not route.allow_ambiguous_paths:
                return self.page(conn, exchange, 400)[0]  # path confusion: see gateway.paths
            if route.mode == "tcp":  # `sekisho tcp`: bearer credential, splice (gateway.tcp)
                return await self.tcp.handle(conn, exchange, runtime, route=route,
                                             target=target, host=host,
                                             client_ip=self._client(conn, exchange, config)[0])
            plan = self._plan(runtime, key, (host_header, host, target, route))
        host_header, host, target, route = plan
        client_ip, chain, scheme = self._client(conn, exchange, config)

        self._constants(runtime)
        token, session_id = self._credentials(conn, exchange)
        policy = runtime.policy_for(route)
        client_text = conn.peer_text if client_ip is conn.peer else str(client_ip)
        memo_key = verdict = None
        if (token is not None and policy is not None and not policy.clock
                and conn.certificate is None):
            memo_key = (session_id, route.id, exchange.method, target.path, host, client_text)
            verdict = self.decisions.recall(runtime, memo_key)
        if verdict is None:
            verdict = await decide(
                sessions=self.sessions, token=token, policy=policy,
                route=route, client_ip=client_ip, method=exchange.method, path=target.path,
                host=host, now=self.clock(), holidays=config.holidays,
                certificate=conn.certificate, devices=self.devices,
                device_ttl=config.session.cache_ttl, posture=config.devices,
            )
            if memo_key is not None:
                self.decisions.remember(runtime, memo_key, verdict)
        if verdict.decision.allow and not getattr(self._audit, "healthy", True):
            verdict = Verdict(AUDIT_DENY, verdict.session, 503)  # cannot audit: deny
        if not verdict.decision.allow:
            return self._deny(conn, exchange, route=route, target=target, verdict=verdict,
                              policy=policy, client_ip=client_ip, scheme=scheme,
                              host_header=host_header, started=started)

        if route.mode == "screen" and route.to.startswith(SCREEN_TARGETS):  # 画面転送 (VNC)
            return await self.screen.handle(
                conn, exchange, runtime, route=route, target=target, verdict=verdict,
                token=token, client_ip=client_ip, scheme=scheme, host=host,
                host_header=host_header, started=started)
        session = verdict.session
        status, bytes_out, keep = 502, 0, False
        try:
            status, bytes_out, keep = await self._proxy(
                conn, exchange, runtime, route=route, target=target, session=session,
                chain=chain, scheme=scheme, host_header=host_header, cookie_token=token,
                host=host, client_ip=client_ip)
        except UpstreamError as exc:
            if exc.started or conn.closed:
                status, keep = 502, False
                conn.abort()
            else:
                status = 504 if exc.timeout else 502
                keep, bytes_out = self.page(conn, exchange, status)
        except Exception:
            log.exception("proxying failed")
            status, keep = 502, False
            conn.abort()
        self._account(conn, route, verdict, client_ip, exchange, path=target.path, status=status,
                      bytes_out=bytes_out, started=started)
        return keep

    async def _proxy(self, conn: ClientConnection, exchange: Exchange, runtime: Runtime, *,
                     route: Route, target: Target, session: Any, chain: list[Any],
                     scheme: str, host_header: str, cookie_token: str | None, host: str,
                     client_ip: Any) -> tuple[int, int, bool]:
        config = runtime.config
        origin, origin_host, base_path = self._origin(runtime, route)
        timeouts = route.timeouts or config.timeouts
        websocket = route.websocket and exchange.upgrade and exchange.method == "GET" and any(
            v.strip().lower() == b"websocket" for v in exchange.values(b"upgrade"))
        headers = upstream_headers(exchange.headers, cookie_names=self._cookie_names,
                                   websocket=websocket)
        host_bytes = host_header.encode("latin-1")
        if len(chain) == 1 and chain[0] is conn.peer:
            proto = b"https" if scheme == "https" else b"http"
            headers += (b"X-Forwarded-For", b": ", conn.peer_bytes, b"\r\n",
                        b"X-Forwarded-Proto", b": ", proto, b"\r\n",
                        b"X-Forwarded-Host", b": ", host_bytes, b"\r\n")
        else:
            headers += forwarded_headers(chain, scheme, host_bytes)
        if session is not None:
            headers += (self._assertion_header, b": ",
                        self.signer.token_bytes(config.assertion, route.id, session), b"\r\n")
        path = base_path + target.upstream.encode("ascii")
        if target.query or b"?" in exchange.url:
            path += b"?" + target.query.encode("latin-1")
        upstream_host = host_bytes if route.preserve_host else origin_host
        head = request_head(exchange.method, path, upstream_host, headers, exchange)
        on_splice = None
        if websocket and self.watch is not None:  # only upgrades: HTTP requests pay nothing
            on_splice = self.watch.hook(
                token=cookie_token, session=session, route=route, host=host, path=target.path,
                method=exchange.method, client_ip=client_ip, certificate=conn.certificate,
                ambiguous=bool(target.ambiguous))
        outcome = await forward(self.pool, conn, exchange, origin, head,
                                connect_timeout=timeouts.connect, read_timeout=timeouts.read,
                                websocket=websocket, on_splice=on_splice)
        self.tally.upstream_latency(route.id, outcome.upstream_seconds)
        return outcome.status, outcome.bytes_out, outcome.keep_alive

    def _deny(self, conn: ClientConnection, exchange: Exchange, *, route: Route, target: Target,
              verdict: Verdict, policy: Policy | None, client_ip: Any, scheme: str,
              host_header: str, started: float) -> bool:
        wants_json = any(
            n.lower() == b"accept" and b"application/json" in v and b"text/html" not in v
            for n, v in exchange.headers)
        if verdict.session is None and verdict.deny_status == 403:
            if wants_json:
                keep, sent = self.page(conn, exchange, 401, verdict.decision.reasons)
                status = 401
            else:
                location = signin_location(scheme, host_header,
                                           exchange.url.decode("latin-1"))
                keep, sent = self.respond(conn, exchange, Response(
                    302, [("Location", location), ("Cache-Control", "no-store")]))
                status = 302
        elif not wants_json and (cures := step_up_cures(verdict, policy)):
            location = step_up_location(scheme, host_header, exchange.url.decode("latin-1"),
                                        cures)
            keep, sent = self.respond(conn, exchange, Response(
                303 if exchange.method not in ("GET", "HEAD") else 302,
                [("Location", location), ("Cache-Control", "no-store")]))
            status = 302
        else:
            status = verdict.deny_status
            keep, sent = self.page(conn, exchange, status, verdict.decision.reasons)
        self._account(conn, route, verdict, client_ip, exchange, path=target.path, status=status,
                      bytes_out=sent, started=started)
        return keep

    async def _reserved(self, conn: ClientConnection, exchange: Exchange, runtime: Runtime, *,
                        target: Target, host: str, client_ip: str, scheme: str) -> bool:
        handler = self.handlers.get(target.path)
        if handler is None:
            handler = next((h for prefix, h in self.subtrees
                            if target.path.startswith(prefix)), None)
        if handler is None or target.ambiguous:
            return self.page(conn, exchange, 404 if handler is None else 400)[0]
        config = runtime.config
        # Sign-in forms stay small (a big body there is only ever an attack); the admin API
        # and console carry whole configuration files, so they get their own, larger cap.
        limit = (config.limits.max_admin_body_bytes if target.path.startswith(ADMIN_PREFIXES)
                 else config.limits.max_form_bytes)
        body = await self._read_body(conn, exchange, limit, config.timeouts.header)
        if body is None:
            return self.page(conn, exchange, 413)[0]
        token = cookie_value(exchange.headers, config.session.cookie_name.encode("latin-1"))
        request = Request(
            method=exchange.method, target=exchange.url.decode("latin-1"), path=target.path,
            query=target.query,
            headers=[(n.decode("latin-1").lower(), v.decode("latin-1"))
                     for n, v in exchange.headers],
            client_ip=client_ip, scheme=scheme, host=host, body=body,
            certificate=conn.certificate,
        )
        try:
            request.session = await find_session(self.sessions, token)
        except Exception:
            log.warning("session lookup failed for a reserved path; continuing signed out")
        try:
            response = await handler(request)
        except Exception:
            log.exception("handler for %s failed", target.path)
            return self.page(conn, exchange, 503)[0]
        return self.respond(conn, exchange, response)[0]

    async def _read_body(self, conn: ClientConnection, exchange: Exchange, limit: int,
                         timeout: float) -> bytes | None:
        if exchange.content_length and exchange.content_length > limit:
            return None
        if exchange.expect and not exchange.body_done:
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        chunks: list[bytes] = []
        total = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for chunk in conn.take_pending(exchange):
                        chunks.append(chunk)
                        total += len(chunk)
                    if total > limit:
                        return None
                    if exchange.body_done or conn.closed:
                        break
                    exchange.waiter = conn.loop.create_future()
                    await exchange.waiter
        except TimeoutError:
            return None
        return b"".join(chunks)

    # -- accounting ---------------------------------------------------------------------------

    def _account(self, conn: ClientConnection, route: Route, verdict: Verdict, client_ip: Any,
                 exchange: Exchange, *, path: str, status: int, bytes_out: int,
                 started: float) -> None:
        decision = verdict.decision
        session = verdict.session
        try:
            self._record_access((
                route.id, session.username if session else "",
                "allow" if decision.allow else "deny", decision.reasons,
                conn.peer_text if client_ip is conn.peer else str(client_ip),
                exchange.method, path, status, exchange.body_bytes, bytes_out,
                round((time.perf_counter() - started) * 1_000_000) / 1000,  # ms, to the µs
                session.short_id if session else ""))
        except Exception as exc:
            self.audit_failures += 1
            now = time.monotonic()
            if now - self._audit_warned_at > 1.0:  # one line a second, not one per request
                self._audit_warned_at = now
                log.warning("access decisions could not be audited (%d so far): %s",
                            self.audit_failures, exc)
        tally = self.tally
        tally.exchange(route.id, status, "allow" if decision.allow else "deny", decision.reasons)
