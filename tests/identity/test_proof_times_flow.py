"""The sign-in flows record when each method was proven: a step-up with a TOTP refreshes the
TOTP's time and no other, so a passkey used hours ago stays hours old."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from mfa_browser import HOST, PASSWORD, REMOTE_IP, App, Browser, location

from sekisho.storage import users

RD = f"https://{HOST}/inbox"


@pytest.fixture
def app(engine, audit, clock, fast_hasher):
    users.create_user(engine, "suzuki", password_hash=fast_hasher.hash(PASSWORD))
    return App(engine, audit, clock, fast_hasher)


def _session(app, browser):
    return app.manager.lookup_sync(browser.cookies["__Host-sekisho"])


def test_sign_in_with_a_second_factor_records_both_times(app, clock):
    secret, _ = app.enrol(users.require_user(app.engine, "suzuki").id)
    browser = Browser(app, ip=REMOTE_IP)
    started = clock.now
    browser.sign_in("suzuki")
    clock.advance(40)  # typing the code
    assert browser.post_code("/.sekisho/mfa/totp", app.code(secret)).status == 303
    session = _session(app, browser)
    assert dict(session.proofs) == {"pwd": started, "totp": clock.now}


def test_a_totp_step_up_leaves_an_old_passkey_old(app, clock):
    user = users.require_user(app.engine, "suzuki")
    secret, _ = app.enrol(user.id)
    signed_in = clock.now - timedelta(hours=2)  # the passkey sign-in, two hours ago
    token, _ = app.manager.create(
        user, ("pwd", "webauthn", "webauthn_uv"), "192.0.2.1", "pytest", auth_time=signed_in,
        mfa_time=signed_in, proofs=dict.fromkeys(("pwd", "webauthn", "webauthn_uv"), signed_in))
    browser = Browser(app)
    browser.cookies["__Host-sekisho"] = token
    page = browser.request("GET", "/.sekisho/stepup", f"rd={RD}")
    started = browser.request("POST", "/.sekisho/stepup", form={
        "csrf": re.search(rb'name="csrf" value="([^"]+)"', page.body).group(1).decode(),
        "rd": RD})
    assert location(started) == "/.sekisho/mfa"
    done = browser.post_code("/.sekisho/mfa/totp", app.code(secret))
    assert done.status == 303 and location(done) == RD
    after = _session(app, browser)
    assert dict(after.proofs) == {"pwd": signed_in, "webauthn": signed_in,
                                  "webauthn_uv": signed_in, "totp": clock.now}
    assert after.last_proof == clock.now  # what `auth_age` reads: the TOTP counts there
