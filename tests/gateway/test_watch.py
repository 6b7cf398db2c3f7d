"""Open WebSockets decided again (gateway.watch): a real Gateway, a real SessionManager and
change feed over SQLite, a real `websockets` upstream, and real WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from sekisho.audit.events import AccessDecision, WebSocketClosed
from sekisho.config.model import Config, Route, SessionSettings
from sekisho.gateway.keys import KeyRing
from sekisho.identity.sessions import SessionManager
from sekisho.runtime import Runtime, build_runtime
from sekisho.storage import sessions as session_store
from sekisho.storage import users
from sekisho.storage.database import create_database_engine, upgrade
from sekisho.storage.keys import SigningKeyRepository

from .servers import Harness, ListAudit, WatchedStart

POLICIES: dict[str, Any] = {
    "staff": {"allow": {"and": [{"group": ["staff"]}]}},
    "admins": {"allow": {"and": [{"group": ["admins"]}]}},
    "anyone": {"allow": {"and": [{"always": True}]}},
}


class WatchedGateway:
    def __init__(self, tmp_path: Path, settings: SessionSettings) -> None:
        self.harness = Harness()
        self.clients = contextlib.ExitStack()
        self.engine = create_database_engine(f"sqlite:///{tmp_path}/gw.db")
        upgrade(self.engine)
        keyring = KeyRing(SigningKeyRepository(self.engine))
        keyring.ensure()
        self.sessions = SessionManager(self.engine, settings)
        self.audit = ListAudit()

        async def echo(connection: ServerConnection) -> None:
            with contextlib.suppress(ConnectionClosed):  # the gateway cuts it: expected
                async for message in connection:
                    await connection.send(message)

        async def slow_handshake(connection: ServerConnection, request: Any) -> None:
            if request.path.startswith("/slow"):
                self.handshake_started.set()
                await asyncio.sleep(0.5)  # the 101 comes late: changes can land meanwhile

        self.handshake_started = threading.Event()

        async def start_upstream() -> Server:
            return await serve(echo, "127.0.0.1", 0, process_request=slow_handshake)

        self.upstream = self.harness.call(start_upstream())
        self.upstream_port = next(iter(self.upstream.sockets)).getsockname()[1]
        self.runtime = self.build(settings)
        self.watched = WatchedStart(self.harness, self.engine, self.sessions, self.audit,
                                    keyring, lambda: self.runtime)
        self.live, self.gateway = self.watched.live, self.watched.gateway
        self.port, self.feed, self.user = self.watched.port, self.watched.feed, self.watched.user

    def build(self, settings: SessionSettings, policy: str = "staff",
              routes: tuple[Route, ...] | None = None) -> Runtime:
        to = f"http://127.0.0.1:{self.upstream_port}"
        default = (Route(id="chat", host="chat.localhost", path_prefix="/", to=to,
                         policy=policy, websocket=True),
                   Route(id="open", host="open.localhost", path_prefix="/", to=to,
                         policy="anyone", websocket=True))
        return build_runtime(Config(source="<test>", routes=routes or default,
                                    policies=POLICIES, session=settings))

    def sign_in(self, **kwargs: Any) -> str:
        token, _ = self.sessions.create(self.user, ["pwd"], "127.0.0.1", "test", **kwargs)
        return token

    def open(self, token: str | None, host: str = "chat.localhost", path: str = "/ws",
             echo: bool = True) -> ClientConnection:
        sock = socket.create_connection(("127.0.0.1", self.port))
        headers = {"Cookie": f"__Host-sekisho={token}"} if token else {}
        client = self.clients.enter_context(
            connect(f"ws://{host}:{self.port}{path}", sock=sock, additional_headers=headers))
        if echo:
            client.send("hello")
            assert client.recv(timeout=5) == "hello"
        return client

    def on_loop(self, function: Any, *args: Any) -> None:
        async def run() -> None:
            function(*args)

        self.harness.call(run())

    def settled(self) -> None:
        """Wait until every registration check has run (a timer is set): a change made after
        this can only be caught by the feed, not by the check at registration."""
        deadline = time.monotonic() + 5
        while any(live.checking or live.timer is None
                  for live in list(self.live._all)):  # the test looks inside
            assert time.monotonic() < deadline, "the registration check did not finish"
            time.sleep(0.01)

    def closures(self) -> list[WebSocketClosed]:
        return [e for e in self.audit.events if isinstance(e, WebSocketClosed)]

    def close(self) -> None:
        self.clients.close()
        self.watched.stop()

        async def stop_upstream() -> None:
            self.upstream.close()

        self.harness.call(stop_upstream())
        self.harness.stop()
        self.engine.dispose()


def closed_within(client: ClientConnection, seconds: float) -> float:
    """Seconds until the gateway cuts the connection (fails after `seconds`)."""
    started = time.monotonic()
    with pytest.raises(ConnectionClosed):
        while time.monotonic() - started < seconds:
            client.recv(timeout=seconds)
    return time.monotonic() - started


def still_open(client: ClientConnection) -> bool:
    try:
        client.send("ping")
        return client.recv(timeout=2) == "ping"
    except ConnectionClosed:
        return False


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[WatchedGateway]:
    gateway = WatchedGateway(tmp_path, SessionSettings(cache_ttl=60.0))
    yield gateway
    gateway.close()


def test_revocation_by_another_process_closes_the_websocket_at_once(
        watched: WatchedGateway) -> None:
    token = watched.sign_in()
    other = watched.sign_in()
    client, bystander = watched.open(token), watched.open(other)
    assert len(watched.live) == 2
    watched.settled()
    session_id = watched.sessions.lookup_sync(token).session_id  # type: ignore[union-attr]
    # Another process's transaction: nothing in this process is told but the change feed.
    # The session cache TTL is 60 s here, so only the feed can make this prompt.
    session_store.revoke(watched.engine, session_id, datetime.now(UTC), "admin")
    assert closed_within(client, 1.0) < 1.0
    assert still_open(bystander)
    [closure] = watched.closures()
    assert (closure.route, closure.user, closure.trigger) == ("chat", "hanako", "session")
    assert closure.session == session_id[:12] and closure.bytes_in > 0
    assert closure.bytes_out > 0 and closure.duration_s > 0
    deadline = time.monotonic() + 2
    while len(watched.live) != 1:
        assert time.monotonic() < deadline, "a closed connection must leave the registry"
        time.sleep(0.01)
    bystander.close()


def test_a_change_between_the_decision_and_the_101_is_not_missed(
        watched: WatchedGateway) -> None:
    """The upgrade is allowed, then the session is revoked while the upstream takes its time
    to answer 101: the feed delivers the change before the connection is registered, so
    only the check made at registration can catch it."""
    token = watched.sign_in()
    session_id = watched.sessions.lookup_sync(token).session_id  # type: ignore[union-attr]
    revoked = threading.Event()

    def revoke_during_the_handshake() -> None:
        assert watched.handshake_started.wait(5)
        session_store.revoke(watched.engine, session_id, datetime.now(UTC), "admin")
        time.sleep(0.3)  # delivered (and acted on: nothing registered) before the 101
        revoked.set()

    threading.Thread(target=revoke_during_the_handshake, daemon=True).start()
    client = watched.open(token, path="/slow", echo=False)
    assert revoked.is_set()
    assert closed_within(client, 1.0) < 1.0
    assert [c.trigger for c in watched.closures()] == ["open"]


def test_user_disabled_or_removed_from_the_group_closes_its_websockets(
        watched: WatchedGateway) -> None:
    first = watched.open(watched.sign_in())
    watched.settled()
    users.remove_member(watched.engine, "staff", "hanako")
    assert closed_within(first, 1.0) < 1.0
    assert watched.closures()[-1].trigger == "user"
    assert watched.closures()[-1].reasons == ("group-unauthorized",)
    users.add_member(watched.engine, "staff", "hanako")
    second = watched.open(watched.sign_in())
    watched.settled()
    users.set_disabled(watched.engine, "hanako", True)
    assert closed_within(second, 1.0) < 1.0
    assert [c.trigger for c in watched.closures()] == ["user", "user"]


def test_a_reload_that_denies_closes_and_one_that_allows_keeps(
        watched: WatchedGateway) -> None:
    client = watched.open(watched.sign_in())
    anonymous = watched.open(None, host="open.localhost")
    watched.settled()
    settings = watched.runtime.config.session
    watched.runtime = watched.build(settings)  # the same rules again: nothing changes
    watched.on_loop(watched.live.reloaded)
    assert still_open(client) and still_open(anonymous)
    watched.runtime = watched.build(settings, policy="admins")
    started = time.monotonic()
    watched.on_loop(watched.live.reloaded)
    assert closed_within(client, 1.0) + (time.monotonic() - started) < 1.0
    assert still_open(anonymous)
    assert watched.closures()[-1].trigger == "reload"
    assert watched.closures()[-1].reasons == ("group-unauthorized",)
    # The route that let it in is gone: nothing allows the connection any more.
    to = f"http://127.0.0.1:{watched.upstream_port}"
    watched.runtime = watched.build(settings, routes=(
        Route(id="elsewhere", host="open.localhost", path_prefix="/", to=to, policy="anyone",
              websocket=True),))
    watched.on_loop(watched.live.reloaded)
    assert closed_within(anonymous, 1.0) < 1.0
    assert watched.closures()[-1].reasons == ("default-deny",)


def test_a_public_route_does_not_outlive_the_session_that_opened_it(
        watched: WatchedGateway) -> None:
    """The upstream was told who is on the other end: the session must stay valid."""
    token = watched.sign_in()
    signed_in = watched.open(token, host="open.localhost")
    anonymous = watched.open(None, host="open.localhost")
    assert watched.sessions.revoke_id(
        watched.sessions.lookup_sync(token).session_id, "signout")  # type: ignore[union-attr]
    assert closed_within(signed_in, 1.0) < 1.0
    assert watched.closures()[-1].reasons == ("user-unauthenticated",)
    assert still_open(anonymous)


def test_an_audit_log_that_cannot_record_closes_on_the_next_check(
        watched: WatchedGateway) -> None:
    client = watched.open(watched.sign_in())
    watched.audit.healthy = False  # the HTTP path answers 503 now; a WebSocket is cut too
    watched.on_loop(watched.live.reloaded)
    assert closed_within(client, 1.0) < 1.0
    assert watched.closures()[-1].reasons == ("audit-unavailable",)


def test_plain_http_requests_register_nothing(watched: WatchedGateway) -> None:
    token = watched.sign_in()
    with socket.create_connection(("127.0.0.1", watched.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: open.localhost\r\n"
                     b"Cookie: __Host-sekisho=" + token.encode() + b"\r\n"
                     b"Connection: close\r\n\r\n")
        sock.settimeout(5)
        while sock.recv(65536):
            pass
    assert len(watched.live) == 0
    client = watched.open(token)
    assert len(watched.live) == 1
    client.close()
    deadline = time.monotonic() + 2
    while len(watched.live):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    decisions = [e for e in watched.audit.events if isinstance(e, AccessDecision)]
    assert decisions[-1].status == 101 and decisions[-1].bytes_out > 0


def test_storage_lost_rechecks_every_websocket_and_closes_what_cannot_be_checked(
        watched: WatchedGateway) -> None:
    client = watched.open(watched.sign_in())
    with watched.engine.begin() as conn:  # the feed cannot be read, sessions still can
        conn.execute(text("ALTER TABLE changes RENAME TO changes_away"))
    time.sleep(1.0)
    assert still_open(client)  # re-checked, and the check succeeded
    with watched.engine.begin() as conn:
        conn.execute(text("ALTER TABLE changes_away RENAME TO changes"))
    deadline = time.monotonic() + 2
    while not watched.feed.healthy:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with watched.engine.begin() as conn:  # now neither can: nothing is trusted unchecked
        conn.execute(text("ALTER TABLE changes RENAME TO changes_away"))
        conn.execute(text("ALTER TABLE sessions RENAME TO sessions_away"))
    try:
        assert closed_within(client, 1.0) < 1.0
        closure = watched.closures()[-1]
        assert (closure.trigger, closure.reasons) == ("storage", ("storage-unavailable",))
    finally:
        with watched.engine.begin() as conn:
            conn.execute(text("ALTER TABLE changes_away RENAME TO changes"))
            conn.execute(text("ALTER TABLE sessions_away RENAME TO sessions"))


def test_timer_closes_at_absolute_expiry_and_on_idle(tmp_path: Path) -> None:
    settings = SessionSettings(idle_timeout=2.0, absolute_lifetime=3600.0, cache_ttl=1.0,
                               recheck_interval=1.0)
    gateway = WatchedGateway(tmp_path, settings)
    gateway.sessions.touch_interval = 0.5  # so client traffic can keep a session alive
    try:
        expiring = gateway.open(gateway.sign_in(
            expires_at=datetime.now(UTC) + timedelta(seconds=1.5)))
        idle = gateway.open(gateway.sign_in())
        busy = gateway.open(gateway.sign_in())
        started = time.monotonic()
        while time.monotonic() - started < 4.0:  # the client keeps sending: activity
            assert still_open(busy)
            time.sleep(0.3)
        for client in (expiring, idle):
            with pytest.raises(ConnectionClosed):
                client.recv(timeout=0.1)
        closures = gateway.closures()
        assert [c.trigger for c in closures] == ["timer", "timer"]
        assert closures[0].duration_s < 2.5  # at its expiry, not at the next interval
        assert still_open(busy)
    finally:
        gateway.close()


@pytest.mark.parametrize(("value", "seconds"), [("1s", 1.0), ("90s", 90.0), ("1h", 3600.0)])
def test_recheck_interval_setting(value: str, seconds: float) -> None:
    from sekisho.config import parse_config

    config = parse_config(f"tls: {{enabled: false}}\nroutes: []\nsession:\n"
                          f"  recheck_interval: {value}\n", "test.yaml")
    assert config.session.recheck_interval == seconds
    assert SessionSettings().recheck_interval == 60.0


@pytest.mark.parametrize("value", ["500ms", "2h", "0s", "soon"])
def test_recheck_interval_out_of_range_names_the_line(value: str) -> None:
    from sekisho.config import parse_config
    from sekisho.errors import ConfigError

    with pytest.raises(ConfigError, match=r"test.yaml:4: session.recheck_interval"):
        parse_config(f"tls: {{enabled: false}}\nroutes: []\nsession:\n"
                     f"  recheck_interval: {value}\n", "test.yaml")
