"""The connector agent: runs inside a closed network and dials out to the gateway.

It never listens. First run: it makes its own key (it never leaves the state directory),
sends a CSR with the one-time token, and keeps the certificate the gateway's CA returns;
later runs use that certificate (mutual TLS). The gateway is authenticated by a pin of its
public key (`sha256:<hex>`, printed by `sekisho connector token`) or by a CA file: the
token is never sent to a server that is not the gateway (a man in the middle would spend
it). Within the tunnel it serves the gateway's OPENs — and only for destinations its
allow-list names (exact `host:port`, or `CIDR:port` for IP addresses); anything else is
refused with RESET(REFUSED) and logged, so a compromised or misconfigured gateway cannot
use the agent to scan the closed network. A lost tunnel is re-dialled with jittered
exponential back-off (capped), so a gateway restart does not meet a thundering herd.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import secrets
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sekisho.connector.channel import Channel, ChannelClosed, TunnelStream
from sekisho.connector.endpoint import PATH as ENROL_PATH
from sekisho.connector.frames import ErrorCode, Role
from sekisho.connector.protocol import Connection, LocalProtocolError
from sekisho.connector.relay import CHUNK as RELAY_CHUNK
from sekisho.connector.relay import pump
from sekisho.errors import SekishoError

log = logging.getLogger("sekisho.connector.agent")

KEY_FILE, CERT_FILE, CHAIN_FILE, STATE_FILE = "key.pem", "cert.pem", "chain.pem", "state.json"
_JITTER = secrets.SystemRandom()  # "full jitter" back-off: agents never re-dial in step


class AgentError(SekishoError):
    """Configuration, enrolment or pin problems the agent cannot recover from by retrying."""

    code = "connector-agent"
    status = 400


def public_key_pin(cert: x509.Certificate) -> str:
    """`sha256:<hex>` of the certificate's SubjectPublicKeyInfo (survives re-issuance)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


@dataclass(frozen=True, slots=True)
class AllowRule:
    host: str | None  # exact lower-case name or IP text
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    port: int

    def permits(self, host: str, port: int) -> bool:
        if port != self.port:
            return False
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False  # a name is never matched by a CIDR (it could resolve anywhere)
        return host == self.host


def parse_allow(entry: str) -> AllowRule:
    """`intranet.city.local:80`, `10.20.0.5:8080`, `10.20.0.0/24:443`, `[fd00::1]:22`."""
    text = entry.strip().lower()
    host, colon, port_text = text.rpartition(":")
    if not colon or not port_text.isdigit() or not 1 <= int(port_text) <= 65535 or not host:
        raise AgentError(f"許可リストの項目が不正です (host:port か CIDR:port) / invalid allow "
                         f"entry (host:port or CIDR:port): {entry!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if "/" in host:
        try:
            network = ipaddress.ip_network(host, strict=True)
        except ValueError:
            raise AgentError(f"CIDR が不正です / invalid CIDR: {entry!r}") from None
        return AllowRule(None, network, int(port_text))
    return AllowRule(host, None, int(port_text))


def split_destination(destination: str) -> tuple[str, int]:
    host, _, port = destination.rpartition(":")
    host = host[1:-1] if host.startswith("[") else host
    return host.lower(), int(port)


@dataclass
class AgentSettings:
    gateway_host: str
    gateway_port: int
    state_dir: Path
    allow: tuple[AllowRule, ...]
    token: str = ""
    pin: str = ""  # "sha256:<hex>" of the gateway certificate's public key
    ca_file: str = ""  # or: verify the gateway against this CA bundle (and its host name)
    name: str = ""
    ping_interval: float = 15.0
    dead_after: float = 45.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    connect_timeout: float = 10.0


class Agent:
    """Enrol once, then keep one tunnel up and serve the gateway's streams."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.channel: Channel | None = None
        self.connections = 0  # tunnels established so far (tests and logs)
        self.refused = 0

    # -- enrolment ------------------------------------------------------------------------

    @property
    def enrolled(self) -> bool:
        base = self.settings.state_dir
        return all((base / name).exists() for name in (KEY_FILE, CERT_FILE, STATE_FILE))

    async def enrol(self) -> None:
        settings = self.settings
        if not settings.token:
            raise AgentError("未登録です: --token で一回限りのトークンを渡してください / not "
                             "enrolled: pass the one-time token with --token")
        base = settings.state_dir
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "connector")]))
               .sign(key, hashes.SHA256()))
        name = settings.name or socket.gethostname()[:128] or "connector"
        body = json.dumps({"token": settings.token, "name": name, "csr": csr.public_bytes(
            serialization.Encoding.PEM).decode("ascii")}).encode()
        status, answer = await self._post(body)
        if status != 200:
            raise AgentError(f"登録を拒否されました / enrolment refused ({status}): "
                             f"{answer.get('error', '')} {answer.get('message', '')}")
        _write(base / KEY_FILE, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        _write(base / CERT_FILE, str(answer["certificate"]).encode("ascii"))
        _write(base / CHAIN_FILE, str(answer["chain"]).encode("ascii"))
        _write(base / STATE_FILE, json.dumps({
            "connector_id": answer["connector_id"], "site": answer["site"],
            "gateway_pin": settings.pin}).encode())
        log.info("enrolled", extra={"fields": {"connector": answer["connector_id"],
                                               "site": answer["site"]}})

    async def _post(self, body: bytes) -> tuple[int, dict[str, object]]:
        reader, writer = await self._dial(client_cert=False)
        try:
            host = self.settings.gateway_host
            writer.write((f"POST {ENROL_PATH} HTTP/1.1\r\nHost: {host}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                          "Connection: close\r\n\r\n").encode() + body)
            raw = await asyncio.wait_for(reader.read(), 30.0)  # the gateway closes after it
        finally:
            writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
            answer = json.loads(payload)
        except (IndexError, ValueError):
            raise AgentError("ゲートウェイの応答を読めません / unreadable answer from the "
                             "gateway") from None
        return status, answer if isinstance(answer, dict) else {}

    # -- the tunnel -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Enrol if needed, then keep a tunnel up until `stop` is set."""
        stop = stop or asyncio.Event()
        attempt = 0
        while not stop.is_set():
            started = asyncio.get_running_loop().time()
            try:
                if not self.enrolled:  # a refused token raises AgentError: no point retrying
                    await self.enrol()
                await self._session(stop)
            except (OSError, ssl.SSLError, TimeoutError, ChannelClosed) as exc:
                log.warning("tunnel down", extra={"fields": {"error": str(exc) or
                                                             type(exc).__name__}})
            if asyncio.get_running_loop().time() - started > 10.0:
                attempt = 0  # it was up for a while: start the back-off again from the base
            delay = _JITTER.uniform(0, min(self.settings.backoff_cap,
                                           self.settings.backoff_base * 2 ** attempt))
            attempt = min(attempt + 1, 16)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _session(self, stop: asyncio.Event) -> None:
        reader, writer = await self._dial(client_cert=True)
        channel = Channel(reader, writer, Connection(Role.AGENT),
                          ping_interval=self.settings.ping_interval,
                          dead_after=self.settings.dead_after)
        await channel.start()
        self.channel = channel
        self.connections += 1
        log.info("tunnel up", extra={"fields": {"gateway": self._address()}})
        handlers: set[asyncio.Task[None]] = set()
        stopper = asyncio.create_task(stop.wait())
        try:
            while True:
                accept = asyncio.create_task(channel.accept())
                done, _ = await asyncio.wait({accept, stopper},
                                             return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    accept.cancel()
                    await channel.close(ErrorCode.NO_ERROR, "agent stopping")
                    return
                task = asyncio.create_task(self._serve(accept.result()))
                handlers.add(task)
                task.add_done_callback(handlers.discard)
        finally:
            stopper.cancel()
            for task in list(handlers):
                task.cancel()
            self.channel = None

    async def _serve(self, stream: TunnelStream) -> None:
        host, port = split_destination(stream.destination)
        if not any(rule.permits(host, port) for rule in self.settings.allow):
            self.refused += 1
            log.warning("destination not allow-listed: refused", extra={"fields": {
                "destination": stream.destination, "stream": stream.stream_id}})
            with contextlib.suppress(LocalProtocolError):
                stream.reset(ErrorCode.REFUSED)
            return
        try:
            # Reads of up to a whole frame (relay.CHUNK): fewer, larger DATA frames.
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=RELAY_CHUNK),
                self.settings.connect_timeout)
        except (OSError, TimeoutError) as exc:
            log.warning("destination unreachable", extra={"fields": {
                "destination": stream.destination, "error": type(exc).__name__}})
            with contextlib.suppress(LocalProtocolError):
                stream.reset(ErrorCode.TIMEOUT if isinstance(exc, TimeoutError)
                             else ErrorCode.CONNECT_FAILED)
            return
        await pump(reader, writer, stream)

    async def _dial(self, *, client_cert: bool
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        settings = self.settings
        context = self._context(client_cert)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            settings.gateway_host, settings.gateway_port, ssl=context,
            server_hostname=settings.gateway_host if settings.ca_file else None,
            limit=256 * 1024), settings.connect_timeout)
        if not settings.ca_file:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            pin = public_key_pin(x509.load_der_x509_certificate(der)) if der else ""
            # Checked before a single byte is sent: the token or tunnel goes nowhere else.
            if pin != self._pin():
                writer.transport.abort()
                raise AgentError(f"ゲートウェイの公開鍵が一致しません / the gateway's key does "
                                 f"not match the pin ({pin})")
        return reader, writer

    def _context(self, client_cert: bool) -> ssl.SSLContext:
        settings = self.settings
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.ca_file:
            context.load_verify_locations(settings.ca_file)
        else:  # authenticated by the pin, checked right after the handshake
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if client_cert:
            base = settings.state_dir
            context.load_cert_chain(str(base / CERT_FILE), str(base / KEY_FILE))
        return context

    def _pin(self) -> str:
        if self.settings.pin:
            return self.settings.pin
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((self.settings.state_dir / STATE_FILE).read_text())
            return str(state.get("gateway_pin") or "")
        return ""

    def _address(self) -> str:
        return f"{self.settings.gateway_host}:{self.settings.gateway_port}"


def allow_rules(entries: Iterable[str]) -> tuple[AllowRule, ...]:
    return tuple(parse_allow(entry) for entry in entries)


def _write(path: Path, data: bytes) -> None:
    """0600 from the first byte; O_NOFOLLOW: a planted symlink cannot redirect the key."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
