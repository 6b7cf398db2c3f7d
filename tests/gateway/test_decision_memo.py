"""Remembered decisions (gateway.decisions) never change an outcome: a real Gateway, a real
SessionManager and change feed over SQLite, and a real upstream. Each test makes a request
that is remembered, changes one input, and expects the answer a fresh decision gives."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from sekisho.config.model import Config, Route, SessionSettings
from sekisho.gateway import decisions, pep
from sekisho.gateway.decisions import DecisionMemo
from sekisho.gateway.keys import KeyRing
from sekisho.gateway.pep import Verdict
from sekisho.identity.principal import SessionInfo
from sekisho.identity.sessions import SessionManager, session_id_for
from sekisho.policy import Decision
from sekisho.runtime import Runtime, build_runtime
from sekisho.storage import sessions as session_store
from sekisho.storage import users
from sekisho.storage.database import create_database_engine, upgrade
from sekisho.storage.keys import SigningKeyRepository

from .conftest import parse_response
from .servers import EchoUpstream, Harness, ListAudit, WatchedStart

HOST = "app.localhost"
POLICIES: dict[str, Any] = {
    "staff": {"allow": {"and": [{"group": ["staff"]}]}},
    "reader": {"allow": {"and": [{"group": ["staff"]}, {"http_method": ["GET"]},
                                 {"http_path": {"prefix": "/open/"}}]}},
    "office": {"allow": {"and": [{"group": ["staff"]}, {"source_ip": ["192.0.2.0/24"]}]}},
    "fresh": {"allow": {"and": [{"group": ["staff"]}, {"auth_age": 60}]}},
    "nobody": {"allow": {"and": [{"never": True}]}},
}


class Clock:
    """The gateway's clock (epoch seconds), moved by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class MemoGateway:
    def __init__(self, tmp_path: Path) -> None:
        self.harness = Harness()
        self.upstream = EchoUpstream()
        self.upstream_port = self.harness.call(self.upstream.start())
        self.engine = create_database_engine(f"sqlite:///{tmp_path}/gw.db")
        upgrade(self.engine)
        keyring = KeyRing(SigningKeyRepository(self.engine))
        keyring.ensure()
        self.sessions = SessionManager(self.engine, SessionSettings(cache_ttl=60.0))
        self.audit = ListAudit()
        self.clock = Clock()
        self.runtime = self.build("staff")
        self.watched = WatchedStart(self.harness, self.engine, self.sessions, self.audit,
                                    keyring, lambda: self.runtime, clock=self.clock)
        self.gateway, self.port, self.user = (self.watched.gateway, self.watched.port,
                                              self.watched.user)
        self.evaluations = 0

    def build(self, policy: str, trusted: tuple[str, ...] = ()) -> Runtime:
        to = f"http://127.0.0.1:{self.upstream_port}"
        return build_runtime(Config(
            source="<test>", routes=(Route(id="app", host=HOST, path_prefix="/", to=to,
                                           policy=policy),),
            policies=POLICIES, session=SessionSettings(cache_ttl=60.0),
            trusted_proxies=tuple(ip_network(net) for net in trusted)))

    def sign_in(self) -> str:
        return self.sessions.create(self.user, ["pwd"], "127.0.0.1", "test")[0]

    def get(self, token: str, path: str = "/open/page", method: str = "GET",
            headers: dict[str, str] | None = None) -> int:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Connection: close",
                 f"Cookie: __Host-sekisho={token}", "Accept: application/json",
                 *(f"{k}: {v}" for k, v in (headers or {}).items())]
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return parse_response(b"".join(chunks))[0]

    def close(self) -> None:
        self.watched.stop()
        self.harness.call(self.upstream.stop())
        self.harness.stop()
        self.engine.dispose()


@pytest.fixture
def kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoGateway]:
    kit = MemoGateway(tmp_path)
    evaluate = pep.evaluate

    def counted(*args: Any) -> Decision:  # the real PDP, counted
        kit.evaluations += 1
        return evaluate(*args)

    monkeypatch.setattr(pep, "evaluate", counted)
    yield kit
    kit.close()


def wait_until(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the change feed did not deliver"
        time.sleep(0.01)


def test_the_same_request_is_decided_once(kit: MemoGateway) -> None:
    token = kit.sign_in()
    assert [kit.get(token) for _ in range(5)] == [200] * 5
    assert kit.evaluations == 1
    assert len([e for e in kit.audit.events if type(e).__name__ == "AccessDecision"]) == 5


def test_revocation_is_seen_by_the_next_request(kit: MemoGateway) -> None:
    token = kit.sign_in()
    assert kit.get(token) == 200
    assert kit.sessions.revoke_id(session_id_for(token), "signout")
    assert kit.get(token) == 401


def test_revocation_by_another_process_is_seen_once_announced(kit: MemoGateway) -> None:
    token = kit.sign_in()
    assert kit.get(token) == 200
    session_id = session_id_for(token)
    session_store.revoke(kit.engine, session_id, datetime.now(UTC), "admin")
    wait_until(lambda: session_id not in kit.sessions._cache)
    assert kit.get(token) == 401


def test_a_user_removed_from_the_group_is_denied_once_announced(kit: MemoGateway) -> None:
    token = kit.sign_in()
    assert kit.get(token) == 200
    users.remove_member(kit.engine, "staff", "hanako")
    wait_until(lambda: not kit.sessions._cache)
    assert kit.get(token) == 403


def test_method_path_and_client_are_part_of_what_was_decided(kit: MemoGateway) -> None:
    kit.runtime = kit.build("reader", trusted=("127.0.0.1/32",))
    token = kit.sign_in()
    assert kit.get(token, "/open/a") == 200
    assert kit.get(token, "/open/a", method="POST") == 403
    assert kit.get(token, "/closed/a") == 403
    kit.runtime = kit.build("office", trusted=("127.0.0.1/32",))
    inside = {"X-Forwarded-For": "192.0.2.10"}
    assert kit.get(token, headers=inside) == 200
    assert kit.get(token, headers={"X-Forwarded-For": "198.51.100.7"}) == 403
    assert kit.get(token, headers=inside) == 200


def test_a_new_config_snapshot_decides_afresh(kit: MemoGateway) -> None:
    token = kit.sign_in()
    assert kit.get(token) == 200
    kit.runtime = kit.build("nobody")
    assert kit.get(token) == 403


def test_a_policy_that_reads_the_clock_is_always_decided(kit: MemoGateway) -> None:
    """`auth_age: 60`: the session (and its cache entry) stays the same, only time passes."""
    kit.runtime = kit.build("fresh")
    token = kit.sign_in()
    assert kit.get(token) == 200
    assert kit.get(token) == 200
    kit.clock.now += 120
    assert kit.get(token) == 403  # auth-too-old (JSON asked for: no step-up redirect)
    assert kit.evaluations == 3


def test_activity_is_still_recorded_while_decisions_are_reused(kit: MemoGateway) -> None:
    """The memo hands over to `lookup` whenever that has work to do: here the touch of
    `last_seen_at` (else the idle timeout would end a session in constant use)."""
    kit.sessions.touch_interval = 0.5
    token = kit.sign_in()
    session_id = session_id_for(token)
    first = session_store.load_session(kit.engine, session_id)
    assert first is not None
    assert kit.get(token) == 200
    time.sleep(0.6)
    assert kit.get(token) == 200
    later = session_store.load_session(kit.engine, session_id)
    assert later is not None and later.last_seen_at > first.last_seen_at
    assert kit.evaluations == 2


class _Quiet:
    """A session store whose sessions are all quiet: the memo's own bookkeeping, alone."""

    def quiet(self, info: SessionInfo) -> bool:
        return True


def _verdict(allow: bool = True, session: bool = True) -> Verdict:
    now = datetime.now(UTC)
    info = SessionInfo("ab" * 32, 1, "hanako", "Hanako", "h@example.jp", frozenset(),
                       frozenset({"pwd"}), now, now, now) if session else None
    return Verdict(Decision(allow, ("group-authorized",)), info)


def test_only_allows_with_a_session_are_kept_and_the_memo_is_bounded() -> None:
    def snapshot() -> Runtime:
        return build_runtime(Config(source="<test>"))

    memo, runtime = DecisionMemo(_Quiet()), snapshot()
    key = (session_id_for("token"), "app", "GET", "/", HOST, "::1")
    for verdict in (_verdict(allow=False), _verdict(session=False)):
        memo.remember(runtime, key, verdict)
        assert memo.recall(runtime, key) is None
    kept = _verdict()
    memo.remember(runtime, key, kept)
    assert memo.recall(runtime, key) is kept
    assert memo.recall(snapshot(), key) is None  # another snapshot
    for index in range(decisions.MAX_ENTRIES + 10):
        memo.remember(runtime, (str(index), *key[1:]), kept)
    assert len(memo._entries) <= decisions.MAX_ENTRIES
    blind = DecisionMemo(object())  # a store that cannot say a session is quiet
    blind.remember(runtime, key, kept)
    assert blind.recall(runtime, key) is None


def _exchange(sock: socket.socket, token: str | None) -> tuple[int, bytes]:
    """One request on a kept-alive connection; (status, body)."""
    cookie = f"Cookie: __Host-sekisho={token}\r\n" if token else ""
    sock.sendall(f"GET /open/page HTTP/1.1\r\nHost: {HOST}\r\nAccept: application/json\r\n"
                 f"{cookie}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def _subject(body: bytes) -> str:
    """The `sub` of the identity assertion the upstream received (the echo's JSON)."""
    headers = dict((k.lower(), v) for k, v in json.loads(body)["headers"])
    payload = headers["x-sekisho-assertion"].split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


def test_a_changed_cookie_on_the_same_connection_is_a_new_identity(kit: MemoGateway) -> None:
    """The token and its session id are kept per connection while the Cookie headers stay
    byte for byte the same; another cookie on the same connection is another identity."""
    hanako = kit.sign_in()
    users.create_user(kit.engine, "taro")
    taro, _ = kit.sessions.create(users.require_user(kit.engine, "taro"), ["pwd"], "127.0.0.1",
                                  "test")
    with socket.create_connection(("127.0.0.1", kit.port), timeout=10) as sock:
        status, body = _exchange(sock, hanako)
        assert status == 200 and _subject(body) == "hanako"
        assert _exchange(sock, taro)[0] == 403  # not in staff: not hanako's remembered allow
        status, body = _exchange(sock, hanako)
        assert status == 200 and _subject(body) == "hanako"
        assert _exchange(sock, None)[0] == 401
        assert _exchange(sock, hanako + "x")[0] == 401  # malformed: never a session
    assert all(hanako not in key for key in kit.gateway.decisions._entries)  # ids, not tokens
