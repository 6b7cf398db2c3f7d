"""Open WebSockets, decided again while they last: on a timer, and at once when access changes.

An HTTP request is decided when it arrives; a WebSocket is decided once, at its upgrade, and
may then carry bytes for hours. The failure to avoid is an upgraded connection that outlives
the session, user, device or policy that let it in (Pomerium #1327). So every spliced
connection is registered here with the facts of its upgrade request, and `pep.decide` is
asked again — with the current runtime's policy for the route and fresh storage reads (no
cache) — every `session.recheck_interval` and at the session's absolute expiry; at once when
the change feed (`storage.changes`) announces a change of its session, user or device; for
every connection on a configuration reload; and for every connection when the feed cannot be
read (fail closed: a check that cannot reach storage denies); and once as soon as it is
registered, since a change may have landed between the upgrade's decision and the upstream's
101. Anything but "allow" cuts both sockets at once and is audited (`websocket.closed`).

A connection opened with a session must keep *that* session: the upstream was told who the
user is when it accepted the upgrade, so a public route does not keep a connection alive for
a user whose session ended. Only bytes from the client since the last check count as
activity for the idle timeout (an unattended tab must not keep its session alive).
Registration happens on a 101 only: plain HTTP requests pay nothing for this. A `sekisho tcp`
connection (gateway.tcp) is the same thing to the watch: a splice opened by one decided
request; it is registered with `kind="tcp"` (its route must still be `mode: tcp`) and audits
its own end (`tcp.closed`) through `on_cut`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sekisho.audit.events import WebSocketClosed
from sekisho.config.model import Route
from sekisho.gateway.mtls import ClientCertificate
from sekisho.gateway.pep import AUDIT_DENY, Verdict, decide
from sekisho.identity.principal import SessionInfo
from sekisho.policy import Decision
from sekisho.runtime import Runtime
from sekisho.services import AuditSink
from sekisho.storage.changes import DEVICE, SESSION, USER, ChangeRecord

if TYPE_CHECKING:
    from sekisho.devices.trust import DeviceTrust
    from sekisho.identity.sessions import SessionManager

log = logging.getLogger("sekisho.gateway")

# The route that let the connection in is gone or now sends it elsewhere: nothing allows it.
ROUTE_GONE = Decision(False, ("default-deny",))
# The session that opened it ended (revoked, expired, user disabled): the upstream's idea of
# who is on the other end is no longer true.
SESSION_GONE = Decision(False, ("user-unauthenticated",))
CONCURRENT_CHECKS = 4  # storage reads in flight at once; a reload re-checks all, in turns
EXPIRY_SLACK = 0.01  # seconds after the absolute expiry, so the check sees it expired

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Spliced(Protocol):
    """An open connection as the watch sees it (`proxy.Splice`, a screen session): bytes
    each way so far, and `cut()` to end it now."""

    bytes_in: int
    bytes_out: int

    def cut(self) -> None: ...


@dataclass(eq=False, slots=True)
class LiveConnection:
    """One open WebSocket and the facts of the request that opened it."""

    splice: Spliced
    token: str | None
    session: SessionInfo | None
    route: Route
    host: str
    path: str
    method: str
    client_ip: IPAddress
    certificate: ClientCertificate | None
    ambiguous: bool
    opened_at: float  # monotonic
    checked_bytes_in: int = 0
    timer: asyncio.TimerHandle | None = None
    checking: bool = False
    again: str = ""  # a trigger that arrived while a check ran: check once more after
    closed: bool = False
    keys: tuple[tuple[str, object], ...] = field(default=())
    kind: str = "websocket"  # or "tcp" (gateway.tcp): what the route must still carry
    # Told (trigger, reasons) instead of the `websocket.closed` record: a TCP splice audits
    # its own end (`tcp.closed`, with bytes and duration).
    on_cut: Callable[[str, tuple[str, ...]], None] | None = None

    @property
    def device_id(self) -> str | None:
        certificate = self.certificate
        return certificate.device.device_id if certificate and certificate.device else None


class _FreshSessions:
    """`SessionLookup` for re-checks: always from storage; touches only on client activity."""

    __slots__ = ("_activity", "_sessions")

    def __init__(self, sessions: SessionManager, activity: bool) -> None:
        self._sessions = sessions
        self._activity = activity

    async def lookup(self, token: str) -> SessionInfo | None:
        return await self._sessions.lookup_fresh(token, activity=self._activity)


class LiveConnections:
    """The registry of open WebSockets of this process, and their re-checks."""

    def __init__(self, current: Callable[[], Runtime], sessions: SessionManager,
                 audit: AuditSink, *, devices: DeviceTrust | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._current = current
        self._sessions = sessions
        self._audit = audit
        self._devices = devices
        self._clock = clock
        self._monotonic = monotonic
        self._all: set[LiveConnection] = set()
        self._index: dict[tuple[str, object], set[LiveConnection]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._turns = asyncio.Semaphore(CONCURRENT_CHECKS)
        self._closing = False
        self.closed_total = 0

    def __len__(self) -> int:
        return len(self._all)

    # -- registration (gateway/server.py, on a 101) --------------------------------------

    def hook(self, *, token: str | None, session: SessionInfo | None, route: Route, host: str,
             path: str, method: str, client_ip: IPAddress,
             certificate: ClientCertificate | None, ambiguous: bool, kind: str = "websocket",
             on_cut: Callable[[str, tuple[str, ...]], None] | None = None,
             ) -> Callable[[Spliced], Callable[[], None]]:
        """The `on_splice` hook for one upgrade request (a WebSocket, or a `sekisho tcp`
        connection: to the watch both are a splice opened by one decided request)."""

        def register(splice: Spliced) -> Callable[[], None]:
            live = LiveConnection(splice, token, session, route, host, path, method, client_ip,
                                  certificate, ambiguous, self._monotonic(), kind=kind,
                                  on_cut=on_cut)
            self._add(live)
            return lambda: self._remove(live)

        return register

    def _add(self, live: LiveConnection) -> None:
        keys: list[tuple[str, object]] = []
        if live.session is not None:
            keys += [(SESSION, live.session.session_id), (USER, live.session.user_id)]
        if live.device_id is not None:
            keys.append((DEVICE, live.device_id))
        live.keys = tuple(keys)
        self._all.add(live)
        for key in live.keys:
            self._index.setdefault(key, set()).add(live)
        # Decided before the upstream answered: a change delivered in between found nothing
        # registered to act on. One fresh check now closes that window (WebSockets only).
        self._start(live, "open")

    def _remove(self, live: LiveConnection) -> None:
        live.closed = True
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None
        self._all.discard(live)
        for key in live.keys:
            members = self._index.get(key)
            if members is not None:
                members.discard(live)
                if not members:
                    del self._index[key]

    # -- what triggers a check ----------------------------------------------------------

    def changed(self, rows: Sequence[ChangeRecord]) -> None:
        """Changes committed by any process (the change feed): forget, then re-check."""
        for row in rows:
            key: tuple[str, object]
            if row.kind == SESSION:
                self._sessions.evict([row.subject])
                key = (SESSION, row.subject)
            elif row.kind == USER:
                try:
                    user_id = int(row.subject)
                except ValueError:
                    continue
                self._sessions.evict_user(user_id)
                key = (USER, user_id)
            elif row.kind == DEVICE:
                if self._devices is not None:
                    self._devices.evict(row.subject)
                key = (DEVICE, row.subject)
            else:
                continue
            for live in list(self._index.get(key, ())):
                self._start(live, row.kind)

    def resync(self, cause: str) -> None:
        """Changes may have been missed ("storage", "gap"): forget everything, re-check all.

        Every cached device goes, not only those of open WebSockets: a plain HTTP request of
        a device suspended while the feed was unreadable must not be let in from the cache."""
        self._sessions.evict_all()
        if self._devices is not None:
            self._devices.evict_all()
        self.recheck_all(cause)

    def reloaded(self) -> None:
        """A new configuration snapshot (SIGHUP): every connection under the new policy."""
        self.recheck_all("reload")

    def recheck_all(self, trigger: str) -> None:
        for live in list(self._all):
            self._start(live, trigger)

    def close(self) -> None:
        """Shutdown: no more checks (the gateway closes the connections)."""
        self._closing = True
        for live in list(self._all):
            if live.timer is not None:
                live.timer.cancel()
        for task in list(self._tasks):
            task.cancel()

    # -- checking -----------------------------------------------------------------------

    def _schedule(self, live: LiveConnection) -> None:
        if live.closed or self._closing:
            return
        if live.timer is not None:
            live.timer.cancel()
        delay = self._current().config.session.recheck_interval
        if live.session is not None:
            until_expiry = live.session.expires_at.timestamp() - self._clock()
            delay = min(delay, max(until_expiry, 0.0) + EXPIRY_SLACK)
        live.timer = asyncio.get_running_loop().call_later(delay, self._start, live, "timer")

    def _start(self, live: LiveConnection, trigger: str) -> None:
        if live.closed or self._closing:
            return
        if live.checking:
            live.again = live.again or trigger  # what committed now may be missed by the run
            return
        task = asyncio.get_running_loop().create_task(self._check(live, trigger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, live: LiveConnection, trigger: str) -> None:
        live.checking = True
        try:
            while True:
                live.again = ""
                async with self._turns:
                    verdict = await self._decide(live)
                if live.closed:
                    return
                if not verdict.decision.allow:
                    self._cut(live, trigger, verdict.decision.reasons)
                    return
                if not live.again:
                    break
                trigger = live.again
            self._schedule(live)
        except Exception:
            log.exception("WebSocket re-check failed: closing it (fail closed)")
            if not live.closed:
                self._cut(live, trigger, ("policy-error",))
        finally:
            live.checking = False

    async def _decide(self, live: LiveConnection) -> Verdict:
        runtime = self._current()
        config = runtime.config
        route = runtime.routes.match(live.host, live.path)
        carries = route is not None and (
            route.mode == "tcp" if live.kind == "tcp"
            else route.websocket or route.mode == "screen")  # screen: gateway.screen
        if (route is None or route.id != live.route.id or route.to != live.route.to
                or not carries or (live.ambiguous and not route.allow_ambiguous_paths)):
            return Verdict(ROUTE_GONE, None)
        splice = live.splice
        activity = splice.bytes_in != live.checked_bytes_in
        live.checked_bytes_in = splice.bytes_in
        verdict = await decide(
            sessions=_FreshSessions(self._sessions, activity), token=live.token,
            policy=runtime.policy_for(route), route=route, client_ip=live.client_ip,
            method=live.method, path=live.path, host=live.host, now=self._clock(),
            holidays=config.holidays, certificate=live.certificate, devices=self._devices,
            device_ttl=0.0, posture=config.devices,
        )
        if not verdict.decision.allow:
            return verdict
        opened_by = live.session
        if opened_by is not None and (verdict.session is None
                                      or verdict.session.session_id != opened_by.session_id):
            return Verdict(SESSION_GONE, verdict.session)
        if not getattr(self._audit, "healthy", True):
            return Verdict(AUDIT_DENY, verdict.session, 503)  # cannot audit: deny
        return verdict

    def _cut(self, live: LiveConnection, trigger: str, reasons: tuple[str, ...]) -> None:
        splice = live.splice
        self._remove(live)
        splice.cut()
        self.closed_total += 1
        session = live.session
        duration = round(self._monotonic() - live.opened_at, 3)
        log.info("%s closed by re-evaluation", "TCP connection" if live.kind == "tcp"
                 else "WebSocket", extra={"fields": {
                     "route": live.route.id, "user": session.username if session else "",
                     "trigger": trigger, "reasons": list(reasons)}})
        if live.on_cut is not None:
            live.on_cut(trigger, reasons)
            return
        try:
            self._audit.record(WebSocketClosed(
                route=live.route.id, user=session.username if session else "",
                session=session.short_id if session else "", trigger=trigger,
                reasons=reasons, source_ip=str(live.client_ip), duration_s=duration,
                bytes_in=splice.bytes_in, bytes_out=splice.bytes_out))
        except Exception as exc:  # the connection is closed either way
            log.warning("WebSocket closure could not be audited: %s", exc)
