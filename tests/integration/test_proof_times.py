"""The admin console through a real `sekisho serve`: "a passkey proven within 15 minutes" means
the passkey's own proof, so a session that used its passkey two hours ago and a TOTP a
minute ago is sent to step up with a passkey, never let in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sekisho.config.model import SessionSettings
from sekisho.identity.sessions import SessionManager
from sekisho.storage.database import create_database_engine
from sekisho.storage.users import require_user

from .harness import Browser, GatewayProcess

API = "/.sekisho/api"
JSON = {"Accept": "application/json"}


def _browser(gateway: GatewayProcess, **ages: float) -> tuple[Browser, str]:
    """A browser holding sato's session (group admins) whose methods were proven `ages`
    seconds ago each, written into the gateway's database as the sign-in flows write it."""
    now = datetime.now(UTC)
    proofs = {name: now - timedelta(seconds=age) for name, age in ages.items()}
    engine = create_database_engine(f"sqlite:///{gateway.tmp / 'sekisho.db'}")
    try:
        token, _ = SessionManager(engine, SessionSettings()).create(
            require_user(engine, "sato"), proofs, "127.0.0.1", "test",
            auth_time=proofs["pwd"], mfa_time=max(proofs.values()), proofs=proofs)
    finally:
        engine.dispose()
    browser = gateway.browser()
    host = f"wiki.localhost:{gateway.port}"
    browser.cookies_for(host)[SessionSettings().cookie_name] = token
    return browser, host


def test_a_fresh_totp_does_not_stand_in_for_an_old_passkey(sqlite_gateway: GatewayProcess
                                                          ) -> None:
    attack, host = _browser(sqlite_gateway, pwd=7200, webauthn=7200, webauthn_uv=7200,
                            totp=60)
    refused = attack.get(host, API + "/me", headers=JSON)
    assert refused.status == 401, refused.body[:300]
    error = refused.json()["error"]
    assert isinstance(error, dict) and error["code"] == "step-up-required"
    assert error["details"]["reasons"] == ["auth-too-old"]
    assert "need=passkey" in error["details"]["location"]
    page = attack.get(host, "/.sekisho/admin/")
    assert page.status == 302 and "need=passkey" in (page.header("Location") or "")

    fresh, _ = _browser(sqlite_gateway, pwd=7200, totp=7200, webauthn=60, webauthn_uv=60)
    me = fresh.get(host, API + "/me", headers=JSON)
    assert me.status == 200 and me.json()["name"] == "sato"
