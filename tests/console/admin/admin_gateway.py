"""A real `sekisho serve` for the admin API tests that go through the gateway (the
authorisation matrix, schemathesis): tokens made by `sekisho token create`, one revoked by
`sekisho token revoke`, one already expired (written with the storage functions into the
gateway's own database: the CLI cannot make a token in the past)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))
from harness import Browser, EchoUpstream, GatewayProcess, Response

from sekisho.config.model import SessionSettings
from sekisho.identity.sessions import SessionManager
from sekisho.storage import api_tokens
from sekisho.storage.database import create_database_engine
from sekisho.storage.users import require_user

ROLES = ("superadmin", "helpdesk", "auditor")


@dataclass
class AdminGateway:
    process: GatewayProcess
    upstream: EchoUpstream
    tokens: dict[str, str] = field(default_factory=dict)  # role, "expired", "revoked"

    @property
    def host(self) -> str:
        return f"wiki.localhost:{self.process.port}"

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.process.port}/.sekisho/api"

    def browser(self) -> Browser:
        return self.process.browser()

    def call(self, method: str, path: str, credential: str | None, *,
             body: Any = None, headers: dict[str, str] | None = None) -> Response:
        sent = {"Accept": "application/json", **(headers or {})}
        if credential is not None:
            sent["Authorization"] = f"Bearer {self.tokens[credential]}"
        data = b""
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        return self.browser().request(method, self.host, "/.sekisho/api" + path, body=data,
                                      headers=sent)

    def session(self, username: str, methods: tuple[str, ...]) -> Browser:
        """A browser holding a session written straight into the gateway's database (as a
        passkey sign-in would leave it: the passkey ceremony itself is tested elsewhere)."""
        engine = create_database_engine(f"sqlite:///{self.process.tmp / 'sekisho.db'}")
        try:
            manager = SessionManager(engine, SessionSettings())
            token, _ = manager.create(require_user(engine, username), methods, "127.0.0.1",
                                      "test")
        finally:
            engine.dispose()
        browser = self.browser()
        browser.cookies_for(self.host)[SessionSettings().cookie_name] = token
        return browser

    def stop(self) -> None:
        self.process.stop()
        self.upstream.close()


def start(tmp: Path) -> AdminGateway:
    upstream = EchoUpstream()
    url = f"sqlite:///{tmp / 'sekisho.db'}"
    process = GatewayProcess(tmp, url, upstream)
    text = process.config.read_text(encoding="utf-8")
    # Hundreds of deliberately bad tokens from one address: no lock, no back-off here (the
    # throttle itself is tested in test_access.py).
    text = text.replace("ip_max_failures: 50", "ip_max_failures: 100000")
    text = text.replace("base_delay: 10ms", "base_delay: 1ms").replace("max_delay: 10ms",
                                                                       "max_delay: 1ms")
    process.config.write_text(text, encoding="utf-8")
    process.provision()
    gateway = AdminGateway(process, upstream)
    for role in ROLES:
        gateway.tokens[role] = _create(process, role, role)
    gateway.tokens["revoked"] = _create(process, "revoked", "superadmin")
    revoked_id = api_tokens.parse(gateway.tokens["revoked"])
    assert revoked_id is not None
    process.cli("token", "revoke", revoked_id[0])
    engine = create_database_engine(url)
    try:
        past = datetime.now(UTC) - timedelta(days=10)
        _, gateway.tokens["expired"] = api_tokens.create(
            engine, name="expired", role="superadmin", created_by="test", now=past,
            expires_at=past + timedelta(days=1))
    finally:
        engine.dispose()
    process.start()
    return gateway


def _create(process: GatewayProcess, name: str, role: str) -> str:
    made = process.cli("token", "create", "--name", name, "--role", role, "--days", "1")
    return made.stdout.strip()
