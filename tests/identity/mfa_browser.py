"""A cookie-keeping test browser and an app factory for the MFA tests (no mocks)."""

from __future__ import annotations

import asyncio
import base64
import re
from http.cookies import SimpleCookie
from ipaddress import ip_network
from typing import Any
from urllib.parse import urlencode

from sekisho.config.model import (
    Config,
    MfaSettings,
    Route,
    SessionSettings,
    ThrottleSettings,
)
from sekisho.identity import totp
from sekisho.identity.mfa import TotpFactors
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.storage.secrets_store import get_or_create_secret
from sekisho.web import Request, Response

HOST = "app.city.lg.jp"
PASSWORD = "a-long-enough-passphrase"
OFFICE_IP, REMOTE_IP = "10.1.2.3", "203.0.113.7"


def make_config(**throttle: Any) -> Config:
    settings = {"account_max_failures": 5, "ip_max_failures": 50, "lockout": 600,
                "base_delay": 0.0, "max_delay": 0.0, **throttle}
    return Config(
        source="test",
        routes=(Route(id="mail", host=HOST, path_prefix="/", to="http://127.0.0.1:9"),),
        session=SessionSettings(idle_timeout=7200, absolute_lifetime=8 * 3600, cache_ttl=0.0),
        throttle=ThrottleSettings(**settings),
        mfa=MfaSettings(office_networks=(ip_network("10.0.0.0/8"),)),
    )


class App:
    """One gateway worker's identity handlers (build two for two workers)."""

    def __init__(self, engine: Any, audit: Any, clock: Any, hasher: Any,
                 config: Config | None = None) -> None:
        self.engine, self.audit, self.clock = engine, audit, clock
        self.config = config or make_config()
        self.manager = SessionManager(engine, self.config.session, clock=clock)
        self.handlers = build_signin_handlers(
            current_config=lambda: self.config, engine=engine, sessions=self.manager,
            audit=audit, clock=clock, hasher=hasher)
        self.factors = TotpFactors(engine, get_or_create_secret(engine, "mfa"), clock)

    def code(self, secret: bytes, offset_steps: int = 0) -> str:
        return totp.totp(secret, self.clock.now.timestamp() + 30 * offset_steps)

    def enrol(self, user_id: int) -> tuple[bytes, list[str]]:
        """Enrol TOTP directly (as if done earlier); returns the key and recovery codes."""
        factor_id, secret = self.factors.start_enrolment(user_id)
        self.clock.advance(-60)  # confirm with an older step so the current one stays unused
        assert self.factors.confirm(user_id, factor_id, self.code(secret))
        self.clock.advance(60)
        return secret, self.factors.new_recovery_codes(user_id)


class Browser:
    def __init__(self, app: App, ip: str = REMOTE_IP, agent: str = "pytest-browser") -> None:
        self.app, self.ip, self.agent = app, ip, agent
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, query: str = "",
                form: dict[str, str] | None = None) -> Response:
        headers = [("host", HOST), ("user-agent", self.agent)]
        if self.cookies:
            headers.append(("cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items())))
        body = urlencode(form).encode() if form is not None else b""
        token = self.cookies.get("__Host-sekisho")
        session = self.app.manager.lookup_sync(token) if token else None
        request = Request(method=method, target=path + (f"?{query}" if query else ""),
                          path=path, query=query, headers=headers, client_ip=self.ip,
                          scheme="https", host=HOST, body=body, session=session)
        response = asyncio.run(self.app.handlers[path](request))
        for name, value in response.headers:
            if name.lower() == "set-cookie":
                jar: SimpleCookie = SimpleCookie()
                jar.load(value)
                for morsel in jar.values():
                    if morsel["max-age"] == "0":
                        self.cookies.pop(morsel.key, None)
                    else:
                        self.cookies[morsel.key] = morsel.value
        return response

    def csrf(self, path: str, query: str = "") -> str:
        return csrf_from(self.request("GET", path, query))

    def sign_in(self, username: str, password: str = PASSWORD, rd: str = "") -> Response:
        return self.request("POST", "/.sekisho/signin", form={
            "csrf": self.csrf("/.sekisho/signin"), "username": username, "password": password,
            "rd": rd})

    def post_code(self, path: str, code: str) -> Response:
        return self.request("POST", path, form={"csrf": self.csrf("/.sekisho/signin"),
                                                "code": code})


def csrf_from(response: Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', response.body.decode())
    assert found is not None, response.body.decode()[:500]
    return found.group(1)


def location(response: Response) -> str:
    return next(v for k, v in response.headers if k.lower() == "location")


def secret_from(response: Response) -> bytes:
    text = re.search(r'<code class="secret">([^<]+)</code>', response.body.decode())
    assert text is not None
    raw = text.group(1).replace(" ", "")
    return base64.b32decode(raw + "=" * (-len(raw) % 8))
