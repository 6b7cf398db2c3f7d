"""The gateway's end of the tunnels: accepts connectors, balances streams, cuts the revoked.

One listener (`connector.listen`) speaks TLS with the gateway's certificate and asks for a
client certificate from the internal CA:

- **with** one, the connection is a tunnel. The certificate must name a connector (SAN
  `urn:sekisho:connector:<id>`) whose registry row holds that very serial and is active —
  checked on every handshake, not only through a CRL, so a revoked connector cannot come back
  with a certificate that is still within its dates;
- **without** one, the only thing it may do is enrol (`connector.endpoint`): spend a
  one-time token for a certificate. It can never open or carry a stream.

Streams for a site go to the tunnel with the fewest open streams among those that answered
recently (`silent_for`); a tunnel that closes while a stream is being opened is skipped for
the next. A sweep every `sweep_interval` seconds re-reads the registry for every connected
connector and cuts the ones revoked meanwhile (by any process: CLI, admin API, another
replica). Storage errors refuse new tunnels (fail closed) but do not cut live ones: a
database blip must not take every closed network off line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography import x509

from sekisho.audit.events import (
    AuditEvent,
    ConnectorConnected,
    ConnectorDisconnected,
    ConnectorStreamRefused,
)
from sekisho.connector import endpoint
from sekisho.connector.channel import Channel, ChannelClosed, TunnelStream
from sekisho.connector.enrolment import connector_id_of
from sekisho.connector.frames import ErrorCode, Role, StreamKind
from sekisho.connector.protocol import Connection
from sekisho.connector.relay import RelayRefused, RelayServer
from sekisho.errors import SekishoError
from sekisho.storage import connectors as store
from sekisho.storage.connectors import Connector

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from sekisho.services import AuditSink

log = logging.getLogger("sekisho.connector.broker")

# Reset codes from the agent that mean "this stream never reached its destination".
_REFUSALS = {ErrorCode.REFUSED: "refused", ErrorCode.CONNECT_FAILED: "connect-failed",
             ErrorCode.TIMEOUT: "connect-timeout"}


@dataclass(eq=False)
class Tunnel:
    connector: Connector
    channel: Channel
    source_ip: str
    opened: int = 0  # streams carried so far
    since: float = field(default_factory=time.monotonic)


class Broker:
    """Holds every connected tunnel of this installation's process and opens streams on them."""

    sweep_interval = 1.0
    touch_interval = 30.0
    handshake_timeout = 10.0

    def __init__(self, engine: Engine, audit: AuditSink, enrolment: endpoint.Enrolment, *,
                 ping_interval: float = 15.0, dead_after: float = 45.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.audit = audit
        self.enrolment = enrolment
        self.ping_interval = ping_interval
        self.dead_after = dead_after
        self.clock = clock
        self.tunnels: dict[str, list[Tunnel]] = {}
        self.relay: RelayServer | None = None
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str, port: int, context: ssl.SSLContext,
                    socket_path: str) -> None:
        self._server = await asyncio.start_server(
            self._accept, host, port, ssl=context,
            ssl_handshake_timeout=self.handshake_timeout, limit=256 * 1024)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.relay = RelayServer(socket_path, self.open)
        self.relay.on_failed = self._stream_failed
        await self.relay.start()
        self._sweeper = asyncio.create_task(self._sweep())
        log.info("connector broker listening", extra={"fields": {
            "listen": f"{host}:{self.port}", "socket": socket_path}})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.relay is not None:
            await self.relay.close()
        for tunnels in list(self.tunnels.values()):
            for tunnel in list(tunnels):
                await tunnel.channel.close(ErrorCode.NO_ERROR, "gateway shutting down")
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def connected(self, site: str) -> list[Tunnel]:
        return [t for t in self.tunnels.get(site, ()) if t.channel.closed is None]

    # -- streams --------------------------------------------------------------------------

    async def open(self, kind: StreamKind, site: str, destination: str) -> TunnelStream:
        """A new stream to `destination` on the least busy healthy tunnel of `site`."""
        live = self.connected(site)
        # A tunnel whose pings went unanswered is skipped while another answers; if none
        # does, the others are still tried (a slow link beats a certain 502).
        healthy = [t for t in live if t.channel.silent_for < self.ping_interval + 5.0]
        for tunnel in sorted(healthy or live, key=lambda t: t.channel.open_streams):
            try:
                stream = await tunnel.channel.open_stream(kind, destination)
            except ChannelClosed:
                continue  # it went away between the choice and the OPEN: try the next
            tunnel.opened += 1
            return stream
        log.warning("no connector for the site", extra={"fields": {
            "site": site, "destination": destination}})
        self._record(ConnectorStreamRefused(connector="", site=site, destination=destination,
                                            code="no-connector"))
        raise RelayRefused("no-connector", f"サイト {site} のコネクタが接続していません / no "
                           f"connector of site {site} is connected")

    def _stream_failed(self, stream: TunnelStream, site: str, reason: int) -> None:
        try:
            code = _REFUSALS.get(ErrorCode(reason))
        except ValueError:  # a code from a newer agent: not one of the refusals we know
            return
        if code is None:
            return
        tunnel = self._tunnel_of(stream.channel)
        connector = tunnel.connector.connector_id if tunnel else ""
        log.warning("connector refused a stream", extra={"fields": {
            "connector": connector, "site": site, "destination": stream.destination,
            "code": code}})
        self._record(ConnectorStreamRefused(connector=connector, site=site,
                                            destination=stream.destination, code=code))

    def _tunnel_of(self, channel: Channel) -> Tunnel | None:
        for tunnels in self.tunnels.values():
            for tunnel in tunnels:
                if tunnel.channel is channel:
                    return tunnel
        return None

    # -- tunnels --------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except Exception:
            log.exception("connector connection failed")
            writer.close()
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source_ip = str(peer[0]) if peer else ""
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is None:
            await self.enrolment.serve(reader, writer, source_ip)
            return
        connector = await self._registered(x509.load_der_x509_certificate(der), source_ip)
        if connector is None:
            writer.close()
            return
        channel = Channel(reader, writer, Connection(Role.GATEWAY),
                          ping_interval=self.ping_interval, dead_after=self.dead_after)
        try:
            await channel.start()
        except ChannelClosed as exc:
            log.warning("connector handshake failed", extra={"fields": {
                "connector": connector.connector_id, "error": str(exc)}})
            return
        tunnel = Tunnel(connector, channel, source_ip)
        if not self._record(ConnectorConnected(connector=connector.connector_id,
                                               site=connector.site, accepted=True, reason="",
                                               source_ip=source_ip), required=True):
            await channel.close(ErrorCode.INTERNAL, "audit unavailable")
            return
        self.tunnels.setdefault(connector.site, []).append(tunnel)
        log.info("connector connected", extra={"fields": {
            "connector": connector.connector_id, "site": connector.site, "peer": source_ip}})
        with contextlib.suppress(SekishoError):
            await asyncio.to_thread(store.touch, self.engine, [connector.connector_id],
                                    now=datetime.now(UTC))
        try:
            await channel.wait_closed()
        finally:
            self.tunnels[connector.site].remove(tunnel)
            reason = str(channel.closed) if channel.closed is not None else "closed"
            log.info("connector disconnected", extra={"fields": {
                "connector": connector.connector_id, "site": connector.site,
                "reason": reason}})
            self._record(ConnectorDisconnected(
                connector=connector.connector_id, site=connector.site, reason=reason[:200],
                streams=tunnel.opened, source_ip=source_ip))

    async def _registered(self, cert: x509.Certificate, source_ip: str) -> Connector | None:
        """The active connector this certificate belongs to, or None (refusal audited)."""
        serial = f"{cert.serial_number:x}"
        claimed = connector_id_of(cert)
        try:
            record = await asyncio.to_thread(store.by_serial, self.engine, serial)
        except SekishoError as exc:  # cannot check the registry: refuse (fail closed)
            log.error("connector registry unavailable", extra={"fields": {"error": str(exc)}})
            return None
        reason = ""
        if record is None or claimed is None or record.connector_id != claimed:
            reason = "unknown-certificate"
        elif record.status != "active":
            reason = "revoked"
        if reason:
            log.warning("connector refused", extra={"fields": {
                "connector": claimed or "", "serial": serial, "reason": reason,
                "peer": source_ip}})
            self._record(ConnectorConnected(
                connector=record.connector_id if record else "", site=record.site if record
                else "", accepted=False, reason=reason, source_ip=source_ip))
            return None
        return record

    async def _sweep(self) -> None:
        last_touch = time.monotonic()
        while True:
            await asyncio.sleep(self.sweep_interval)
            live = [t for tunnels in self.tunnels.values() for t in tunnels]
            ids = {t.connector.connector_id for t in live}
            if not ids:
                continue
            try:
                active = await asyncio.to_thread(store.active_among, self.engine, ids)
                if time.monotonic() - last_touch >= self.touch_interval:
                    last_touch = time.monotonic()
                    await asyncio.to_thread(store.touch, self.engine, ids,
                                            now=datetime.now(UTC))
            except SekishoError as exc:
                log.error("connector registry unavailable; live tunnels kept",
                          extra={"fields": {"error": str(exc)}})
                continue
            for tunnel in live:
                if tunnel.connector.connector_id not in active and tunnel.channel.closed is None:
                    log.warning("connector revoked: tunnel cut", extra={"fields": {
                        "connector": tunnel.connector.connector_id}})
                    await tunnel.channel.close(ErrorCode.REFUSED, "connector revoked")

    def _record(self, event: AuditEvent, *, required: bool = False) -> bool:
        try:
            self.audit.record(event)
        except SekishoError as exc:
            log.error("cannot audit a connector event", extra={"fields": {
                "event": event.event_type, "error": str(exc)}})
            return not required
        return True
