"""TCP access (gateway.tcp): a real Gateway, SessionManager, change feed and CLI credentials
over SQLite, a real TCP echo server as the destination, raw-socket clients and the CLI's own
stream client (`cli._tcp_client`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sekisho.audit.events import AccessDecision, TcpClosed, TcpOpened
from sekisho.cli._tcp_client import Gateway as TcpGateway
from sekisho.cli._tcp_client import LocalListener, Refused, open_stream
from sekisho.config import parse_config
from sekisho.config.model import Config, Networks, Route, SessionSettings
from sekisho.config.problems import InvalidConfig
from sekisho.gateway.keys import KeyRing
from sekisho.identity.cli_login import CliCredentials
from sekisho.identity.sessions import SessionManager
from sekisho.runtime import Runtime, build_runtime
from sekisho.storage import sessions as session_store
from sekisho.storage.database import create_database_engine, upgrade
from sekisho.storage.keys import SigningKeyRepository

from .servers import Harness, ListAudit, WatchedStart

POLICIES: dict[str, Any] = {
    "staff": {"allow": {"and": [{"group": ["staff"]}]}},
    "admins": {"allow": {"and": [{"group": ["admins"]}]}},
}
SSH = "ssh.localhost"


class TcpGatewayKit:
    def __init__(self, tmp_path: Path, settings: SessionSettings) -> None:
        self.harness = Harness()
        self.engine = create_database_engine(f"sqlite:///{tmp_path}/gw.db")
        upgrade(self.engine)
        keyring = KeyRing(SigningKeyRepository(self.engine))
        keyring.ensure()
        self.sessions = SessionManager(self.engine, settings)
        self.audit = ListAudit()
        self.credentials = CliCredentials(self.engine)
        self.echo_port = self.harness.call(self._start_echo())
        self.settings = settings
        self.runtime = self.build()
        self.watched = WatchedStart(self.harness, self.engine, self.sessions, self.audit,
                                    keyring, lambda: self.runtime,
                                    cli_credentials=self.credentials)
        self.live, self.gateway = self.watched.live, self.watched.gateway
        self.port, self.feed, self.user = self.watched.port, self.watched.feed, self.watched.user

    async def _start_echo(self) -> int:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                writer.write(b"SSH-2.0-echo\r\n")  # speaks first, like sshd
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        self.echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
        return int(self.echo_server.sockets[0].getsockname()[1])

    def build(self, policy: str = "staff", **config: Any) -> Runtime:
        to = f"tcp://127.0.0.1:{self.echo_port}"
        routes = (
            Route(id="ssh", host=SSH, path_prefix="/", to=to, policy=policy, mode="tcp"),
            Route(id="web", host="web.localhost", path_prefix="/", to="http://127.0.0.1:9",
                  policy=policy),
            Route(id="dead", host="dead.localhost", path_prefix="/", to="tcp://127.0.0.1:9",
                  policy=policy, mode="tcp"),
            Route(id="lg", host="lg.localhost", path_prefix="/", to=to, policy=policy,
                  mode="tcp", segment="lgwan"),
        )
        return build_runtime(Config(source="<test>", routes=routes, policies=POLICIES,
                                    session=self.settings, **config))

    def sign_in(self) -> tuple[str, str]:
        """(session token, CLI credential sealed around it)."""
        token, info = self.sessions.create(self.user, ["pwd"], "127.0.0.1", "test")
        return token, self.credentials.seal_credential(token, info.expires_at.timestamp())

    def connect(self, credential: str | None, host: str = SSH,
                extra: str = "") -> tuple[socket.socket, int, bytes]:
        """Raw client: (socket, status, what followed the head)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        auth = f"Authorization: Bearer {credential}\r\n" if credential else ""
        sock.sendall((f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
                      f"Upgrade: sekisho-tcp\r\n{auth}{extra}\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return sock, int(head.split(b" ")[1]), rest

    def refusal(self, credential: str | None, host: str = SSH, extra: str = ""
                ) -> tuple[int, dict[str, Any]]:
        sock, status, rest = self.connect(credential, host, extra)
        with sock:
            while chunk := sock.recv(65536):
                rest += chunk
        return status, json.loads(rest)

    def settled(self) -> None:
        deadline = time.monotonic() + 5
        while any(live.checking or live.timer is None for live in list(self.live._all)):
            assert time.monotonic() < deadline, "the registration check did not finish"
            time.sleep(0.01)

    def events(self, kind: type) -> list[Any]:
        return [e for e in self.audit.events if isinstance(e, kind)]

    def wait_for(self, kind: type, count: int = 1) -> list[Any]:
        deadline = time.monotonic() + 5
        while len(self.events(kind)) < count:
            assert time.monotonic() < deadline, f"no {kind.__name__} recorded"
            time.sleep(0.01)
        return self.events(kind)

    def close(self) -> None:
        self.watched.stop()

        async def stop_echo() -> None:
            self.echo_server.close()

        self.harness.call(stop_echo())
        self.harness.stop()
        self.engine.dispose()


def echoed(sock: socket.socket, rest: bytes, payload: bytes) -> bytes:
    """Read the greeting, send `payload`, return what came back."""
    data = rest
    while b"\r\n" not in data:
        data += sock.recv(65536)
    assert data.startswith(b"SSH-2.0-echo\r\n")
    sock.sendall(payload)
    back = data[len(b"SSH-2.0-echo\r\n"):]
    while len(back) < len(payload):
        chunk = sock.recv(65536)
        assert chunk
        back += chunk
    return back


def cut_within(sock: socket.socket, seconds: float) -> float:
    started = time.monotonic()
    sock.settimeout(seconds + 1)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(65536):
            pass
    return time.monotonic() - started


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[TcpGatewayKit]:
    gateway = TcpGatewayKit(tmp_path, SessionSettings(cache_ttl=60.0))
    yield gateway
    gateway.close()


def test_allowed_connection_is_spliced_and_audited(kit: TcpGatewayKit) -> None:
    _, credential = kit.sign_in()
    sock, status, rest = kit.connect(credential)
    payload = bytes(range(256)) * 4096  # 1 MiB, both ways
    with sock:
        assert status == 101
        assert echoed(sock, rest, payload) == payload
    [closed] = kit.wait_for(TcpClosed)
    [opened] = kit.events(TcpOpened)
    decision = next(e for e in kit.events(AccessDecision) if e.route == "ssh")
    assert (decision.decision, decision.status, decision.user) == ("allow", 101, "hanako")
    assert (opened.route, opened.user, opened.via) == ("ssh", "hanako", "direct")
    assert opened.destination == f"127.0.0.1:{kit.echo_port}"
    assert (closed.ended, closed.user, closed.reasons) == ("client", "hanako", ())
    assert closed.bytes_in == len(payload)
    assert closed.bytes_out == len(payload) + len(b"SSH-2.0-echo\r\n")
    assert closed.duration_s > 0
    assert len(kit.live) == 0


def test_no_credential_or_a_cookie_is_not_signed_in(kit: TcpGatewayKit) -> None:
    token, _ = kit.sign_in()
    status, body = kit.refusal(None)
    assert (status, body["error"]) == (401, "credential-required")
    assert "sekisho login" in body["message"] and "sekisho login" in body["message_en"]
    # The browser's cookie never opens a TCP stream (a web page cannot make one for the user).
    status, body = kit.refusal(None, extra=f"Cookie: __Host-sekisho={token}\r\n")
    assert (status, body["error"]) == (401, "credential-required")
    # Nor does the raw session token as a bearer: only a sealed CLI credential.
    status, _ = kit.refusal(token)
    assert status == 401
    assert not kit.events(TcpOpened)


def test_forged_altered_or_expired_credentials_are_refused(kit: TcpGatewayKit) -> None:
    token, credential = kit.sign_in()
    flipped = credential[:-2] + ("A" if credential[-2] != "A" else "B") + credential[-1]
    assert kit.refusal(flipped)[0] == 401
    other = CliCredentials(create_database_engine("sqlite://"))  # another installation's key
    upgrade(other._engine)
    assert kit.refusal(other.seal_credential(token, time.time() + 600))[0] == 401
    assert kit.refusal(kit.credentials.seal_credential(token, time.time() - 1))[0] == 401
    sock, status, _ = kit.connect(credential)
    sock.close()
    assert status == 101


def test_policy_denial_names_the_reasons(kit: TcpGatewayKit) -> None:
    _, credential = kit.sign_in()
    kit.runtime = kit.build(policy="admins")
    status, body = kit.refusal(credential)
    assert (status, body["error"]) == (403, "denied")
    assert body["reasons"] and body["message_en"]
    decision = next(e for e in kit.events(AccessDecision) if e.route == "ssh")
    assert (decision.decision, decision.status) == ("deny", 403)
    assert not kit.events(TcpOpened)


def test_not_an_upgrade_gets_426_and_http_routes_ignore_the_protocol(kit: TcpGatewayKit) -> None:
    _, credential = kit.sign_in()
    with socket.create_connection(("127.0.0.1", kit.port), timeout=5) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {SSH}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 426")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "tcp-upgrade-required"
    # An HTTP route is never turned into a raw splice by asking for sekisho-tcp.
    sock, status, _ = kit.connect(credential, host="web.localhost")
    sock.close()
    assert status != 101


def test_revocation_cuts_the_stream_within_one_second(kit: TcpGatewayKit) -> None:
    token, credential = kit.sign_in()
    _, bystander_credential = kit.sign_in()
    sock, status, rest = kit.connect(credential)
    other, other_status, other_rest = kit.connect(bystander_credential)
    assert status == other_status == 101
    assert echoed(sock, rest, b"hello") == b"hello"
    kit.settled()
    session_id = kit.sessions.lookup_sync(token).session_id  # type: ignore[union-attr]
    # Another process's transaction: only the change feed tells this gateway.
    session_store.revoke(kit.engine, session_id, datetime.now(UTC), "admin")
    assert cut_within(sock, 1.0) < 1.0
    sock.close()
    assert echoed(other, other_rest, b"still here") == b"still here"
    other.close()
    closed = next(e for e in kit.wait_for(TcpClosed) if e.ended == "cut")
    assert (closed.trigger, closed.session) == ("session", session_id[:12])
    assert closed.reasons and closed.bytes_in == 5
    # The revoked credential opens nothing new either.
    assert kit.refusal(credential)[0] == 401


def test_periodic_re_evaluation_cuts_when_policy_no_longer_allows(tmp_path: Path) -> None:
    kit = TcpGatewayKit(tmp_path, SessionSettings(cache_ttl=60.0, recheck_interval=0.3))
    try:
        _, credential = kit.sign_in()
        sock, status, rest = kit.connect(credential)
        assert status == 101 and echoed(sock, rest, b"x") == b"x"
        kit.settled()
        # A snapshot swapped without any notification: only the timer can notice.
        kit.runtime = kit.build(policy="admins")
        assert cut_within(sock, 1.5) < 1.5
        sock.close()
        [closed] = kit.wait_for(TcpClosed)
        assert (closed.ended, closed.trigger) == ("cut", "timer")
    finally:
        kit.close()


def test_lgwan_tcp_from_outside_the_office_is_refused_by_the_guardrail(
        kit: TcpGatewayKit) -> None:
    _, credential = kit.sign_in()
    office = Networks(office=(ipaddress.ip_network("10.20.0.0/16"),))
    kit.runtime = kit.build(profile="beta-prime", networks=office)
    status, body = kit.refusal(credential, host="lg.localhost")
    assert (status, body["error"]) == (403, "denied")
    assert "source-ip-denied" in body["reasons"]
    # From the office it is allowed (the loopback client counts as the office here).
    inside = Networks(office=(ipaddress.ip_network("127.0.0.0/8"),))
    kit.runtime = kit.build(profile="beta-prime", networks=inside)
    sock, status, _ = kit.connect(credential, host="lg.localhost")
    sock.close()
    assert status == 101


def test_internet_tcp_outside_the_office_asks_for_a_step_up(kit: TcpGatewayKit) -> None:
    _, credential = kit.sign_in()  # password only
    office = Networks(office=(ipaddress.ip_network("10.20.0.0/16"),))
    kit.runtime = kit.build(profile="beta-prime", networks=office)
    status, body = kit.refusal(credential)
    assert (status, body["error"]) == (403, "step-up-required")
    assert body["step_up"] and "--step-up" in body["message_en"]


def test_audit_unavailable_refuses(kit: TcpGatewayKit) -> None:
    _, credential = kit.sign_in()
    kit.audit.healthy = False
    status, body = kit.refusal(credential)
    assert (status, body["error"]) == (503, "unavailable")
    assert "audit-unavailable" in body["reasons"]


def test_unreachable_destination_is_502_before_any_101(kit: TcpGatewayKit) -> None:
    _, credential = kit.sign_in()
    status, body = kit.refusal(credential, host="dead.localhost")
    assert (status, body["error"]) == (502, "destination-unreachable")
    assert not kit.events(TcpOpened)


def test_the_cli_listener_carries_local_connections(kit: TcpGatewayKit) -> None:
    _, credential = kit.sign_in()
    gateway = TcpGateway.parse(SSH, f"http://127.0.0.1:{kit.port}", None)
    refused: list[BaseException] = []
    listener = LocalListener(gateway, credential, on_refused=refused.append)
    port = kit.harness.call(listener.start("127.0.0.1", 0))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        assert echoed(sock, b"", b"through the CLI") == b"through the CLI"
    # A refusal reaches the CLI as data it can explain (code, messages, reasons).
    bad = LocalListener(gateway, None, on_refused=refused.append)
    port = kit.harness.call(bad.start("127.0.0.1", 0))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(5)
        assert sock.recv(10) == b""
    deadline = time.monotonic() + 5
    while not refused:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    [error] = refused
    assert isinstance(error, Refused) and (error.status, error.code) == (401,
                                                                          "credential-required")
    with pytest.raises(Refused):
        kit.harness.call(open_stream(gateway, "skc1.garbage"))
    kit.harness.call(listener.close())
    kit.harness.call(bad.close())


# -- configuration ------------------------------------------------------------------------

BASE = ("tls:\n  enabled: false\npolicies:\n  staff: {allow: {and: [{authenticated: true}]}}\n"
        "routes:\n")


def _route(to: str, mode: str = "tcp", segment: str = "internet") -> str:
    return (BASE + f"  - {{id: r, from: 'https://r.example.jp', to: '{to}', "
            f"segment: {segment}, policy: staff, mode: {mode}}}\n")


def test_tcp_targets_belong_to_tcp_routes() -> None:
    config = parse_config(_route("tcp://10.0.0.5:22"))
    assert dataclasses.astuple(config.routes[0])[3] == "tcp://10.0.0.5:22"
    assert config.routes[0].mode == "tcp"
    assert parse_config(_route("tcp://[2001:db8::1]:3389")).routes[0].to == \
        "tcp://[2001:db8::1]:3389"
    for text in (_route("tcp://10.0.0.5:22", mode="http"), _route("http://10.0.0.5:80"),
                 _route("tcp://user@host:22"), _route("tcp://host:22/path"),
                 _route("tcp://host:0"), _route("tcp://host")):
        with pytest.raises(InvalidConfig):
            parse_config(text)


def test_lgwan_tcp_route_opened_to_outside_is_a_contradiction() -> None:
    text = ("profile: beta-prime\nnetworks:\n  office: [10.20.0.0/16]\n" + BASE.replace(
        "staff: {allow: {and: [{authenticated: true}]}}",
        "staff: {allow: {and: [{source_ip: [0.0.0.0/0]}]}}")
        + "  - {id: r, from: 'https://r.example.jp', to: 'tcp://10.0.0.5:22', "
          "segment: lgwan, policy: staff, mode: tcp}\n")
    with pytest.raises(InvalidConfig) as caught:
        parse_config(text)
    assert any("lgwan-tcp-internal" in p.en for p in caught.value.problems)


# -- device-certificate mode (mTLS, no CLI credential) --------------------------------------

def test_device_certificate_mode_decides_on_the_device(tmp_path: Path) -> None:
    from sekisho.cli.tcp import ssl_context

    from .test_mtls import MtlsGateway

    gateway = MtlsGateway(tmp_path, cache_ttl=0.0)
    try:
        device = gateway.enrol("alice", "pc-1")
        to = f"tcp://127.0.0.1:{gateway.upstream.port}"
        gateway.reconfigure(
            routes=(Route(id="rdp", host="localhost", path_prefix="/", to=to,
                          policy="enrolled", mode="tcp"),),
            policies={"enrolled": {"allow": {"and": [{"device": {"enrolled": True}}]}}})
        key, cert = tmp_path / "pc-1.key", tmp_path / "pc-1.pem"
        assert key.exists() and cert.exists()
        target = TcpGateway.parse("localhost", f"https://127.0.0.1:{gateway.port}",
                                  ssl_context(str(gateway.server_cert), str(cert), str(key)))
        stream = gateway.harness.call(open_stream(target, None))
        stream.close()
        bare = TcpGateway.parse("localhost", f"https://127.0.0.1:{gateway.port}",
                                ssl_context(str(gateway.server_cert), None, None))
        with pytest.raises(Refused) as refused:
            gateway.harness.call(open_stream(bare, None))
        assert refused.value.status in (401, 403)
        assert device.device_id
    finally:
        gateway.close()
