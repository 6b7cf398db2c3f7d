"""The OIDC test stack (fixtures in conftest.py): a real Gateway on 127.0.0.1 serving the real
identity handlers (password, MFA and OIDC) over a migrated SQLite database, two real OpenID
Providers (`oidc-provider`, one process per issuer: "alpha" and "beta") and a misbehaving
fake IdP ("fake").

The stack is built once per session (starting Node.js is the slow part); each test sets the
configuration it needs with `stack.configure(...)` — exactly what a reload does in production.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import threading
from collections.abc import Coroutine
from ipaddress import ip_network
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
from oidc_servers import FakeIdp, OpenIdProvider, client

from sekisho.audit.events import AuditEvent
from sekisho.config.model import (
    Config,
    IdentityProvider,
    ListenAddress,
    MfaSettings,
    Route,
    Secret,
    SessionSettings,
    TLSSettings,
)
from sekisho.gateway.keys import KeyRing
from sekisho.gateway.server import Gateway
from sekisho.identity.oidc import build_handlers
from sekisho.identity.oidc.base import default_http
from sekisho.identity.oidc.discovery import ProviderCache
from sekisho.identity.oidc.ratelimit import StartLimiter
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.runtime import Runtime, build_runtime
from sekisho.storage import oidc as oidc_store
from sekisho.storage.database import create_database_engine, upgrade
from sekisho.storage.keys import SigningKeyRepository

T = TypeVar("T")
OIDC_TABLES = [oidc_store.OidcTransaction, oidc_store.OidcReplay, oidc_store.OidcIdentity,
               oidc_store.OidcGroupLink, oidc_store.OidcSession]

USERS: dict[str, dict[str, Any]] = {
    "tanaka": {"email": "tanaka@city.example.jp", "email_verified": True, "name": "田中 花子",
               "groups": ["staff"], "amr": ["pwd", "mfa"], "acr": "urn:city:mfa"},
    "suzuki": {"email": "suzuki@city.example.jp", "email_verified": True, "name": "Suzuki",
               "groups": ["staff"], "amr": ["pwd"]},
    "unverified": {"email": "sato@city.example.jp", "email_verified": False, "amr": ["pwd"]},
    "multiat": {"email": "evil@attacker.example@city.example.jp", "email_verified": True},
    "outsider": {"email": "someone@gmail.example", "email_verified": True, "amr": ["mfa"]},
    "yamada": {"email": "yamada@city.example.jp", "email_verified": True, "amr": ["mfa"]},
    "ito": {"email": "ito@city.example.jp", "email_verified": True, "amr": ["mfa"]},
    "ueda": {"email": "ueda@city.example.jp", "email_verified": True, "amr": ["mfa"]},
}


class MemoryAudit:
    """A real in-memory AuditSink."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)

    async def append(self, event: AuditEvent) -> None:
        self.events.append(event)

    def of(self, kind: type[AuditEvent]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class Loop:
    """A background event loop thread for the gateway."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Stack:
    def __init__(self, workdir: Any) -> None:
        self.loop = Loop()
        self.engine = create_database_engine(f"sqlite:///{workdir}/oidc.db")
        upgrade(self.engine)
        self.audit = MemoryAudit()
        self.sessions = SessionManager(self.engine, SessionSettings(cache_ttl=0))
        self.random = secrets.token_urlsafe
        keyring = KeyRing(SigningKeyRepository(self.engine))
        keyring.ensure()
        self.runtime: Runtime | None = None
        self.cache = ProviderCache(default_http)
        self.limiter = StartLimiter()
        handlers = build_signin_handlers(
            current_config=lambda: self.config, engine=self.engine, sessions=self.sessions,
            audit=self.audit, builders=[self._build])
        self.gateway = Gateway(self._runtime, self.sessions, self.audit, keyring,
                               handlers)
        sockets = self.loop.call(self.gateway.start([ListenAddress("127.0.0.1", 0)], None))
        self.origin = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        self.fake = FakeIdp("sekisho-fake")
        self.alpha = OpenIdProvider({"users": USERS, "clients": [
            client("sekisho-a", "secret-a", self.origin),
            client("sekisho-a2", "secret-a2", self.origin,
                   token_endpoint_auth_method="client_secret_post")]}, workdir, "alpha")
        self.beta = OpenIdProvider({"users": USERS, "alg": "ES256", "clients": [
            client("sekisho-b", "secret-b", self.origin,
                   id_token_signed_response_alg="ES256")]}, workdir, "beta")
        self.configure()

    def _build(self, context: Any) -> Any:
        return build_handlers(context, random=self._random, cache=self.cache,
                              limiter=self.limiter)

    def _random(self, size: int) -> str:
        return self.random(size)  # tests may swap `random` (late binding)

    def _runtime(self) -> Runtime:
        assert self.runtime is not None
        return self.runtime

    @property
    def config(self) -> Config:
        return self._runtime().config

    def idps(self) -> dict[str, IdentityProvider]:
        loopback = {"allow_insecure_http_for_loopback": True}
        return {
            "alpha": IdentityProvider(id="alpha", title="Alpha IdP", issuer=self.alpha.issuer,
                                      client_id="sekisho-a", client_secret=Secret("secret-a"),
                                      jit=True, **loopback),
            "beta": IdentityProvider(id="beta", title="Beta IdP", issuer=self.beta.issuer,
                                     client_id="sekisho-b", client_secret=Secret("secret-b"),
                                     jit=True, algorithms=("ES256",), **loopback),
            "fake": IdentityProvider(id="fake", title="Fake", issuer=self.fake.issuer,
                                     client_id="sekisho-fake", client_secret=Secret("s"),
                                     jit=True, **loopback),
        }

    def configure(self, *, mfa: MfaSettings | None = None, route_idp: str = "",
                  **changes: dict[str, Any]) -> None:
        """Reload with the three IdPs; `alpha={"jit": False}` changes one IdP's settings."""
        idps = self.idps()
        for name, fields in changes.items():
            idps[name] = dataclasses.replace(idps[name], **fields)
        config = Config(
            source="<oidc-test>", tls=TLSSettings(enabled=False),
            session=SessionSettings(cache_ttl=0),
            mfa=mfa or MfaSettings(office_networks=(ip_network("127.0.0.0/8"),)),
            policies={"anyone": {"allow": {"and": [{"always": True}]}}},
            routes=(Route(id="app", host="127.0.0.1", path_prefix="/", to="http://127.0.0.1:9",
                          policy="anyone", idp=route_idp),),
            identity_providers=tuple(idps.values()))
        self.runtime = build_runtime(config)

    def session_token(self, browser: Browser) -> str | None:
        return browser.client.cookies.get("__Host-sekisho")

    def close(self) -> None:
        self.loop.call(self.gateway.close(1.0))
        self.loop.stop()
        self.alpha.stop()
        self.beta.stop()
        self.fake.stop()
        self.engine.dispose()


_FORM = re.compile(r'<form[^>]*action="([^"]+)"', re.IGNORECASE)


class Browser:
    """A browser-less browser: one cookie jar, redirects followed by hand, forms submitted."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.client = httpx.Client(follow_redirects=False, timeout=15,
                                   headers={"User-Agent": "oidc-test-browser"})
        self.history: list[httpx.Response] = []

    def get(self, url: str) -> httpx.Response:
        response = self.client.get(url)
        self.history.append(response)
        return response

    def sign_in(self, idp: str = "alpha", login: str = "tanaka", rd: str = "/app",
                start: str | None = None) -> httpx.Response:
        """Start at Sekisho, sign in at the OP (login and consent pages), and return the
        gateway's answer to the callback (or the first answer from Sekisho that is not a
        redirect to the IdP)."""
        url = start or f"{self.stack.origin}/.sekisho/oidc/start?idp={idp}&rd={rd}"
        response = self.get(url)
        for _ in range(30):
            if response.is_redirect:
                url = urljoin(str(response.url), response.headers["location"])
                if url.startswith(self.stack.origin):
                    return self.get(url) if "/.sekisho/oidc/callback" in url else response
                response = self.get(url)
                continue
            if urlsplit(str(response.url)).path.startswith("/interaction/"):
                action = _FORM.search(response.text)
                assert action is not None, response.text
                data = {"login": login, "password": "pw"} if 'name="login"' in response.text \
                    else {}
                response = self.client.post(urljoin(str(response.url), action.group(1)),
                                            data=data)
                self.history.append(response)
                continue
            return response
        raise AssertionError("the sign-in did not come back to Sekisho")

    def close(self) -> None:
        self.client.close()


