"""`sekisho login` (identity.cli_login + cli.tcp): a real Gateway with the real identity
handlers on a migrated database, a real HTTP client as the browser (cookies, CSRF, redirects
by hand), and the CLI's own loopback callback listener."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import stat
import threading
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from sekisho.audit.events import CliAuthorized, CliCredentialIssued, TcpOpened
from sekisho.cli import tcp as cli_tcp
from sekisho.cli._tcp_client import Gateway as TcpGateway
from sekisho.cli._tcp_client import Refused, open_stream
from sekisho.config.model import (
    Config,
    ListenAddress,
    MfaSettings,
    Route,
    SessionSettings,
    ThrottleSettings,
)
from sekisho.gateway.keys import KeyRing
from sekisho.gateway.server import Gateway
from sekisho.identity.cli_login import AUTHORIZE_PATH, TOKEN_PATH, CliCredentials, challenge_of
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.runtime import build_runtime
from sekisho.storage import users
from sekisho.storage.keys import SigningKeyRepository

PASSWORD = "a-long-enough-passphrase"
VERIFIER = "v" * 43
GOOD = {"port": "50123", "state": "s" * 24, "challenge": challenge_of(VERIFIER)}


class Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Stack:
    """The gateway (HTTP on loopback) with sign-in and CLI-login handlers, and a TCP route."""

    def __init__(self, engine: Any, audit: Any, hasher: Any) -> None:
        self.engine, self.audit = engine, audit
        self.user = users.create_user(engine, "suzuki", password_hash=hasher.hash(PASSWORD))
        self.loop = Loop()
        self.echo_port = self.loop.call(self._echo())
        config = Config(
            source="test",
            routes=(Route(id="app", host="127.0.0.1", path_prefix="/", to="http://127.0.0.1:9",
                          policy="signed-in"),
                    Route(id="ssh", host="ssh.localhost", path_prefix="/",
                          to=f"tcp://127.0.0.1:{self.echo_port}", policy="signed-in",
                          mode="tcp")),
            policies={"signed-in": {"allow": {"and": [{"authenticated": True}]}}},
            session=SessionSettings(cache_ttl=0.0),
            throttle=ThrottleSettings(base_delay=0.0, max_delay=0.0),
            mfa=MfaSettings(office_networks=(ip_network("127.0.0.0/8"),)),
        )
        self.config = config
        runtime = build_runtime(config)
        self.sessions = SessionManager(engine, config.session)
        handlers = build_signin_handlers(current_config=lambda: config, engine=engine,
                                         sessions=self.sessions, audit=audit, hasher=hasher)
        keyring = KeyRing(SigningKeyRepository(engine))
        keyring.ensure()
        self.gateway = Gateway(lambda: runtime, self.sessions, audit, keyring, handlers,
                               cli_credentials=CliCredentials(engine))
        sockets = self.loop.call(self.gateway.start([ListenAddress("127.0.0.1", 0)], None))
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"

    async def _echo(self) -> int:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)
            writer.close()

        self.echo = await asyncio.start_server(echo, "127.0.0.1", 0)
        return int(self.echo.sockets[0].getsockname()[1])

    def browser(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=10)

    def close(self) -> None:
        async def stop() -> None:
            await self.gateway.close(1.0)
            self.echo.close()

        self.loop.call(stop())
        self.loop.stop()


@pytest.fixture
def stack(engine: Any, audit: Any, fast_hasher: Any) -> Iterator[Stack]:
    built = Stack(engine, audit, fast_hasher)
    yield built
    built.close()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def signed_in(stack: Stack) -> httpx.Client:
    browser = stack.browser()
    page = browser.get("/.sekisho/signin")
    answer = browser.post("/.sekisho/signin", data={
        "csrf": csrf_of(page.text), "username": "suzuki", "password": PASSWORD, "rd": "/"})
    assert answer.status_code == 303, answer.text
    return browser


def authorize(browser: httpx.Client, params: dict[str, str],
              decision: str = "allow") -> httpx.Response:
    page = browser.get(AUTHORIZE_PATH, params=params)
    assert page.status_code == 200, page.text
    return browser.post(AUTHORIZE_PATH, data={**params, "csrf": csrf_of(page.text),
                                              "decision": decision})


def code_of(answer: httpx.Response, port: str = GOOD["port"]) -> str:
    assert answer.status_code == 303
    where = urlsplit(answer.headers["location"])
    assert (where.scheme, where.hostname, where.port, where.path) == \
        ("http", "127.0.0.1", int(port), "/callback")
    query = {k: v[0] for k, v in parse_qs(where.query).items()}
    assert query["state"] == GOOD["state"]
    return query["code"]


def exchange(stack: Stack, code: str, verifier: str = VERIFIER) -> httpx.Response:
    return stack.browser().post(TOKEN_PATH, json={"code": code, "verifier": verifier})


# -- the whole flow, as the CLI runs it ----------------------------------------------------

def test_login_through_the_browser_then_tcp_with_the_credential(stack: Stack) -> None:
    browser = stack.browser()
    visited: list[str] = []

    def open_browser(url: str) -> None:
        """What the user's browser does: sign in when sent there, confirm, follow back."""
        def run() -> None:
            first = browser.get(url)
            assert first.status_code == 302  # not signed in yet: to the sign-in page
            sign_in_url = first.headers["location"]
            assert sign_in_url.startswith("/.sekisho/signin?rd=")
            page = browser.get(sign_in_url)
            rd = parse_qs(urlsplit(sign_in_url).query)["rd"][0]
            back = browser.post("/.sekisho/signin", data={
                "csrf": csrf_of(page.text), "username": "suzuki", "password": PASSWORD,
                "rd": rd})
            assert back.status_code == 303 and back.headers["location"].startswith(
                AUTHORIZE_PATH)
            confirm = browser.get(back.headers["location"])
            assert "suzuki" in confirm.text and "127.0.0.1:" in confirm.text
            form = dict(re.findall(r'name="(\w+)" value="([^"]*)"', confirm.text))
            answer = browser.post(AUTHORIZE_PATH, data={**form, "decision": "allow"})
            visited.append(answer.headers["location"])
            assert httpx.get(answer.headers["location"]).status_code == 200  # the CLI

        threading.Thread(target=run, daemon=True).start()

    result = cli_tcp.login(stack.url, context=None, open_browser=open_browser, timeout=20,
                           announce=lambda _: None)
    assert result["user"] == "suzuki" and result["credential"].startswith("skc1.")
    [callback] = visited
    assert callback.startswith("http://127.0.0.1:")
    types = [type(e) for e in stack.audit.events]
    assert CliAuthorized in types and CliCredentialIssued in types
    # The credential opens the TCP route (the CLI's own stream client).
    gateway = TcpGateway.parse("ssh.localhost", stack.url, None)
    pipe = stack.loop.call(open_stream(gateway, result["credential"]))
    assert pipe.transport is not None
    stack.loop.call(asyncio.sleep(0))
    pipe.close()
    assert any(isinstance(e, TcpOpened) and e.user == "suzuki" for e in stack.audit.events)


def test_step_up_comes_back_to_the_authorisation(stack: Stack) -> None:
    browser = signed_in(stack)
    announced: list[str] = []

    def open_browser(url: str) -> None:
        announced.append(url)
        page = browser.get(url)
        # The step-up page (this user has no factor yet: it offers to set one up), keeping
        # the way back to the authorisation (a relative target: always accepted).
        assert page.status_code == 200, page.text
        assert "%2F.sekisho%2Fcli%2Fauthorize%3Fport%3D" in page.text

    with pytest.raises(cli_tcp.LoginFailed):
        cli_tcp.login(stack.url, context=None, step_up=True, open_browser=open_browser,
                      timeout=0.5, announce=lambda _: None)
    assert announced[0].startswith(f"{stack.url}/.sekisho/stepup?rd=%2F.sekisho%2Fcli")


def test_credential_is_saved_0600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = cli_tcp.save_credential("https://gw.example.jp", {"credential": "skc1.x"})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert cli_tcp.find_credential("https://gw.example.jp:443") == "skc1.x"
    assert cli_tcp.find_credential(None) == "skc1.x"
    assert json.loads(path.read_text())["default"] == "https://gw.example.jp:443"


# -- the callback listener -------------------------------------------------------------

def test_callback_with_another_state_is_refused_and_ours_still_works() -> None:
    callback = cli_tcp._Callback("ours-" + "x" * 20)
    try:
        base = f"http://127.0.0.1:{callback.port}/callback"
        assert httpx.get(base, params={"code": "evil", "state": "theirs"}).status_code == 400
        assert httpx.get(base, params={"code": "evil"}).status_code == 400
        assert not callback.done.is_set()
        assert httpx.get(base, params={"code": "good", "state": "ours-" + "x" * 20}
                         ).status_code == 200
        assert callback.done.is_set() and callback.code == "good"
    finally:
        callback.close()


# -- the authorize page ------------------------------------------------------------------

def test_not_signed_in_goes_to_sign_in_and_back(stack: Stack) -> None:
    answer = stack.browser().get(AUTHORIZE_PATH, params=GOOD)
    assert answer.status_code == 302
    assert answer.headers["location"].startswith("/.sekisho/signin?rd=%2F.sekisho%2Fcli")


@pytest.mark.parametrize("params", [
    {**GOOD, "port": "80"}, {**GOOD, "port": "70000"}, {**GOOD, "port": "8080@evil.example"},
    {**GOOD, "port": ""}, {**GOOD, "state": "short"}, {**GOOD, "state": "s" * 20 + "/../"},
    {**GOOD, "challenge": "plain"},
])
def test_malformed_requests_are_400(stack: Stack, params: dict[str, str]) -> None:
    browser = signed_in(stack)
    assert browser.get(AUTHORIZE_PATH, params=params).status_code == 400
    posted = browser.post(AUTHORIZE_PATH, data={**params, "csrf": "x", "decision": "allow"})
    assert posted.status_code == 400


def test_the_callback_is_always_loopback_with_the_given_port(stack: Stack) -> None:
    browser = signed_in(stack)
    # Extra parameters naming elsewhere change nothing: there is no redirect_uri to abuse.
    params = {**GOOD, "redirect_uri": "https://evil.example/steal", "host": "evil.example"}
    code = code_of(authorize(browser, params))
    assert code.startswith("skcode1.")
    page = browser.get(AUTHORIZE_PATH, params=GOOD)
    csp = page.headers["content-security-policy"]
    assert "form-action 'self' http://127.0.0.1:50123;" in csp


def test_the_form_needs_its_csrf_token(stack: Stack) -> None:
    browser = signed_in(stack)
    answer = browser.post(AUTHORIZE_PATH, data={**GOOD, "decision": "allow"})
    assert answer.status_code == 403
    forged = browser.post(AUTHORIZE_PATH, data={**GOOD, "decision": "allow", "csrf": "a.b.c"})
    assert forged.status_code == 403
    assert not [e for e in stack.audit.events if isinstance(e, CliAuthorized)]


def test_declining_tells_the_cli_without_a_code(stack: Stack) -> None:
    answer = authorize(signed_in(stack), GOOD, decision="deny")
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert query["error"] == ["access_denied"] and "code" not in query


# -- the exchange ------------------------------------------------------------------------

def test_the_verifier_must_match_and_a_code_is_single_use(stack: Stack) -> None:
    code = code_of(authorize(signed_in(stack), GOOD))
    wrong = exchange(stack, code, verifier="w" * 43)
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid-verifier")
    first = exchange(stack, code)
    assert first.status_code == 200 and first.json()["user"] == "suzuki"
    replay = exchange(stack, code)
    assert (replay.status_code, replay.json()["error"]) == (400, "code-used")
    assert replay.json()["message"] and replay.json()["message_en"]


def test_forged_codes_and_bad_bodies_are_400(stack: Stack) -> None:
    code = code_of(authorize(signed_in(stack), GOOD))
    altered = code[:-3] + ("AAA" if not code.endswith("AAA") else "BBB")
    assert exchange(stack, altered).json()["error"] == "invalid-code"
    credential = exchange(stack, code).json()["credential"]
    # A credential is not a code, and the other way round (separate associated data).
    assert exchange(stack, "skcode1." + credential[5:]).json()["error"] == "invalid-code"
    browser = stack.browser()
    assert browser.post(TOKEN_PATH, content=b"not json").json()["error"] == "invalid-request"
    assert browser.post(TOKEN_PATH, json={"code": code}).status_code == 400
    assert browser.get(TOKEN_PATH).status_code == 405


def test_revoking_the_session_revokes_the_credential(stack: Stack) -> None:
    browser = signed_in(stack)
    code = code_of(authorize(browser, GOOD))
    credential = exchange(stack, code).json()["credential"]
    token = browser.cookies["__Host-sekisho"]
    info = stack.sessions.lookup_sync(token)
    assert info is not None
    gateway = TcpGateway.parse("ssh.localhost", stack.url, None)
    stack.loop.call(open_stream(gateway, credential)).close()
    stack.sessions.revoke_id(info.session_id, "test")
    with pytest.raises(Refused) as refused:
        stack.loop.call(open_stream(gateway, credential))
    assert (refused.value.status, refused.value.code) == (401, "credential-required")
    # And a code minted before the revocation cannot be exchanged afterwards.
    browser2 = signed_in(stack)
    code2 = code_of(authorize(browser2, GOOD))
    token2 = browser2.cookies["__Host-sekisho"]
    info2 = stack.sessions.lookup_sync(token2)
    assert info2 is not None
    stack.sessions.revoke_id(info2.session_id, "test")
    late = exchange(stack, code2)
    assert (late.status_code, late.json()["error"]) == (401, "session-ended")

