"""The "my security" page: TOTP removal and recovery-code renewal through the real handlers,
with the recent-proof rule, CSRF, the last-factor rule and the audit trail."""

from __future__ import annotations

import dataclasses
import re
from ipaddress import ip_network

import pytest
from mfa_browser import OFFICE_IP, PASSWORD, App, Browser, csrf_from, location, make_config

from sekisho.audit.events import FactorChanged
from sekisho.config.model import MfaSettings
from sekisho.storage import factors as factor_store
from sekisho.storage import users
from sekisho.storage import webauthn as passkey_store

PAGE = "/.sekisho/security"
REMOVE, RENEW = PAGE + "/totp/remove", PAGE + "/recovery/renew"
OPTIONAL = MfaSettings(require_remote=False, office_networks=(ip_network("10.0.0.0/8"),),
                       require_groups=("admins",))


def _app(engine, audit, clock, hasher, mfa: MfaSettings | None = None) -> App:
    users.create_user(engine, "suzuki", password_hash=hasher.hash(PASSWORD))
    config = make_config()
    if mfa is not None:
        config = dataclasses.replace(config, mfa=mfa)
    return App(engine, audit, clock, hasher, config)


@pytest.fixture
def app(engine, audit, clock, fast_hasher):
    return _app(engine, audit, clock, fast_hasher)


@pytest.fixture
def optional_app(engine, audit, clock, fast_hasher):
    return _app(engine, audit, clock, fast_hasher, OPTIONAL)


def _uid(app: App) -> int:
    return users.require_user(app.engine, "suzuki").id


def _signed_in(app: App) -> tuple[Browser, bytes, list[str]]:
    """A session whose second factor (TOTP) was proven just now."""
    secret, codes = app.enrol(_uid(app))
    browser = Browser(app, ip=OFFICE_IP)
    browser.sign_in("suzuki")
    assert browser.post_code("/.sekisho/mfa/totp", app.code(secret)).status == 303
    return browser, secret, codes


def _post(browser: Browser, path: str, csrf: str | None = None):
    token = browser.csrf(PAGE) if csrf is None else csrf
    return browser.request("POST", path, form={"csrf": token})


def _changes(app: App) -> list[tuple[str, str]]:
    return [(e.kind, e.action) for e in app.audit.events if isinstance(e, FactorChanged)]


def _add_passkey(app: App, name: str = "Work laptop") -> None:
    passkey_store.add_credential(
        app.engine, user_id=_uid(app), credential_id="cred-1", public_key="pk", sign_count=0,
        name=name, transports=("internal",), aaguid="", user_verified=True, backed_up=False,
        now=app.clock.now)


def test_page_needs_a_session_and_shows_every_factor(app):
    anonymous = Browser(app)
    response = anonymous.request("GET", PAGE)
    assert response.status == 303 and location(response).startswith("/.sekisho/signin?")
    browser, _, _ = _signed_in(app)
    _add_passkey(app)
    page = browser.request("GET", PAGE).body.decode()
    assert 'href="/.sekisho/passkeys"' in page and "Work laptop" in page
    assert 'action="/.sekisho/security/totp/remove"' in page
    assert re.search(r'id="codes-left">[^<]*10', page)
    assert "セキュリティ設定" in page  # Japanese first


def test_renewed_codes_replace_the_old_ones_at_once(app):
    browser, _, old_codes = _signed_in(app)
    response = _post(browser, RENEW)
    assert response.status == 200
    new_codes = re.findall(r"<code>([a-z2-7-]{19})</code>", response.body.decode())
    assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
    assert not app.factors.use_recovery_code(_uid(app), old_codes[0])[0]  # dead at once
    assert app.factors.use_recovery_code(_uid(app), new_codes[0]) == (True, 9)
    assert _changes(app)[-1] == ("recovery", "renew")


def test_a_required_user_cannot_remove_the_last_factor(app):
    browser, _, _ = _signed_in(app)
    page = browser.request("GET", PAGE).body.decode()
    assert 'id="last-factor"' in page and 'id="remove-totp"' not in page
    response = _post(browser, REMOVE)
    assert response.status == 409
    assert factor_store.has_factor(app.engine, _uid(app), "totp")
    assert ("totp", "remove") not in _changes(app)


def test_a_required_user_with_a_passkey_may_remove_totp(app):
    browser, _, _ = _signed_in(app)
    _add_passkey(app)
    response = _post(browser, REMOVE)
    assert response.status == 303 and location(response) == PAGE + "?done=totp-removed"
    assert not factor_store.has_factor(app.engine, _uid(app), "totp")
    assert app.factors.unused_recovery_codes(_uid(app)) == 10  # still a factor: codes kept
    assert _changes(app)[-1] == ("totp", "remove")


def test_optional_user_removes_totp_and_its_codes(optional_app):
    app = optional_app
    browser, _, _ = _signed_in(app)
    assert _post(browser, REMOVE).status == 303
    assert not factor_store.has_factor(app.engine, _uid(app), "totp")
    assert app.factors.unused_recovery_codes(_uid(app)) == 0  # they would lead nowhere
    assert _changes(app)[-1] == ("totp", "remove")
    # The next sign-in needs the password only, and the old TOTP key is worthless.
    other = Browser(app, ip=OFFICE_IP, agent="other")
    assert other.sign_in("suzuki").status == 303
    assert "__Host-sekisho" in other.cookies


@pytest.mark.parametrize("path", [REMOVE, RENEW])
def test_an_old_session_must_step_up_first(app, path):
    browser, _, _ = _signed_in(app)
    token = browser.csrf(PAGE)
    app.clock.advance(app.config.mfa.enrol_max_age + 1)
    page = browser.request("GET", PAGE).body.decode()
    assert "/.sekisho/stepup?rd=%2F.sekisho%2Fsecurity" in page
    response = _post(browser, path, token)
    assert response.status == 303
    assert location(response) == "/.sekisho/stepup?rd=%2F.sekisho%2Fsecurity"
    assert factor_store.has_factor(app.engine, _uid(app), "totp")
    assert app.factors.unused_recovery_codes(_uid(app)) == 10
    assert not _changes(app)


@pytest.mark.parametrize("path", [REMOVE, RENEW])
def test_csrf_is_required(optional_app, path):
    app = optional_app
    browser, _, _ = _signed_in(app)
    assert _post(browser, path, "forged").status == 403
    other_browser_token = csrf_from(Browser(app, agent="x").request("GET", "/.sekisho/signin"))
    assert _post(browser, path, other_browser_token).status == 403
    assert factor_store.has_factor(app.engine, _uid(app), "totp")
    assert app.factors.unused_recovery_codes(_uid(app)) == 10
    assert not _changes(app)


def test_recent_changes_are_read_back_from_the_audit_log(app, clock):
    """The owner sees every factor change on their account — including an administrator's
    reset — and nobody else's: the page reads the real hash-chained audit log."""
    from sekisho.audit.events import FactorsReset, RecoveryCodeUsed
    from sekisho.audit.log import AuditLog

    log = AuditLog(app.engine, now=clock)
    log.start()
    try:
        log.append_sync(FactorChanged(user="suzuki", kind="webauthn", action="enrol",
                                      factor="1:laptop"))
        clock.advance(60)
        log.append_sync(FactorsReset(admin="it-admin", user="suzuki", factors=2,
                                     recovery_codes=10))
        clock.advance(60)
        log.append_sync(RecoveryCodeUsed(user="suzuki", source_ip="10.1.2.3", remaining=9))
        log.append_sync(FactorChanged(user="sato", kind="totp", action="enrol"))
        log.append_sync(FactorsReset(admin="it-admin", user="sato", factors=1,
                                     recovery_codes=10))
    finally:
        log.close()
    browser, _, _ = _signed_in(app)
    text = browser.request("GET", PAGE).body.decode()
    changes = re.findall(r"<li><time>[^<]+</time> ([^<]+)</li>", text)
    assert changes == ["リカバリーコードが使われました",
                       "管理者があなたの 2 段階目の認証をすべてリセットしました",
                       "パスキー: 登録"]
    clock.advance(91 * 86400)  # older than 90 days: no longer listed
    browser2, _, _ = _signed_in(app)
    assert "過去 90 日間に変更はありません。" in browser2.request("GET", PAGE).body.decode()
