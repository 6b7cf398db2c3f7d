"""The passkey pages through the real identity handlers (real storage, software key)."""

from __future__ import annotations

import html
import json
import re
from dataclasses import replace

import pytest
from mfa_browser import HOST, OFFICE_IP, PASSWORD, REMOTE_IP, App, Browser, location, make_config
from passkey_softkey import SoftKey

from sekisho.config.model import WebAuthnSettings
from sekisho.identity.flow import FLOW_COOKIE
from sekisho.storage import users
from sekisho.storage import webauthn as store

ORIGIN = f"https://{HOST}"
RD = f"https://{HOST}/inbox"
MANAGE, REGISTER = "/.sekisho/passkeys", "/.sekisho/passkeys/register"
VERIFY, PASSWORDLESS = "/.sekisho/passkeys/verify", "/.sekisho/passkeys/signin"


@pytest.fixture
def app(engine, audit, clock, fast_hasher):
    for name in ("suzuki", "boss"):
        users.create_user(engine, name, password_hash=fast_hasher.hash(PASSWORD))
    users.create_group(engine, "admins")
    users.add_member(engine, "admins", "boss")
    config = replace(make_config(), webauthn=WebAuthnSettings(passwordless=True))
    return App(engine, audit, clock, fast_hasher, config)


def _options(response) -> str:
    found = re.search(r'data-options="([^"]+)"', response.body.decode())
    assert found is not None, response.body.decode()[:800]
    return html.unescape(found.group(1))


def _csrf(response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', response.body.decode())
    assert found is not None
    return found.group(1)


def _header(response, name):
    return next((v for k, v in response.headers if k.lower() == name.lower()), None)


def _register(browser: Browser, key: SoftKey, name="laptop"):
    page = browser.request("GET", MANAGE)
    assert page.status == 200
    answer = key.create(_options(page))
    return browser.request("POST", REGISTER, form={
        "csrf": _csrf(page), "credential": json.dumps(answer), "name": name})


def _enrolled(app, name="suzuki"):
    browser = Browser(app, ip=OFFICE_IP)
    assert browser.sign_in(name, rd=RD).status == 303
    key = SoftKey(ORIGIN)
    response = _register(browser, key)
    assert response.status == 303 and location(response) == MANAGE + "?done=registered"
    return browser, key


def _verify(browser: Browser, key: SoftKey, **get):
    page = browser.request("GET", VERIFY)
    assert page.status == 200, page.body[:300]
    return browser.request("POST", VERIFY, form={
        "csrf": _csrf(page), "credential": json.dumps(key.get(_options(page), **get))})


def test_register_list_and_audit(app, audit):
    browser, _ = _enrolled(app)
    page = browser.request("GET", MANAGE, "done=registered")
    assert "laptop" in page.body.decode()
    csp = _header(page, "Content-Security-Policy")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    event = [e for e in audit.events if e.event_type == "mfa.factor.changed"][-1]
    assert (event.kind, event.action, event.user) == ("webauthn", "enrol", "suzuki")
    signin = browser.request("GET", "/.sekisho/signin")
    assert "script-src" not in _header(signin, "Content-Security-Policy")


def test_enrolment_needs_a_recent_proof(app, clock):
    browser, _ = _enrolled(app)
    clock.advance(11 * 60)
    page = browser.request("GET", MANAGE)
    assert "data-options" not in page.body.decode() and "/.sekisho/stepup" in page.body.decode()
    stale = browser.request("POST", REGISTER, form={"csrf": _csrf(page), "credential": "{}"})
    assert stale.status == 303 and location(stale).startswith("/.sekisho/stepup")
    row = store.list_credentials(app.engine, users.require_user(app.engine, "suzuki").id)[0]
    removal = browser.request("POST", "/.sekisho/passkeys/remove",
                              form={"csrf": _csrf(page), "id": str(row.id)})
    assert removal.status == 303 and location(removal).startswith("/.sekisho/stepup")
    assert store.list_credentials(app.engine, row.user_id)


def test_second_factor_with_a_passkey(app, audit):
    _, key = _enrolled(app)
    browser = Browser(app, ip=REMOTE_IP)
    response = browser.sign_in("suzuki", rd=RD)
    assert location(response) == "/.sekisho/mfa"
    choose = browser.request("GET", "/.sekisho/mfa")
    assert VERIFY in choose.body.decode()
    done = _verify(browser, key)
    assert done.status == 303 and location(done) == RD
    session = app.manager.lookup_sync(browser.cookies["__Host-sekisho"])
    assert {"pwd", "webauthn", "webauthn_uv"} <= set(session.auth_methods)
    assert FLOW_COOKIE not in browser.cookies


def test_wrong_assertions_are_throttled_audited_and_end_the_flow(app, audit):
    _, key = _enrolled(app)
    browser = Browser(app, ip=REMOTE_IP)
    browser.sign_in("suzuki", rd=RD)
    results = [_verify(browser, key, origin="https://phish.example").status for _ in range(5)]
    assert results == [401, 401, 401, 401, 401]
    assert browser.request("GET", VERIFY).status == 400  # the flow has ended
    failures = [e for e in audit.events if e.event_type == "mfa.failure"]
    assert len(failures) == 5 and {e.method for e in failures} == {"webauthn"}
    assert app.manager.lookup_sync(browser.cookies.get("__Host-sekisho", "")) is None


def test_sign_count_regression_is_audited_and_refused(app, audit):
    _, key = _enrolled(app)
    browser = Browser(app, ip=REMOTE_IP)
    browser.sign_in("suzuki", rd=RD)
    assert _verify(browser, key, counter=7).status == 303
    clone = Browser(app, ip=REMOTE_IP, agent="clone")
    clone.sign_in("suzuki", rd=RD)
    assert _verify(clone, key, counter=7).status == 401
    event = [e for e in audit.events if e.event_type == "webauthn.sign_count_regressed"][-1]
    assert (event.user, event.stored, event.received) == ("suzuki", 7, 7)


def test_user_verification_rules(app):
    app.config = replace(app.config, mfa=replace(app.config.mfa, require_groups=()))
    browser = Browser(app, ip=OFFICE_IP)
    browser.sign_in("suzuki", rd=RD)
    page = browser.request("GET", MANAGE)
    assert json.loads(_options(page))["authenticatorSelection"]["userVerification"] == \
        "preferred"
    admin = Browser(app, ip=OFFICE_IP)
    admin.sign_in("boss", rd=RD)  # a member of require_uv_groups (admins)
    page = admin.request("GET", MANAGE)
    assert json.loads(_options(page))["authenticatorSelection"]["userVerification"] == \
        "required"
    refused = admin.request("POST", REGISTER, form={
        "csrf": _csrf(page), "credential": json.dumps(SoftKey(ORIGIN, uv=False).create(
            _options(page))), "name": "no-pin"})
    assert refused.status == 400
    app.config = replace(app.config, webauthn=WebAuthnSettings(user_verification="required"))
    page = browser.request("GET", MANAGE)
    assert json.loads(_options(page))["authenticatorSelection"]["userVerification"] == \
        "required"


def _step_up(browser: Browser, key: SoftKey) -> None:
    page = browser.request("GET", "/.sekisho/stepup", "rd=" + MANAGE)
    started = browser.request("POST", "/.sekisho/stepup", form={"csrf": _csrf(page),
                                                               "rd": MANAGE})
    assert location(started) == "/.sekisho/mfa"
    assert _verify(browser, key).status == 303


def test_a_second_passkey_needs_the_first_one(app):
    browser, key = _enrolled(app)
    page = browser.request("GET", MANAGE)
    assert "data-options" not in page.body.decode()  # the session has not proven a factor yet
    _step_up(browser, key)
    assert _register(browser, SoftKey(ORIGIN), "phone").status == 303
    names = [r.name for r in store.list_credentials(
        app.engine, users.require_user(app.engine, "suzuki").id)]
    assert names == ["laptop", "phone"]


def test_passwordless_sign_in(app, audit):
    _, key = _enrolled(app)
    browser = Browser(app, ip=REMOTE_IP)
    signin = browser.request("GET", "/.sekisho/signin", "rd=" + RD)
    assert PASSWORDLESS + "?rd=" in signin.body.decode()
    page = browser.request("GET", PASSWORDLESS, "rd=" + RD)
    assert json.loads(_options(page))["userVerification"] == "required"
    done = browser.request("POST", PASSWORDLESS, form={
        "csrf": _csrf(page), "rd": RD, "credential": json.dumps(key.get(_options(page)))})
    assert done.status == 303 and location(done) == RD
    session = app.manager.lookup_sync(browser.cookies["__Host-sekisho"])
    assert {"webauthn", "webauthn_uv"} <= set(session.auth_methods)
    page = browser.request("GET", PASSWORDLESS)
    stranger = SoftKey(ORIGIN)
    stranger.user_handle = b"x" * 32
    stranger.rp_id = HOST
    bad = browser.request("POST", PASSWORDLESS, form={
        "csrf": _csrf(page), "credential": json.dumps(stranger.get(_options(page)))})
    assert bad.status == 401
    failed = [e for e in audit.events if e.event_type == "webauthn.signin_failed"][-1]
    assert failed.reason == "unknown-credential"


def test_passwordless_is_off_by_default(app):
    app.config = replace(app.config, webauthn=WebAuthnSettings())
    assert Browser(app).request("GET", PASSWORDLESS).status == 404
    assert PASSWORDLESS not in Browser(app).request("GET", "/.sekisho/signin").body.decode()


def test_rename_remove_only_own_and_with_csrf(app, audit):
    browser, key = _enrolled(app)
    row = store.list_credentials(app.engine, users.require_user(app.engine, "suzuki").id)[0]
    page = browser.request("GET", MANAGE)
    forged = browser.request("POST", "/.sekisho/passkeys/rename",
                             form={"id": str(row.id), "name": "evil"})
    assert forged.status == 403
    renamed = browser.request("POST", "/.sekisho/passkeys/rename",
                              form={"csrf": _csrf(page), "id": str(row.id), "name": "仕事用"})
    assert renamed.status == 303
    _step_up(browser, key)
    page = browser.request("GET", MANAGE)
    boss = Browser(app, ip=OFFICE_IP)
    app.config = replace(app.config, mfa=replace(app.config.mfa, require_groups=()))
    boss.sign_in("boss", rd=RD)
    boss_page = boss.request("GET", MANAGE)
    idor = boss.request("POST", "/.sekisho/passkeys/remove",
                        form={"csrf": _csrf(boss_page), "id": str(row.id)})
    assert idor.status == 404 and store.list_credentials(app.engine, row.user_id)
    # The only factor of a user who must use MFA stays: removing it would let whoever holds
    # the password enrol their own factor at the next sign-in.
    blocked = browser.request("POST", "/.sekisho/passkeys/remove",
                              form={"csrf": _csrf(page), "id": str(row.id)})
    assert blocked.status == 409 and store.list_credentials(app.engine, row.user_id)
    app.config = replace(app.config, mfa=replace(app.config.mfa, require_remote=False,
                                                 require_groups=()))
    removed = browser.request("POST", "/.sekisho/passkeys/remove",
                              form={"csrf": _csrf(page), "id": str(row.id)})
    assert removed.status == 303 and not store.list_credentials(app.engine, row.user_id)
    actions = [e.action for e in audit.events if e.event_type == "mfa.factor.changed"]
    assert actions[-2:] == ["rename", "remove"]


def test_step_up_with_a_passkey_rotates_the_session(app, clock):
    browser, key = _enrolled(app)
    old = browser.cookies["__Host-sekisho"]
    clock.advance(600)
    page = browser.request("GET", "/.sekisho/stepup", "rd=" + RD)
    started = browser.request("POST", "/.sekisho/stepup", form={"csrf": _csrf(page), "rd": RD})
    assert location(started) == "/.sekisho/mfa"
    done = _verify(browser, key)
    assert done.status == 303 and location(done) == RD
    assert browser.cookies["__Host-sekisho"] != old
    assert app.manager.lookup_sync(old) is None
    session = app.manager.lookup_sync(browser.cookies["__Host-sekisho"])
    assert session.mfa_time == clock.now and "webauthn_uv" in session.auth_methods
