"""Instant revocation end to end: a real `sekisho serve` with two worker processes, a real
WebSocket echo upstream, the admin CLI as a separate process — on SQLite and PostgreSQL.

The session cache is set to its longest (`cache_ttl: 60s`) and the timer re-check to its
default (60 s): only the change feed (and SIGHUP) can make these closures prompt. Each test
measures, from the moment the change was written (its row's `occurred_at`, or the signal),
how long until every open WebSocket in every worker is cut, and asserts it is under 1 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Server, ServerConnection, serve

from pg import PG_URL, postgres_or_skip
from sekisho.storage import changes
from sekisho.storage.database import create_database_engine

from .harness import SEKISHO, Browser, EchoUpstream, GatewayProcess, config_text

LIMIT = 1.0  # seconds: the brief's bound from change to closure, in every worker
POLICIES = """\
  staff-device:
    allow:
      and:
        - group: [staff]
        - device: {enrolled: true}
"""
ROUTES = """\
  - id: chat
    from: https://chat.localhost/
    to: http://127.0.0.1:{ws}
    segment: internet
    policy: staff
    websocket: true
  - id: reload-chat
    from: https://reload-chat.localhost/
    to: http://127.0.0.1:{ws}
    segment: internet
    policy: staff
    websocket: true
  - id: device-chat
    from: https://device-chat.localhost/
    to: http://127.0.0.1:{ws}
    segment: internet
    policy: staff-device
    websocket: true
  - id: device-wiki
    from: https://device-wiki.localhost/
    to: http://127.0.0.1:{http}
    segment: internet
    policy: staff-device
  - id: device-endpoints
    from: https://127.0.0.1/
    to: http://127.0.0.1:{http}
    segment: internet
    policy: staff
"""


class EchoWebSocket:
    """A WebSocket upstream answering every message with itself."""

    def __init__(self) -> None:
        def echo(connection: ServerConnection) -> None:
            try:
                for message in connection:
                    connection.send(message)
            except ConnectionClosed:
                pass

        self.server: Server = serve(echo, "127.0.0.1", 0)
        self.port = int(self.server.socket.getsockname()[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class Open:
    """One open WebSocket through the gateway; a thread notes when the gateway cuts it."""

    def __init__(self, client: ClientConnection, local_port: int) -> None:
        self.client = client
        self.local_port = local_port
        self.closed_at: float | None = None  # wall clock, comparable to a change's time
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                self.client.recv()
        except (ConnectionClosed, OSError):
            self.closed_at = time.time()

    def wait_closed(self, timeout: float) -> float | None:
        self._reader.join(timeout)
        return self.closed_at


class Installation:
    """`sekisho serve` with two workers, the routes above and a device CA."""

    def __init__(self, tmp: Path, url: str, *, session: str = "") -> None:
        self.tmp, self.url = tmp, url
        self.http = EchoUpstream()
        self.ws = EchoWebSocket()
        self.process = GatewayProcess(tmp, url, self.http)
        text = config_text(tmp / "data", url, self.process.port, self.process.admin,
                           self.http.port, extra_policy=POLICIES)
        text = text.replace("workers: 1", "workers: 2")
        text = text.replace("tls:\n  self_signed: true\n",
                            "tls:\n  self_signed: true\n  client_certificates: optional\n")
        text = text.replace("session:\n  idle_timeout: 30m\n  absolute_lifetime: 12h\n"
                            "  cache_ttl: 0s\n", "session:\n" + (session or (
                                "  idle_timeout: 30m\n  absolute_lifetime: 12h\n"
                                "  cache_ttl: 60s\n")))
        assert "cache_ttl: 0s" not in text
        text += ROUTES.format(ws=self.ws.port, http=self.http.port)
        self.process.config.write_text(text, encoding="utf-8")
        self.process.provision()
        self.process.cli("ca", "init", "--organisation", "関所市")
        self.process.start()
        self.cafile = tmp / "data" / "tls" / "self-signed.crt"
        self.opened: list[Open] = []
        self.clients = contextlib.ExitStack()
        assert self.process.process is not None
        deadline = time.monotonic() + 20
        while len(self.workers()) < 2:
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)

    def workers(self) -> list[int]:
        assert self.process.process is not None
        master = self.process.process.pid
        return [int(p) for p in
                Path(f"/proc/{master}/task/{master}/children").read_text().split()]

    def context(self, device_dir: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.cafile))
        if device_dir is not None:
            context.load_cert_chain(device_dir / "device.pem", device_dir / "device.key")
        return context

    def sign_in(self, user: str = "tanaka", context: ssl.SSLContext | None = None
                ) -> tuple[Browser, str]:
        browser = Browser(self.process.port, context or self.context())
        answer = browser.signin("wiki.localhost", user)
        assert answer.status == 303, answer.body[:300]
        return browser, browser.cookies_for("wiki.localhost")["__Host-sekisho"]

    def open(self, token: str, host: str = "chat.localhost",
             context: ssl.SSLContext | None = None, *, retry: bool = True) -> Open:
        sock = socket.create_connection(("127.0.0.1", self.process.port))
        local_port = sock.getsockname()[1]  # before TLS takes the socket over
        try:
            client = self.clients.enter_context(connect(
                f"wss://{host}:{self.process.port}/live", sock=sock,
                ssl=context or self.context(),
                additional_headers={"Cookie": f"__Host-sekisho={token}"},
                open_timeout=30))  # a loaded shared machine can be slow to schedule a worker
        except (InvalidMessage, ConnectionClosed, ssl.SSLError) as exc:
            # Seen twice in full CI runs on a loaded 2-core machine: the connection ended after
            # TLS with no HTTP answer (InvalidMessage; once SSLEOFError sending the upgrade
            # request). The gateway now logs a connection lost before its first request, with
            # the cause. Kept visible (printed with -s) while it is investigated; a second
            # failure fails.
            if not retry:
                raise
            print(f"note: WebSocket handshake to {host} ended without an answer "
                  f"({type(exc).__name__}); retrying once")
            return self.open(token, host, context, retry=False)
        client.send("こんにちは")
        assert client.recv(timeout=5) == "こんにちは"
        opened = Open(client, local_port)
        self.opened.append(opened)
        return opened

    def open_in_every_worker(self, token: str, host: str = "chat.localhost",
                             context: ssl.SSLContext | None = None) -> list[Open]:
        """Enough WebSockets that each worker holds some (the kernel spreads them)."""
        opened: list[Open] = []
        for _ in range(24):
            opened.append(self.open(token, host, context))
            if len(opened) >= 4 and len({self.worker_of(o) for o in opened}) >= 2:
                return opened
        raise AssertionError("the kernel never gave the second worker a connection")

    def worker_of(self, opened: Open) -> int:
        """The worker process holding the server side of this client's connection."""
        inode = _server_socket_inode(self.process.port, opened.local_port)
        for pid in self.workers():
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if fd.readlink() == Path(f"socket:[{inode}]"):
                        return pid
                except OSError:
                    continue
        raise AssertionError("no worker holds the connection")

    def newest_change(self) -> int:
        engine = create_database_engine(self.url)
        try:
            return changes.latest_id(engine)
        finally:
            engine.dispose()

    def change_time(self, kind: str, after: int) -> float:
        """When the first change of `kind` after id `after` was written (the time in its
        row, taken just before its transaction commits), as a wall-clock time."""
        engine = create_database_engine(self.url)
        try:
            rows = [r for r in changes.since(engine, after) if r.kind == kind]
        finally:
            engine.dispose()
        assert rows, f"no {kind} change was recorded"
        return rows[0].occurred_at.timestamp()

    def events(self, event_type: str, at_least: int) -> list[dict[str, Any]]:
        """Events of a type in the audit chain (workers relay them to the master's writer,
        which commits within `audit.flush_interval`)."""
        deadline = time.monotonic() + 10
        while True:
            exported = self.process.cli("audit", "export", "--format", "jsonl").stdout
            found = [json.loads(line)["event"] for line in exported.splitlines()]
            found = [e for e in found if e["event_type"] == event_type]
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.3)

    def close(self) -> None:
        self.clients.close()
        self.process.stop()
        self.ws.close()
        self.http.close()


def _server_socket_inode(server_port: int, client_port: int) -> str:
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return fields[9]
    raise AssertionError("connection not found in /proc/net/tcp")


def _all_closed_within(opened: list[Open], since: float) -> float:
    """The slowest closure, in seconds after `since` (a wall-clock time)."""
    latest = float("-inf")
    for each in opened:
        closed_at = each.wait_closed(max(0.0, since + LIMIT + 2 - time.time()))
        assert closed_at is not None, "a WebSocket outlived the change"
        latest = max(latest, closed_at - since)
    return latest


def _report(name: str, seconds: float) -> None:
    print(f"\n{name}: closed {seconds * 1000:.0f} ms after the change")


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db')}/sekisho.db"
        return
    with _postgres_schema() as schema_url:
        yield schema_url


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory, url: str
                 ) -> Iterator[Installation]:
    """One installation per database for the tests below: each works on its own sessions,
    device, user or route, so starting two workers (the slow part) happens once."""
    running = Installation(tmp_path_factory.mktemp("gateway"), url)
    yield running
    running.close()


def test_session_revoked_with_the_cli_closes_every_worker_within_a_second(
        installation: Installation) -> None:
    browser, token = installation.sign_in()
    bystander_browser, bystander_token = installation.sign_in()  # tanaka's other session
    opened = installation.open_in_every_worker(token)
    bystander = installation.open(bystander_token)
    # Warm both workers' session caches (cache_ttl 60 s): the HTTP path, too, must learn.
    assert {browser.get("wiki.localhost", f"/{n}").status for n in range(8)} == {200}
    session_id = hashlib.sha256(token.encode("ascii")).hexdigest()[:12]  # how storage names it
    listed = json.loads(installation.process.cli("session", "list", "--json").stdout)
    assert session_id in {s["id"] for s in listed}
    before = installation.newest_change()
    installation.process.cli("session", "revoke", session_id)
    slowest = _all_closed_within(opened, installation.change_time("session", before))
    _report(f"session revoke ({len(opened)} WebSockets, 2 workers)", slowest)
    assert slowest < LIMIT
    assert {browser.get("wiki.localhost", f"/{n}").status for n in range(8)} == {302}
    assert bystander.closed_at is None  # the user's other session is untouched
    assert {bystander_browser.get("wiki.localhost", "/").status} == {200}
    events = [e for e in installation.events("websocket.closed", len(opened))
              if e["session"] == session_id]
    assert len(events) == len(opened)
    assert {(e["trigger"], e["user"], e["route"]) for e in events} == {
        ("session", "tanaka", "chat")}


def test_sign_out_in_one_worker_closes_the_websockets_of_every_worker(
        installation: Installation) -> None:
    browser, token = installation.sign_in()
    opened = installation.open_in_every_worker(token)
    page = browser.get("wiki.localhost", "/.sekisho/signout")  # one worker handles it
    before = installation.newest_change()
    csrf = re.search(rb'name="csrf" value="([^"]+)"', page.body)
    assert csrf is not None
    out = browser.request("POST", "wiki.localhost", "/.sekisho/signout",
                          body=b"csrf=" + csrf.group(1))
    assert out.status in (200, 303)
    slowest = _all_closed_within(opened, installation.change_time("session", before))
    _report("sign-out in one worker", slowest)
    assert slowest < LIMIT


def test_user_disabled_closes_every_worker_within_a_second(
        installation: Installation) -> None:
    browser, token = installation.sign_in("sato")
    opened = installation.open_in_every_worker(token)
    assert browser.get("wiki.localhost", "/").status == 200
    before = installation.newest_change()
    installation.process.cli("user", "disable", "sato")
    slowest = _all_closed_within(opened, installation.change_time("user", before))
    _report("user disable", slowest)
    assert slowest < LIMIT
    assert {browser.get("wiki.localhost", f"/{n}").status for n in range(8)} == {302}
    events = [e for e in installation.events("websocket.closed", len(opened))
              if e["user"] == "sato"]
    assert len(events) == len(opened) and {e["trigger"] for e in events} == {"user"}


def test_device_suspended_closes_every_worker_within_a_second(
        installation: Installation, tmp_path: Path) -> None:
    device_id, device_dir = _enrol(installation, tmp_path)
    context = installation.context(device_dir)
    browser, token = installation.sign_in(context=context)
    browser.cookies_for("device-wiki.localhost")["__Host-sekisho"] = token
    assert browser.get("device-wiki.localhost", "/").status == 200
    opened = installation.open_in_every_worker(token, "device-chat.localhost", context)
    plain = installation.open(token)  # no device needed on `chat`: stays open
    before = installation.newest_change()
    installation.process.cli("device", "suspend", device_id, "--reason", "lost")
    slowest = _all_closed_within(opened, installation.change_time("device", before))
    _report("device suspend", slowest)
    assert slowest < LIMIT
    assert {browser.get("device-wiki.localhost", f"/{n}").status for n in range(8)} == {403}
    assert plain.closed_at is None
    events = [e for e in installation.events("websocket.closed", len(opened))
              if e["route"] == "device-chat"]
    assert len(events) == len(opened)
    assert {(e["trigger"], tuple(e["reasons"])) for e in events} == {  # type: ignore[arg-type]
        ("device", ("device-unauthorized",))}


def test_policy_reload_by_sighup_closes_every_worker_within_a_second(
        installation: Installation) -> None:
    _, token = installation.sign_in()
    opened = installation.open_in_every_worker(token, "reload-chat.localhost")
    config = installation.process.config
    text = config.read_text()
    route = "  - id: reload-chat\n    from: https://reload-chat.localhost/\n"
    head, tail = text.split(route, 1)
    assert "    policy: staff\n" in tail
    config.write_text(head + route + tail.replace("    policy: staff\n", "    policy: admins\n", 1))
    signalled = time.time()
    installation.process.signal(signal.SIGHUP)
    slowest = _all_closed_within(opened, signalled)
    _report("policy reload (SIGHUP)", slowest)
    assert slowest < LIMIT
    events = [e for e in installation.events("websocket.closed", len(opened))
              if e["route"] == "reload-chat"]
    assert len(events) == len(opened)
    assert {(e["trigger"], tuple(e["reasons"])) for e in events} == {  # type: ignore[arg-type]
        ("reload", ("group-unauthorized",))}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql",
                                                            marks=pytest.mark.postgres)])
def test_timer_recheck_closes_at_the_absolute_lifetime(tmp_path: Path, backend: str) -> None:
    lifetime = 4.0
    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{tmp_path}/sekisho.db" if backend == "sqlite"
               else stack.enter_context(_postgres_schema()))
        installation = Installation(tmp_path, url, session=(
            "  cache_ttl: 60s\n  recheck_interval: 1s\n"
            f"  absolute_lifetime: {lifetime:.0f}s\n  idle_timeout: {lifetime:.0f}s\n"))
        stack.callback(installation.close)
        browser, token = installation.sign_in()
        signed_in = time.time()
        opened = installation.open_in_every_worker(token)
        slowest = _all_closed_within(opened, signed_in + lifetime)
        _report("absolute lifetime (timer)", slowest)
        assert slowest < LIMIT
        assert browser.get("wiki.localhost", "/").status == 302
        events = installation.events("websocket.closed", len(opened))
        assert {e["trigger"] for e in events} == {"timer"}


# -- helpers ----------------------------------------------------------------------------------


def _enrol(installation: Installation, tmp_path: Path) -> tuple[str, Path]:
    process = installation.process
    made = process.cli("device", "code", "tanaka", "--ttl", "1h")
    code = made.stdout.split("tanaka: ", 1)[1].split()[0]
    password = tmp_path / "p12-password"
    password.write_text("Tsukimi-Dango-2026\n", encoding="utf-8")
    device_dir = tmp_path / "device"
    enrolled = subprocess.run(
        [*SEKISHO, "device", "enroll", "--gateway", f"https://127.0.0.1:{process.port}",
         "--code", code, "--name", "窓口 PC 1", "--inventory-id", "PC-0042",
         "--dir", str(device_dir), "--cafile", str(installation.cafile),
         "--p12-password-file", str(password)],
        capture_output=True, text=True, timeout=60, check=False, env=process.env)
    assert enrolled.returncode == 0, enrolled.stderr
    listed = json.loads(process.cli("device", "list", "--user", "tanaka", "--json").stdout)
    return str(listed[0]["device_id"]), device_dir


@contextlib.contextmanager
def _postgres_schema() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL for a whole module (see tests/conftest.py)."""
    from sqlalchemy import text

    postgres_or_skip()
    pg_url = PG_URL
    schema = "t_" + secrets.token_hex(6)
    admin = create_database_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in pg_url else "?"
    try:
        yield f"{pg_url}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
