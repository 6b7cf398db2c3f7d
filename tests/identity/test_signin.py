"""Sign-in and sign-out handlers end to end, called with real Request values."""

from __future__ import annotations

import asyncio
import re
from http.cookies import SimpleCookie
from ipaddress import ip_network

import pytest

from sekisho.audit.log import AuditUnavailable
from sekisho.config.model import Config, MfaSettings, Route, SessionSettings, ThrottleSettings
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.storage import sessions as session_store
from sekisho.storage import users
from sekisho.web import Request

HOST = "app.city.lg.jp"
PASSWORD = "a-long-enough-passphrase"
CONFIG = Config(
    source="test",
    routes=(Route(id="mail", host=HOST, path_prefix="/", to="http://127.0.0.1:9"),),
    session=SessionSettings(idle_timeout=1800, absolute_lifetime=3600, cache_ttl=1.0),
    throttle=ThrottleSettings(account_max_failures=3, ip_max_failures=50, lockout=600,
                              base_delay=0.0, max_delay=0.0),
    # These tests are about the password step: the browsers sit in the office network, so
    # no second factor is demanded (tests/identity/test_mfa_*.py cover that part).
    mfa=MfaSettings(office_networks=(ip_network("192.0.2.0/24"),)),
)


class Browser:
    """Holds cookies like a browser, and fills `request.session` like the gateway does."""

    def __init__(self, app, ip="192.0.2.10", accept_language=""):
        self.app, self.ip, self.cookies = app, ip, {}
        self.accept_language = accept_language

    def request(self, method, path, query="", form=None):
        headers = [("host", HOST), ("user-agent", "pytest")]
        if self.cookies:
            headers.append(("cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items())))
        if self.accept_language:
            headers.append(("accept-language", self.accept_language))
        body = b""
        if form is not None:
            from urllib.parse import urlencode
            body = urlencode(form).encode()
            headers.append(("content-type", "application/x-www-form-urlencoded"))
        token = self.cookies.get("__Host-sekisho")
        session = self.app.manager.lookup_sync(token) if token else None
        request = Request(method=method, target=path + (f"?{query}" if query else ""),
                          path=path, query=query, headers=headers, client_ip=self.ip,
                          scheme="https", host=HOST, body=body, session=session)
        response = asyncio.run(self.app.handlers[path](request))
        for name, value in response.headers:
            if name.lower() == "set-cookie":
                jar = SimpleCookie()
                jar.load(value)
                for morsel in jar.values():
                    if morsel["max-age"] == "0":
                        self.cookies.pop(morsel.key, None)
                    else:
                        self.cookies[morsel.key] = morsel.value
        return response

    def csrf_from(self, response):
        return re.search(r'name="csrf" value="([^"]+)"', response.body.decode()).group(1)

    def sign_in(self, username, password, rd=""):
        page = self.request("GET", "/.sekisho/signin")
        return self.request("POST", "/.sekisho/signin", form={
            "csrf": self.csrf_from(page), "username": username, "password": password, "rd": rd})


class App:
    def __init__(self, engine, audit, clock, hasher):
        self.engine, self.audit = engine, audit
        self.manager = SessionManager(engine, CONFIG.session, clock=clock)
        self.handlers = build_signin_handlers(
            current_config=lambda: CONFIG, engine=engine, sessions=self.manager, audit=audit,
            clock=clock, hasher=hasher)


@pytest.fixture
def app(engine, audit, clock, fast_hasher):
    users.create_user(engine, "suzuki", display_name="鈴木",
                      password_hash=fast_hasher.hash(PASSWORD))
    users.create_user(engine, "disabled", password_hash=fast_hasher.hash(PASSWORD))
    users.set_disabled(engine, "disabled", True)
    return App(engine, audit, clock, fast_hasher)


def header(response, name):
    return [v for k, v in response.headers if k.lower() == name.lower()]


def test_signin_page_japanese_by_default_with_csrf_and_headers(app):
    browser = Browser(app)
    page = browser.request("GET", "/.sekisho/signin", query="rd=/inbox")
    text = page.body.decode()
    assert page.status == 200 and 'lang="ja"' in text and "ユーザー名" in text
    assert 'name="rd" value="/inbox"' in text and browser.csrf_from(page)
    assert "__Host-sekisho-csrf" in browser.cookies
    csp = header(page, "Content-Security-Policy")[0]
    assert "script-src" not in csp and "default-src 'none'" in csp
    assert "<script" not in text


def test_english_switch_and_accept_language(app):
    browser = Browser(app)
    page = browser.request("GET", "/.sekisho/signin", query="lang=en")
    assert 'lang="en"' in page.body.decode() and "User name" in page.body.decode()
    assert browser.cookies["sekisho_lang"] == "en"
    again = browser.request("GET", "/.sekisho/signin")  # the cookie remembers
    assert 'lang="en"' in again.body.decode()
    other = Browser(app, accept_language="en-US,en;q=0.9,ja;q=0.5")
    assert 'lang="en"' in other.request("GET", "/.sekisho/signin").body.decode()


def test_success_sets_fresh_cookie_and_redirects(app):
    browser = Browser(app)
    response = browser.sign_in("SUZUKI", PASSWORD, rd=f"https://{HOST}/inbox?x=1")
    assert response.status == 303
    assert header(response, "Location") == [f"https://{HOST}/inbox?x=1"]
    cookie = header(response, "Set-Cookie")[0]
    assert re.fullmatch(r"__Host-sekisho=[A-Za-z0-9_-]{43}; Path=/; Max-Age=3600; Secure; "
                        r"HttpOnly; SameSite=Lax", cookie)
    info = app.manager.lookup_sync(browser.cookies["__Host-sekisho"])
    assert info.username == "suzuki" and info.source_ip == "192.0.2.10"
    assert app.audit.types() == ["signin.success"]


@pytest.mark.parametrize("rd", ["//evil.example/", "https://evil.example/", "/\\evil.example"])
def test_open_redirect_after_signin_goes_home(app, rd):
    response = Browser(app).sign_in("suzuki", PASSWORD, rd=rd)
    assert response.status == 303 and header(response, "Location") == ["/"]


def test_fixation_planted_cookie_is_not_reused(app):
    browser = Browser(app)
    planted = "P" * 43  # the attacker set this cookie on the victim's browser
    browser.cookies["__Host-sekisho"] = planted
    browser.sign_in("suzuki", PASSWORD)
    assert browser.cookies["__Host-sekisho"] != planted
    assert app.manager.lookup_sync(planted) is None


def test_signin_again_rotates_and_revokes_old_session(app):
    browser = Browser(app)
    browser.sign_in("suzuki", PASSWORD)
    old = browser.cookies["__Host-sekisho"]
    browser.sign_in("suzuki", PASSWORD)
    new = browser.cookies["__Host-sekisho"]
    assert new != old
    assert app.manager.lookup_sync(old) is None and app.manager.lookup_sync(new) is not None


def _mask(body):
    return re.sub(rb'name="csrf" value="[^"]+"', b"CSRF", body)


def test_unknown_wrong_disabled_are_indistinguishable(app):
    # Same typed name in each case so the echoed field matches; three separate addresses.
    wrong = Browser(app, ip="192.0.2.1").sign_in("suzuki", "wrong password!!")
    unknown = Browser(app, ip="192.0.2.2").sign_in("suzuki2", "wrong password!!")
    disabled = Browser(app, ip="192.0.2.3").sign_in("disabled", PASSWORD)
    assert wrong.status == unknown.status == disabled.status == 401
    assert _mask(wrong.body).replace(b"suzuki", b"NAME") \
        == _mask(unknown.body).replace(b"suzuki2", b"NAME") \
        == _mask(disabled.body).replace(b"disabled", b"NAME")
    assert [e.reason for e in app.audit.events] == [
        "invalid-credentials", "invalid-credentials", "account-disabled"]
    for response in (wrong, unknown, disabled):
        assert not any(v.startswith("__Host-sekisho=") for v in header(response, "Set-Cookie"))


def test_lockout_after_n_failures_blocks_even_the_right_password(app):
    browser = Browser(app)
    for _ in range(3):
        assert browser.sign_in("suzuki", "not the password").status == 401
    assert "signin.lockout" in app.audit.types()
    locked = browser.sign_in("suzuki", PASSWORD)
    assert locked.status == 401 and "__Host-sekisho" not in browser.cookies
    assert app.audit.events[-1].reason == "throttled"
    # The same generic page as a wrong password: nothing tells the attacker about the lock.
    assert _mask(locked.body) == _mask(Browser(app, ip="192.0.2.99").sign_in(
        "suzuki", "not the password").body)


@pytest.mark.parametrize("case", ["missing", "wrong", "other-browser", "no-cookie"])
def test_signin_csrf_rejected(app, case):
    browser = Browser(app)
    page = browser.request("GET", "/.sekisho/signin")
    token = browser.csrf_from(page)
    if case == "other-browser":
        token = Browser(app).csrf_from(Browser(app).request("GET", "/.sekisho/signin"))
    form = {"username": "suzuki", "password": PASSWORD}
    if case != "missing":
        form["csrf"] = token if case != "wrong" else token[:-3] + "xyz"
    if case == "no-cookie":
        browser.cookies.clear()
    response = browser.request("POST", "/.sekisho/signin", form=form)
    assert response.status == 403 and "__Host-sekisho" not in browser.cookies
    assert app.audit.events[-1].reason == "csrf-invalid"


def test_signout_clears_server_and_cookie(app, engine):
    browser = Browser(app)
    browser.sign_in("suzuki", PASSWORD)
    token = browser.cookies["__Host-sekisho"]
    confirm = browser.request("GET", "/.sekisho/signout")
    assert "suzuki" in confirm.body.decode()
    response = browser.request("POST", "/.sekisho/signout",
                               form={"csrf": browser.csrf_from(confirm)})
    assert response.status == 200 and "サインアウトしました" in response.body.decode()
    assert any("Max-Age=0" in v for v in header(response, "Set-Cookie"))
    assert "__Host-sekisho" not in browser.cookies
    assert app.manager.lookup_sync(token) is None
    assert session_store.list_active(engine, app.manager._clock(), 1800) == []
    assert app.audit.types()[-1] == "signout"


def test_signout_csrf_from_another_session_rejected(app):
    victim, attacker = Browser(app), Browser(app)
    victim.sign_in("suzuki", PASSWORD)
    attacker.sign_in("suzuki", PASSWORD)
    forged = attacker.csrf_from(attacker.request("GET", "/.sekisho/signout"))
    response = victim.request("POST", "/.sekisho/signout", form={"csrf": forged})
    assert response.status == 403
    assert app.manager.lookup_sync(victim.cookies["__Host-sekisho"]) is not None
    missing = victim.request("POST", "/.sekisho/signout", form={})
    assert missing.status == 403


class FailingAudit:
    def record(self, event):
        raise AuditUnavailable("down")

    async def append(self, event):
        raise AuditUnavailable("down")


def test_no_session_without_durable_audit(engine, clock, fast_hasher):
    users.create_user(engine, "ito", password_hash=fast_hasher.hash(PASSWORD))
    app = App(engine, FailingAudit(), clock, fast_hasher)
    browser = Browser(app)
    response = browser.sign_in("ito", PASSWORD)
    assert response.status == 503 and "__Host-sekisho" not in browser.cookies
    assert session_store.list_active(engine, clock(), 1800) == []


def test_stylesheet_and_methods(app):
    browser = Browser(app)
    css = browser.request("GET", "/.sekisho/static/sekisho.css")
    assert css.status == 200 and b"font-family" in css.body
    assert header(css, "Cache-Control") == ["public, max-age=31536000, immutable"]
    assert browser.request("PUT", "/.sekisho/signin").status == 405
    big = browser.request("POST", "/.sekisho/signin", form={"x": "y" * 70_000})
    assert big.status == 413
