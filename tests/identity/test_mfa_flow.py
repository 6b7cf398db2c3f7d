"""The sign-in transaction with a second factor, end to end through the real handlers."""

from __future__ import annotations

import re

import pytest
from mfa_browser import (
    HOST,
    OFFICE_IP,
    PASSWORD,
    REMOTE_IP,
    App,
    Browser,
    location,
    make_config,
    secret_from,
)

from sekisho.identity.flow import FLOW_COOKIE
from sekisho.storage import sessions as session_store
from sekisho.storage import users

RD = f"https://{HOST}/inbox"


@pytest.fixture
def app(engine, audit, clock, fast_hasher):
    for name in ("suzuki", "boss"):
        users.create_user(engine, name, password_hash=fast_hasher.hash(PASSWORD))
    users.create_group(engine, "admins")
    users.add_member(engine, "admins", "boss")
    return App(engine, audit, clock, fast_hasher)


def _uid(app, name):
    return users.require_user(app.engine, name).id


def _session(app, browser):
    return app.manager.lookup_sync(browser.cookies["__Host-sekisho"])


def test_office_sign_in_without_factor_gets_a_session(app):
    browser = Browser(app, ip=OFFICE_IP)
    response = browser.sign_in("suzuki", rd=RD)
    assert response.status == 303 and location(response) == RD
    assert _session(app, browser).auth_methods == {"pwd"}


def test_remote_sign_in_without_factor_must_enrol_not_enter(app):
    browser = Browser(app, ip=REMOTE_IP)
    response = browser.sign_in("suzuki", rd=RD)
    assert response.status == 303
    assert location(response) == "/.sekisho/mfa/totp/enrol"
    assert "__Host-sekisho" not in browser.cookies and FLOW_COOKIE in browser.cookies
    page = browser.request("GET", "/.sekisho/mfa/totp/enrol")
    assert page.status == 200 and b"<svg" in page.body
    assert b"http" not in page.body.split(b"<svg", 1)[1].split(b"</svg>", 1)[0].replace(
        b"http://www.w3.org/2000/svg", b"")  # the QR code is local: no external reference
    secret = secret_from(page)
    factor = re.search(rb'name="factor" value="(\d+)"', page.body).group(1).decode()
    csrf = re.search(rb'name="csrf" value="([^"]+)"', page.body).group(1).decode()
    done = browser.request("POST", "/.sekisho/mfa/totp/enrol", form={
        "csrf": csrf, "factor": factor, "code": app.code(secret)})
    assert done.status == 200
    codes = re.findall(rb"<code>([a-z2-7-]{19})</code>", done.body)
    assert len(codes) == 10
    session = _session(app, browser)
    assert session.auth_methods == {"pwd", "totp"} and session.mfa_time is not None
    assert FLOW_COOKIE not in browser.cookies
    assert RD.encode() in done.body
    assert "mfa.factor.changed" in app.audit.types()
    # The confirmation code cannot be replayed to sign in again.
    other = Browser(app, ip=REMOTE_IP, agent="second")
    assert location(other.sign_in("suzuki")) == "/.sekisho/mfa"
    assert other.post_code("/.sekisho/mfa/totp", app.code(secret)).status == 401


def test_admin_group_requires_mfa_even_in_the_office(app):
    response = Browser(app, ip=OFFICE_IP).sign_in("boss", rd=RD)
    assert location(response) == "/.sekisho/mfa/totp/enrol"


def test_enrolled_user_always_needs_the_factor_and_totp_signs_in(app):
    secret, _ = app.enrol(_uid(app, "suzuki"))
    browser = Browser(app, ip=OFFICE_IP)
    assert location(browser.sign_in("suzuki", rd=RD)) == "/.sekisho/mfa"
    page = browser.request("GET", "/.sekisho/mfa")
    assert page.status == 200 and b'action="/.sekisho/mfa/totp"' in page.body
    response = browser.post_code("/.sekisho/mfa/totp", app.code(secret))
    assert response.status == 303 and location(response) == RD
    assert _session(app, browser).auth_methods == {"pwd", "totp"}
    assert "signin.success" in app.audit.types()


def test_previous_step_is_accepted(app):
    secret, _ = app.enrol(_uid(app, "suzuki"))
    browser = Browser(app)
    browser.sign_in("suzuki")
    assert browser.post_code("/.sekisho/mfa/totp", app.code(secret, -1)).status == 303


def test_replayed_code_is_refused_even_on_another_worker(engine, app, audit, clock,
                                                          fast_hasher):
    secret, _ = app.enrol(_uid(app, "suzuki"))
    worker2 = App(engine, audit, clock, fast_hasher)
    first, second = Browser(app, agent="a"), Browser(worker2, agent="b")
    first.sign_in("suzuki")
    second.sign_in("suzuki")
    code = app.code(secret)
    assert first.post_code("/.sekisho/mfa/totp", code).status == 303
    refused = second.post_code("/.sekisho/mfa/totp", code)
    assert refused.status == 401 and "__Host-sekisho" not in second.cookies
    # And an older step is refused too once a newer one was used.
    assert second.post_code("/.sekisho/mfa/totp", app.code(secret, -1)).status == 401
    assert "mfa.failure" in audit.types()


def test_recovery_code_works_exactly_once(app):
    _, codes = app.enrol(_uid(app, "suzuki"))
    browser = Browser(app)
    browser.sign_in("suzuki", rd=RD)
    page = browser.request("GET", "/.sekisho/mfa/recovery")
    assert page.status == 200
    ok = browser.post_code("/.sekisho/mfa/recovery", codes[0].upper())
    assert ok.status == 303 and _session(app, browser).auth_methods == {"pwd", "recovery"}
    assert "mfa.recovery.used" in app.audit.types()
    again = Browser(app, agent="other")
    again.sign_in("suzuki")
    assert again.post_code("/.sekisho/mfa/recovery", codes[0]).status == 401
    assert again.post_code("/.sekisho/mfa/recovery", codes[1]).status == 303


def test_totp_guessing_is_throttled_per_account(engine, audit, clock, fast_hasher):
    users.create_user(engine, "suzuki", password_hash=fast_hasher.hash(PASSWORD))
    app = App(engine, audit, clock, fast_hasher, make_config(account_max_failures=3))
    secret, _ = app.enrol(_uid(app, "suzuki"))
    for n in range(3):
        browser = Browser(app, ip=f"203.0.113.{n + 1}", agent=f"guess{n}")
        browser.sign_in("suzuki")
        assert browser.post_code("/.sekisho/mfa/totp", "000000" if app.code(secret) != "000000"
                                 else "111111").status == 401
    victim = Browser(app, ip="198.51.100.5")
    victim.sign_in("suzuki")  # (password throttling is separate; the account key is MFA's)
    response = victim.post_code("/.sekisho/mfa/totp", app.code(secret))
    assert response.status == 429 and "__Host-sekisho" not in victim.cookies
    assert "signin.lockout" in audit.types()


def test_flow_dies_after_five_wrong_codes(app):
    secret, _ = app.enrol(_uid(app, "suzuki"))
    browser = Browser(app)
    browser.sign_in("suzuki")
    wrong = "000000" if app.code(secret) != "000000" else "111111"
    statuses = [browser.post_code("/.sekisho/mfa/totp", wrong).status for _ in range(5)]
    assert statuses == [401] * 5
    assert browser.request("GET", "/.sekisho/mfa").status == 400


def test_flow_expires(app, clock):
    secret, _ = app.enrol(_uid(app, "suzuki"))
    browser = Browser(app)
    browser.sign_in("suzuki")
    clock.advance(301)
    response = browser.post_code("/.sekisho/mfa/totp", app.code(secret))
    assert response.status == 400 and "__Host-sekisho" not in browser.cookies


def test_flow_is_single_use(app, clock):
    secret, _ = app.enrol(_uid(app, "suzuki"))
    browser = Browser(app)
    browser.sign_in("suzuki")
    saved = browser.cookies[FLOW_COOKIE]
    assert browser.post_code("/.sekisho/mfa/totp", app.code(secret)).status == 303
    clock.advance(30)
    replay = Browser(app)
    replay.cookies[FLOW_COOKIE] = saved
    assert replay.post_code("/.sekisho/mfa/totp", app.code(secret)).status == 400


def test_flow_cookie_in_another_browser_is_refused(app):
    secret, _ = app.enrol(_uid(app, "suzuki"))
    victim = Browser(app, agent="Mozilla/5.0 victim")
    victim.sign_in("suzuki")
    thief = Browser(app, agent="curl/8")
    thief.cookies[FLOW_COOKIE] = victim.cookies[FLOW_COOKIE]
    assert thief.request("GET", "/.sekisho/mfa").status == 400
    assert thief.post_code("/.sekisho/mfa/totp", app.code(secret)).status == 400
    assert Browser(app).request("GET", "/.sekisho/mfa").status == 400  # no cookie at all
    assert victim.post_code("/.sekisho/mfa/totp", app.code(secret)).status == 303


def test_step_up_rotates_the_session(app, clock):
    secret, _ = app.enrol(_uid(app, "suzuki"))
    browser = Browser(app)
    browser.sign_in("suzuki")
    browser.post_code("/.sekisho/mfa/totp", app.code(secret))
    before = _session(app, browser)
    clock.advance(1200)
    page = browser.request("GET", "/.sekisho/stepup", f"rd={RD}")
    assert page.status == 200 and "送信されていません" in page.body.decode()  # POST not replayed
    started = browser.request("POST", "/.sekisho/stepup", form={
        "csrf": re.search(rb'name="csrf" value="([^"]+)"', page.body).group(1).decode(),
        "rd": RD})
    assert location(started) == "/.sekisho/mfa"
    done = browser.post_code("/.sekisho/mfa/totp", app.code(secret))
    assert done.status == 303 and location(done) == RD
    after = _session(app, browser)
    assert after.session_id != before.session_id
    assert after.expires_at == before.expires_at and after.auth_time == before.auth_time
    assert after.mfa_time == clock.now
    old = session_store.load_session(app.engine, before.session_id)
    assert old.revoked_at is not None and old.revoked_reason == "rotated"
    assert "session.stepup" in app.audit.types()


def test_step_up_flow_belongs_to_its_session(app):
    secret, _ = app.enrol(_uid(app, "suzuki"))
    browser = Browser(app)
    browser.sign_in("suzuki")
    browser.post_code("/.sekisho/mfa/totp", app.code(secret))
    page = browser.request("GET", "/.sekisho/stepup")
    browser.request("POST", "/.sekisho/stepup", form={
        "csrf": re.search(rb'name="csrf" value="([^"]+)"', page.body).group(1).decode()})
    del browser.cookies["__Host-sekisho"]  # same browser, session gone
    assert browser.request("GET", "/.sekisho/mfa").status == 400


def test_enrolment_needs_a_recent_proof(app, clock):
    browser = Browser(app, ip=OFFICE_IP)
    browser.sign_in("suzuki")
    assert browser.request("GET", "/.sekisho/mfa/totp/enrol").status == 200
    clock.advance(601)
    response = browser.request("GET", "/.sekisho/mfa/totp/enrol")
    assert response.status == 303 and location(response).startswith("/.sekisho/stepup?")
    assert Browser(app).request("GET", "/.sekisho/mfa/totp/enrol").status == 303


def test_enrolled_user_cannot_add_a_factor_with_the_password_alone(app):
    app.enrol(_uid(app, "suzuki"))
    browser = Browser(app)
    browser.sign_in("suzuki")  # password proven, second factor not yet
    response = browser.request("GET", "/.sekisho/mfa/totp/enrol")
    assert response.status == 303 and location(response) == "/.sekisho/mfa"


@pytest.mark.parametrize("path", ["/.sekisho/mfa/totp", "/.sekisho/mfa/recovery",
                                  "/.sekisho/mfa/totp/enrol"])
def test_csrf_is_required_on_every_mfa_post(app, path):
    secret, codes = (None, None)
    if path != "/.sekisho/mfa/totp/enrol":
        secret, codes = app.enrol(_uid(app, "suzuki"))
    browser = Browser(app)
    browser.sign_in("suzuki")
    form = {"csrf": "1.forged.token", "code": app.code(secret) if secret else "123456"}
    if path.endswith("enrol"):
        page = browser.request("GET", path)
        form["factor"] = re.search(rb'name="factor" value="(\d+)"', page.body).group(1).decode()
        form["code"] = app.code(secret_from(page))
    elif path.endswith("recovery"):
        form["code"] = codes[0]
    response = browser.request("POST", path, form=form)
    assert response.status == 403 and "__Host-sekisho" not in browser.cookies


def test_csrf_is_required_on_step_up(app):
    browser = Browser(app, ip=OFFICE_IP)
    browser.sign_in("suzuki")
    response = browser.request("POST", "/.sekisho/stepup", form={"csrf": "x", "rd": RD})
    assert response.status == 403 and FLOW_COOKIE not in browser.cookies


def test_step_up_for_a_passkey_only_route_does_not_offer_totp(app, clock):
    """The gateway says `need=passkey` (e.g. the β′ マイナンバー guardrail): a TOTP step-up
    would end in the same denial, a loop. A user without a passkey is told to register one."""
    secret, _ = app.enrol(_uid(app, "suzuki"))
    browser = Browser(app)
    browser.sign_in("suzuki")
    browser.post_code("/.sekisho/mfa/totp", app.code(secret))
    page = browser.request("GET", "/.sekisho/stepup", f"rd={RD}&need=passkey")
    text = page.body.decode()
    assert page.status == 200 and "パスキー" in text
    assert 'href="/.sekisho/passkeys"' in text and 'action="/.sekisho/stepup"' not in text
    form_page = browser.request("GET", "/.sekisho/stepup", f"rd={RD}")  # for a CSRF token
    started = browser.request("POST", "/.sekisho/stepup", form={
        "csrf": re.search(rb'name="csrf" value="([^"]+)"', form_page.body).group(1).decode(),
        "rd": RD, "need": "passkey"})
    assert started.status == 303 and location(started) == "/.sekisho/passkeys"
    assert FLOW_COOKIE not in browser.cookies  # no step-up flow that could only fail


def test_step_up_passes_the_need_on_and_the_choice_page_filters(app, clock):
    secret, _ = app.enrol(_uid(app, "suzuki"))
    browser = Browser(app)
    browser.sign_in("suzuki")
    browser.post_code("/.sekisho/mfa/totp", app.code(secret))
    page = browser.request("GET", "/.sekisho/stepup", f"rd={RD}&need=totp")
    assert b'name="need" value="totp"' in page.body
    started = browser.request("POST", "/.sekisho/stepup", form={
        "csrf": re.search(rb'name="csrf" value="([^"]+)"', page.body).group(1).decode(),
        "rd": RD, "need": "totp"})
    assert location(started) == "/.sekisho/mfa?need=totp"
    offered = browser.request("GET", "/.sekisho/mfa", "need=totp")
    assert b'action="/.sekisho/mfa/totp"' in offered.body
    assert b"/.sekisho/mfa/recovery" not in offered.body  # a recovery code is not TOTP
    only_passkeys = browser.request("GET", "/.sekisho/mfa", "need=passkey")
    assert b'action="/.sekisho/mfa/totp"' not in only_passkeys.body
    # An unknown value is ignored, never echoed.
    odd = browser.request("GET", "/.sekisho/stepup", f"rd={RD}&need=%3Cscript%3E")
    assert b"<script>" not in odd.body and b'name="need" value=""' in odd.body
