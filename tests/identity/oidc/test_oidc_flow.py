"""Full browser-less authorization code flow through the real gateway and the real, certified
OpenID Provider (`oidc-provider`): sign-in, two IdPs, key rotation, claim rules, MFA, and
logout in both directions."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import time
from ipaddress import ip_network
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from oidc_stack import Browser, Stack

from sekisho.audit.events import (
    BackchannelLogout,
    GroupChanged,
    OidcRejected,
    OidcSignIn,
    SignedOut,
    SignInSucceeded,
    UserChanged,
)
from sekisho.config.model import MfaSettings, Secret
from sekisho.identity import totp
from sekisho.identity.flow import FLOW_COOKIE
from sekisho.storage import factors as factor_store
from sekisho.storage import login_flows, users
from sekisho.storage import oidc as oidc_store


def _signed_in(stack: Stack, browser: Browser):
    token = stack.session_token(browser)
    return stack.sessions.lookup_sync(token) if token else None


def _reasons(stack: Stack) -> list[str]:
    return [e.reason for e in stack.audit.of(OidcRejected)]


def _refused(stack: Stack, browser: Browser, response: httpx.Response, reason: str,
             status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "/ " in response.text or "。" in response.text  # a page for people, not a trace
    assert browser.client.cookies.get("__Host-sekisho") is None
    assert _signed_in(stack, browser) is None
    assert not stack.audit.of(SignInSucceeded)
    assert _reasons(stack) == [reason]


def test_code_flow_signs_in_and_provisions_the_user(oidc, browser):
    if users.get_group(oidc.engine, "staff") is None:
        users.create_group(oidc.engine, "staff")
    response = browser.sign_in("alpha", "tanaka", rd=f"{oidc.origin}/app")
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"{oidc.origin}/app"
    session = _signed_in(oidc, browser)
    assert session is not None
    assert session.username == "tanaka@city.example.jp"
    assert session.display_name == "田中 花子"
    assert {"oidc", "idp_mfa"} <= session.auth_methods
    assert session.idp == "alpha"
    assert "staff" in session.groups
    signin = oidc.audit.of(OidcSignIn)[0]
    assert (signin.idp, signin.idp_mfa, signin.next_step) == ("alpha", True, "session")
    assert oidc.audit.of(SignInSucceeded)
    # The authorization request really used PKCE S256, state and nonce.
    auth = next(r for r in browser.history if urlsplit(str(r.url)).path == "/auth")
    query = parse_qs(urlsplit(str(auth.url)).query)
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43
    assert query["state"][0] and query["nonce"][0]


def test_jit_creation_and_group_changes_are_audited(oidc, browser):
    if users.get_group(oidc.engine, "staff") is None:
        users.create_group(oidc.engine, "staff")
    browser.sign_in("alpha", "ito")  # no groups claim at all
    assert any(isinstance(e, UserChanged) and e.details == "jit" for e in oidc.audit.events)
    oidc.configure(alpha={"groups": ("staff",)})
    oidc.audit.events.clear()
    second = Browser(oidc)
    try:
        second.sign_in("alpha", "ito")
        assert "staff" in _signed_in(oidc, second).groups
        assert any(isinstance(e, GroupChanged) and e.action == "add-member"
                   for e in oidc.audit.events)
    finally:
        second.close()


def test_second_idp_with_es256_and_its_own_issuer(oidc, browser):
    response = browser.sign_in("beta", "yamada")
    assert response.status_code == 303, response.text
    session = _signed_in(oidc, browser)
    assert session.idp == "beta"
    assert session.username == "yamada@city.example.jp"


def test_client_secret_post_authentication(oidc, browser):
    oidc.configure(alpha={"client_id": "sekisho-a2", "client_auth": "client_secret_post",
                          "client_secret": Secret("secret-a2")})
    response = browser.sign_in("alpha", "tanaka")
    assert response.status_code == 303, response.text
    assert _signed_in(oidc, browser) is not None


def test_wrong_client_secret_is_an_idp_error_page(oidc, browser):
    oidc.configure(alpha={"client_secret": Secret("not-the-secret")})
    response = browser.sign_in("alpha", "tanaka")
    _refused(oidc, browser, response, "token-error", 502)


def test_key_rotation_refetches_the_jwks(oidc, browser):
    assert browser.sign_in("beta", "tanaka").status_code == 303  # keys now cached
    old = httpx.get(oidc.beta.issuer + "/__test/kids").json()["kids"]
    new_kid = httpx.post(oidc.beta.issuer + "/__test/rotate").json()["kid"]
    assert new_kid not in old
    second = Browser(oidc)
    try:
        response = second.sign_in("beta", "yamada")
        assert response.status_code == 303, response.text
        assert _signed_in(oidc, second).username == "yamada@city.example.jp"
    finally:
        second.close()


def test_idp_down_shows_a_clear_page_and_signs_nobody_in(oidc, browser):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    oidc.configure(alpha={"issuer": dead})
    response = browser.get(f"{oidc.origin}/.sekisho/oidc/start?idp=alpha&rd=/app")
    _refused(oidc, browser, response, "idp-unavailable", 502)
    assert "ID プロバイダー（IdP）に接続できません" in response.text
    english = browser.get(f"{oidc.origin}/.sekisho/oidc/start?idp=alpha&lang=en")
    assert "The identity provider cannot be reached" in english.text


def test_idp_down_between_authorization_and_callback(oidc, browser):
    # The fake IdP answers the authorization at once; then it "goes down" before the callback.
    response = browser.get(f"{oidc.origin}/.sekisho/oidc/start?idp=fake&rd=/app")
    callback = response.headers["location"]
    answer = browser.get(callback)
    target = answer.headers["location"]
    oidc.configure(fake={"issuer": "http://127.0.0.1:9"})
    _refused(oidc, browser, browser.get(target), "idp-unavailable", 502)


def test_state_mismatch_login_csrf_is_refused(oidc, browser):
    # The attacker signs in at the IdP in their own browser and stops before the callback …
    attacker = Browser(oidc)
    try:
        start = attacker.get(f"{oidc.origin}/.sekisho/oidc/start?idp=fake&rd=/app")
        callback = attacker.get(start.headers["location"]).headers["location"]
    finally:
        attacker.close()
    # … then makes the victim's browser open the callback URL.
    _refused(oidc, browser, browser.get(callback), "state-mismatch", 400)


def test_unknown_and_replayed_state_are_refused(oidc, browser):
    response = browser.get(f"{oidc.origin}/.sekisho/oidc/callback?state=made-up&code=x")
    _refused(oidc, browser, response, "state-invalid", 400)
    oidc.audit.events.clear()
    ok = browser.sign_in("fake")
    assert ok.status_code == 303
    callback = next(str(r.url) for r in browser.history
                    if "/.sekisho/oidc/callback" in str(r.url))
    replay = Browser(oidc)
    try:
        replay.client.cookies.update(browser.client.cookies)
        replay.client.cookies.delete("__Host-sekisho")
        again = replay.get(callback)
        assert again.status_code == 400
        assert replay.client.cookies.get("__Host-sekisho") is None
        assert _reasons(oidc) == ["state-invalid"]
    finally:
        replay.close()


@pytest.mark.parametrize(("idp", "login", "reason", "changes"), [
    ("alpha", "unverified", "email-unverified", {}),
    ("alpha", "multiat", "email-invalid", {}),
    ("alpha", "outsider", "email-domain", {"email_domains": ("city.example.jp",)}),
    ("beta", "ueda", "user-unknown", {"jit": False}),
])
def test_claim_rules_refuse_the_account(oidc, browser, idp, login, reason, changes):
    oidc.configure(**{idp: changes})
    response = browser.sign_in(idp, login)
    _refused(oidc, browser, response, reason, 403)
    assert users.get_user_by_name(oidc.engine, f"{login}@city.example.jp") is None


def test_require_mfa_without_amr_demands_sekisho_second_factor(oidc, browser):
    oidc.configure(alpha={"require_mfa": True}, mfa=MfaSettings(office_networks=()))
    response = browser.sign_in("alpha", "suzuki")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/.sekisho/mfa")
    assert browser.client.cookies.get(FLOW_COOKIE)
    assert _signed_in(oidc, browser) is None
    assert oidc.audit.of(OidcSignIn)[0].next_step == "second-factor"


def _without_factors(stack: Stack, login: str) -> None:
    user = users.get_user_by_name(stack.engine, f"{login}@city.example.jp")
    if user is not None:
        factor_store.reset_user(stack.engine, user.id)


def _enrol_totp(stack: Stack, browser: Browser) -> bytes:
    """Finish first-use TOTP enrolment inside the pending flow; returns the TOTP key."""
    page = browser.get(stack.origin + "/.sekisho/mfa/totp/enrol")
    assert page.status_code == 200, page.text
    raw = re.search(r'<code class="secret">([^<]+)</code>', page.text).group(1).replace(" ", "")
    secret = base64.b32decode(raw + "=" * (-len(raw) % 8))
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    done = browser.client.post(stack.origin + "/.sekisho/mfa/totp/enrol",
                               data={**fields, "code": totp.totp(secret, time.time())})
    assert done.status_code == 200 and "<code>" in done.text, done.text
    return secret


def test_require_mfa_without_amr_in_the_office_enrols_sekishos_factor(oidc, browser):
    # In the office nothing else would ask for a second factor; the IdP's missing MFA does:
    # TOTP is enrolled inside the pending flow, never a one-factor session.
    _without_factors(oidc, "suzuki")
    oidc.configure(alpha={"require_mfa": True},
                   mfa=MfaSettings(office_networks=(ip_network("127.0.0.0/8"),)))
    response = browser.sign_in("alpha", "suzuki")
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/.sekisho/mfa/totp/enrol"
    assert browser.client.cookies.get(FLOW_COOKIE) and _signed_in(oidc, browser) is None
    assert oidc.audit.of(OidcSignIn)[0].next_step == "second-factor"
    assert not _reasons(oidc)
    _enrol_totp(oidc, browser)
    session = _signed_in(oidc, browser)
    assert session is not None and {"oidc", "totp"} <= set(session.auth_methods)
    assert session.idp == "alpha" and session.mfa_time is not None


def test_require_mfa_with_amr_mfa_is_satisfied_by_the_idp(oidc, browser):
    oidc.configure(alpha={"require_mfa": True}, mfa=MfaSettings(office_networks=()))
    response = browser.sign_in("alpha", "tanaka")
    assert response.status_code == 303
    session = _signed_in(oidc, browser)
    assert "idp_mfa" in session.auth_methods and session.mfa_time is not None


def _form(page: httpx.Response) -> tuple[str, dict[str, str]]:
    action = re.search(r'<form[^>]*action="([^"]+)"', page.text).group(1)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    return urljoin(str(page.url), action), fields


def test_backchannel_logout_from_the_real_op_ends_the_session(oidc, browser):
    assert browser.sign_in("alpha", "tanaka").status_code == 303
    session = _signed_in(oidc, browser)
    assert session is not None
    # The user signs out at the IdP; the IdP tells Sekisho over the back channel.
    page = browser.get(oidc.alpha.issuer + "/session/end?client_id=sekisho-a")
    action, fields = _form(page)
    confirm = browser.client.post(action, data={**fields, "logout": "yes"})
    assert confirm.status_code in (200, 302, 303)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not oidc.audit.of(BackchannelLogout):
        time.sleep(0.05)
    logout = oidc.audit.of(BackchannelLogout)
    assert logout and logout[0].sessions >= 1 and logout[0].user == session.username
    assert oidc.sessions.lookup_sync(oidc.session_token(browser)) is None


def _wait_for_logout(stack: Stack) -> BackchannelLogout:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not stack.audit.of(BackchannelLogout):
        time.sleep(0.05)
    return stack.audit.of(BackchannelLogout)[0]


def _logout_at_op(stack: Stack, browser: Browser) -> None:
    page = browser.get(stack.alpha.issuer + "/session/end?client_id=sekisho-a")
    action, fields = _form(page)
    browser.client.post(action, data={**fields, "logout": "yes"})


def test_backchannel_logout_ends_exactly_the_session_its_flow_became(oidc, browser):
    # Two sign-ins of the same user through the same IdP, minutes apart, both through a
    # second factor: the IdP logs out the first one only. A match by user + IdP + time
    # window would end both; the exact flow → session link ends only the first.
    _without_factors(oidc, "suzuki")
    oidc.configure(mfa=MfaSettings(office_networks=()))
    assert browser.sign_in("alpha", "suzuki").headers["location"] == "/.sekisho/mfa/totp/enrol"
    secret = _enrol_totp(oidc, browser)
    first = _signed_in(oidc, browser)
    assert first is not None
    link = oidc_store.link_for_session(oidc.engine, first.session_id)
    assert link is not None and link.flow_id  # the flow's link now names its session
    second = Browser(oidc)
    try:
        assert second.sign_in("alpha", "suzuki").headers["location"] == "/.sekisho/mfa"
        page = second.get(oidc.origin + "/.sekisho/mfa")
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"',
                                 page.text))
        done = second.client.post(oidc.origin + "/.sekisho/mfa/totp",
                                  data={**fields, "code": totp.totp(secret, time.time() + 30)})
        assert done.status_code == 303, done.text
        other = _signed_in(oidc, second)
        assert other is not None and other.session_id != first.session_id
        _logout_at_op(oidc, browser)
        assert _wait_for_logout(oidc).sessions == 1
        assert _signed_in(oidc, browser) is None
        assert _signed_in(oidc, second) is not None  # the other session lives on
    finally:
        second.close()


def test_start_is_rate_limited_per_address_before_anything_is_written(oidc, browser):
    limiter = oidc.limiter
    limiter.clear()
    limiter.rate, limiter.burst = 0.0, 3.0
    try:
        url = oidc.origin + "/.sekisho/oidc/start?idp=alpha&rd=/app"
        assert [browser.get(url).status_code for _ in range(3)] == [303, 303, 303]
        before = oidc_store.count_transactions(oidc.engine)
        refused = browser.get(url)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert "サインイン要求が多すぎます" in refused.text  # a page for people (ja first)
        assert "location" not in refused.headers
        assert oidc_store.count_transactions(oidc.engine) == before  # nothing written
    finally:
        limiter.rate, limiter.burst = type(limiter).rate, type(limiter).burst
        limiter.clear()


def test_backchannel_logout_ends_a_sign_in_waiting_for_its_second_factor(oidc, browser):
    _without_factors(oidc, "suzuki")
    oidc.configure(mfa=MfaSettings(office_networks=()))
    response = browser.sign_in("alpha", "suzuki")
    assert response.headers["location"].startswith("/.sekisho/mfa")
    page = browser.get(oidc.alpha.issuer + "/session/end?client_id=sekisho-a")
    action, fields = _form(page)
    browser.client.post(action, data={**fields, "logout": "yes"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not oidc.audit.of(BackchannelLogout):
        time.sleep(0.05)
    assert oidc.audit.of(BackchannelLogout)[0].sessions == 1
    # The pending flow is ended: finishing the second factor now can issue no session.
    flow_id = hashlib.sha256(browser.client.cookies.get(FLOW_COOKIE).encode()).hexdigest()
    assert login_flows.load_flow(oidc.engine, flow_id).consumed_at is not None


def test_rp_initiated_logout_redirects_to_the_idp(oidc, browser):
    assert browser.sign_in("alpha", "tanaka").status_code == 303
    session = _signed_in(oidc, browser)
    page = browser.get(oidc.origin + "/.sekisho/oidc/signout")
    assert 'action="/.sekisho/oidc/signout"' in page.text
    action, fields = _form(page)
    response = browser.client.post(action, data=fields)
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith(oidc.alpha.issuer + "/session/end?")
    params = parse_qs(urlsplit(location).query)
    assert params["post_logout_redirect_uri"] == [oidc.origin + "/.sekisho/oidc/signed-out"]
    assert params["id_token_hint"][0].count(".") == 2
    assert oidc.sessions.lookup_sync((session and oidc.session_token(browser)) or "") is None
    assert oidc.audit.of(SignedOut)
    # The IdP accepts the hint and, after its confirmation, comes back to Sekisho.
    op_page = browser.get(location)
    op_action, op_fields = _form(op_page)
    back = browser.client.post(op_action, data={**op_fields, "logout": "yes"})
    assert back.headers["location"].startswith(oidc.origin + "/.sekisho/oidc/signed-out")
    assert browser.get(back.headers["location"]).status_code == 200


def test_signout_without_csrf_is_refused(oidc, browser):
    assert browser.sign_in("alpha", "tanaka").status_code == 303
    response = browser.client.post(oidc.origin + "/.sekisho/oidc/signout", data={})
    assert response.status_code == 403
    assert _signed_in(oidc, browser) is not None
