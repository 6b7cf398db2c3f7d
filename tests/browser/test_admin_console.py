"""The admin console in a real browser against a real `sekisho serve` (harness config).

Sato (group admins → superadmin) signs in with her password, registers a passkey and steps
up with it (the admin policy wants a passkey within 15 minutes), then works through the
console: the dashboard draws its charts, a user and an enrolment code are created, Tanaka's
session is ended and her next request is refused, a policy edit with an error shows the
message with its line, a valid edit is applied (Tanaka's next request is decided by it) and
the audit search finds the `config.edited` record. Throughout, every request the browser
makes is answered from 127.0.0.1 (the console loads nothing from elsewhere) and the console
logs no Content-Security-Policy violation. Screenshots: tests/artifacts/browser/admin-*.png,
the dashboard also to docs/images/admin-dashboard.png.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from browser_support import Gateway, shot
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Request

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from harness import EchoUpstream, GatewayProcess

PASSWORD = "Kaigan-Shiokaze-77"  # tests/integration/harness.py
ADMIN = "/.sekisho/admin"


class Watch:
    """Every request a browser context makes, where it was answered from, and the console."""

    def __init__(self, context: BrowserContext, port: int) -> None:
        self.port = port
        self.requests: list[str] = []
        self.peers: list[tuple[str, str]] = []  # (url, server address)
        self.console: list[str] = []
        context.on("request", self._request)
        context.on("requestfinished", self._finished)
        context.on("console", self._console)
        context.on("page", lambda page: page.on("console", self._console))

    def _request(self, request: Request) -> None:
        self.requests.append(request.url)

    def _finished(self, request: Request) -> None:
        response = request.response()
        address = response.server_addr() if response is not None else None
        if address is not None:
            self.peers.append((request.url, address["ipAddress"]))

    def _console(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}")

    def assert_local(self) -> None:
        assert self.requests
        for url in self.requests:
            parts = urlsplit(url)
            if parts.scheme == "data":
                continue
            # *.localhost is mapped to 127.0.0.1 by Chromium's resolver flag (conftest.ARGS).
            assert parts.hostname == "127.0.0.1" or (parts.hostname or "").endswith(
                ".localhost"), url
            assert parts.port == self.port, url
        assert self.peers and {ip for _, ip in self.peers} == {"127.0.0.1"}, self.peers

    def assert_no_csp_violation(self) -> None:
        violations = [line for line in self.console
                      if "Content Security Policy" in line or "Refused to" in line]
        assert violations == []


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("admin-console")
    upstream = EchoUpstream()
    process = GatewayProcess(tmp, f"sqlite:///{tmp / 'sekisho.db'}", upstream)
    process.provision()
    process.start()
    try:
        yield Gateway(process.port)
    finally:
        process.stop()
        upstream.close()


def _context(chromium: Browser) -> BrowserContext:
    context = chromium.new_context(ignore_https_errors=True, locale="ja-JP",
                                   extra_http_headers={"Accept-Language": "ja"},
                                   viewport={"width": 1100, "height": 900})
    context.set_default_timeout(15_000)
    return context


def _sign_in(page: Page, gateway: Gateway, user: str, path: str = "/") -> None:
    page.goto(gateway.url(path))
    page.wait_for_selector("#username")
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("form[action='/.sekisho/signin'] button[type=submit]")


@pytest.fixture(scope="module")
def admin(chromium: Browser, gateway: Gateway) -> Iterator[tuple[Page, Watch]]:
    """Sato in the console: password, a passkey registered, then the passkey step-up."""
    context = _context(chromium)
    watch = Watch(context, gateway.port)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the console's "are you sure?"
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True}})
    _sign_in(page, gateway, "sato", ADMIN + "/")
    # A password is not a passkey: the admin policy sends her to step up, which needs one.
    page.wait_for_url(re.compile(r"/\.sekisho/stepup\?"))
    page.goto(gateway.url("/.sekisho/passkeys"))
    page.fill("#passkey-name", "情報政策課 PC")
    with page.expect_navigation():
        page.click("#passkey-start")
    page.wait_for_selector("table.passkeys")
    page.goto(gateway.url(ADMIN + "/"))
    page.wait_for_url(re.compile(r"/\.sekisho/stepup\?"))
    with page.expect_navigation():
        page.click("form[action='/.sekisho/stepup'] button")
    with page.expect_navigation():
        page.click("a[href='/.sekisho/passkeys/verify']")
    page.wait_for_selector("#passkey-start")
    with page.expect_navigation():
        page.click("#passkey-start")
    page.wait_for_url(gateway.url(ADMIN + "/"))
    try:
        yield page, watch
    finally:
        watch.assert_local()
        watch.assert_no_csp_violation()
        context.close()


@pytest.fixture(scope="module")
def staff(chromium: Browser, gateway: Gateway) -> Iterator[Page]:
    """Tanaka, signed in to the wiki in her own browser."""
    context = _context(chromium)
    watch = Watch(context, gateway.port)
    page = context.new_page()
    _sign_in(page, gateway, "tanaka", "/")
    page.wait_for_url(gateway.url("/") + "*")
    assert '"path": "/"' in page.content() or '"path":"/"' in page.content()
    try:
        yield page
    finally:
        watch.assert_local()
        context.close()


def _go(page: Page, gateway: Gateway, path: str) -> None:
    page.goto(gateway.url(ADMIN + path))
    page.wait_for_selector("main h1")


def test_dashboard_draws_its_charts(admin: tuple[Page, Watch], gateway: Gateway,
                                    staff: Page) -> None:
    page, _ = admin
    _go(page, gateway, "/")
    assert page.inner_text("h1") == "ダッシュボード"
    assert page.get_attribute("html", "lang") == "ja"
    # uPlot (vendored from npm, served by Sekisho) drew both charts into canvases.
    page.wait_for_selector("[data-chart='hourly'][data-drawn='true'] canvas")
    page.wait_for_selector("[data-chart='daily'][data-drawn='true'] canvas")
    assert int(page.inner_text("#active-sessions")) >= 2  # sato and tanaka
    menu = page.inner_text("nav.menu")
    for label in ("利用者", "端末", "セッション", "設定", "監査ログ", "API トークン"):
        assert label in menu
    shot(page, "admin-dashboard", doc="admin-dashboard")
    # Keyboard: the first Tab reaches the skip link, which moves focus to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # The English switch keeps the page and translates it.
    page.click("header nav.lang a")
    page.wait_for_selector("html[lang='en']")
    assert page.inner_text("h1") == "Dashboard"
    page.click("header nav.lang a")
    page.wait_for_selector("html[lang='ja']")


def test_create_a_user_and_an_enrolment_code(admin: tuple[Page, Watch],
                                             gateway: Gateway) -> None:
    page, _ = admin
    _go(page, gateway, "/users")
    page.fill("#new-username", "yamada")
    page.fill("#new-display", "山田 太郎")
    with page.expect_navigation():
        page.click("#create-user")
    password = page.inner_text("#secret")
    assert len(password) >= 12
    shot(page, "admin-user-created")
    _go(page, gateway, "/users?q=yama")
    assert "山田 太郎" in page.inner_text("#users")
    _go(page, gateway, "/devices")
    page.fill("#code-user", "yamada")
    with page.expect_navigation():
        page.click("#create-code")
    code = page.inner_text("#secret")
    assert re.fullmatch(r"[0-9A-Za-z-]{6,}", code), code
    shot(page, "admin-enrolment-code")


def test_ending_a_staff_session_refuses_her_next_request(
        admin: tuple[Page, Watch], gateway: Gateway, staff: Page) -> None:
    page, _ = admin
    _go(page, gateway, "/sessions?user=tanaka")
    rows = page.locator("tr[data-session]")
    assert rows.count() >= 1
    shot(page, "admin-sessions")
    while page.locator("tr[data-session] button.revoke").count():
        with page.expect_navigation():
            page.locator("tr[data-session] button.revoke").first.click()
        assert "セッションを終了しました。" in page.inner_text("main"), page.inner_text("main")
    staff.goto(gateway.url("/reports"))
    staff.wait_for_selector("#username")  # signed out: the gateway asks her to sign in


def test_a_policy_edit_with_an_error_then_a_valid_one(
        admin: tuple[Page, Watch], gateway: Gateway, staff: Page) -> None:
    page, _ = admin
    _go(page, gateway, "/config")
    original = page.input_value("#yaml")
    broken = original.replace("    segment: lgwan\n", "    segment: lgwan2\n")
    assert broken != original
    page.fill("#yaml", broken)
    with page.expect_navigation():
        page.click("#config-check")
    errors = page.inner_text("#config-errors")
    line = original.splitlines().index("    segment: lgwan") + 1
    assert f"{line} 行目" in errors and "segment" in errors, errors
    assert "lgwan2" in page.inner_text("#config-diff")
    shot(page, "admin-config-error")

    # The wiki is for admins only from now on: Tanaka's next request is decided by it.
    changed = original.replace("    segment: internet\n    policy: staff\n",
                               "    segment: internet\n    policy: admins\n", 1)
    assert changed != original
    page.fill("#yaml", changed)
    page.fill("#comment", "Wiki を管理者専用にする")
    with page.expect_navigation():
        page.click("#config-check")
    page.wait_for_selector("#check-ok")
    with page.expect_navigation():
        page.click("#config-apply")
    assert "設定を適用し、監査ログに記録しました。" in page.inner_text("p.flash")
    shot(page, "admin-config-applied")
    _sign_in(staff, gateway, "tanaka", "/manual")
    assert "group-unauthorized" in staff.content()

    _go(page, gateway, "/audit?type=config.edited")
    rows = page.locator("#audit-events tr[data-type='config.edited']")
    assert rows.count() == 1
    assert "sato" in rows.first.inner_text()
    shot(page, "admin-audit")
    with page.expect_navigation():
        page.click("#verify-chain")
    assert "監査ログの連鎖は正常です" in page.inner_text("#verification")


def test_every_request_stayed_on_loopback(admin: tuple[Page, Watch]) -> None:
    _, watch = admin
    watch.assert_local()
    watch.assert_no_csp_violation()
    assert any("/.sekisho/static/vendor/uPlot.iife.min.js" in url for url in watch.requests)
