"""The staff portal in headless Chromium (Debian's /usr/bin/chromium) against a real gateway.

Tanaka opens the city's one address for staff (the portal host, which has no route of its
own), signs in there, sees only the apps the PDP lets her open — or could after a step —
grouped by segment, opens one, and reads why another asks for more. Every request the
browser makes is recorded: none may leave the gateway on 127.0.0.1 (a closed network has no
CDN). Screenshots go to docs/images/ (linked from the README and docs/portal.md).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from browser_support import Gateway, shot
from playwright.sync_api import BrowserContext, Page, Request

from sekisho.devices.ca import init_ca

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from harness import PASSWORD, EchoUpstream, GatewayProcess

PORTAL = "portal.localhost"
EXTRA = """
networks:
  mynumber_terminals: ["127.0.0.1/32"]
devices:
  profiles:
    managed: {disk_encryption: true, screen_lock: true, edr: true, os_updated_within: 30d}
portal:
  host: portal.localhost
  contact: "情報政策課 内線 1234"
"""
POLICIES = """\
  fresh-mfa:
    allow:
      and:
        - group: [staff]
        - mfa: true
        - auth_age: 15m
"""
ROUTES = """\
  - id: kokuho
    title: 国民健康保険
    from: https://wiki.localhost/kokuho
    to: http://127.0.0.1:{port}
    segment: internet
    policy: fresh-mfa
  - id: docs
    title: 文書管理
    from: https://docs.localhost/
    to: http://127.0.0.1:{port}
    segment: lgwan
    policy: staff
  - id: juki
    title: 住民記録
    from: https://juki.localhost/
    to: http://127.0.0.1:{port}
    segment: mynumber
    policy: staff
"""


@pytest.fixture(scope="module")
def portal_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """127.0.0.1 is the office here (password sign-in), and a designated My Number terminal;
    client certificates are asked for (optional), so device-bound apps can be shown."""
    tmp = tmp_path_factory.mktemp("portal-browser")
    upstream = EchoUpstream()
    process = GatewayProcess(tmp, f"sqlite:///{tmp / 'sekisho.db'}", upstream)
    init_ca(tmp / "data" / "ca", organisation="関所市")
    text = process.config.read_text(encoding="utf-8")
    text = text.replace("tls:\n  self_signed: true\n",
                        "tls:\n  self_signed: true\n  client_certificates: optional\n")
    text = text.replace("\nroutes:\n", "\n" + POLICIES + "routes:\n")
    process.config.write_text(text + ROUTES.format(port=upstream.port) + EXTRA,
                              encoding="utf-8")
    process.provision()
    process.start()
    try:
        yield Gateway(process.port)
    finally:
        process.stop()
        upstream.close()


@pytest.fixture
def requests_seen(context: BrowserContext) -> list[Request]:
    seen: list[Request] = []

    def record(request: Request) -> None:
        seen.append(request)

    context.on("request", record)
    return seen


def _sign_in(page: Page, user: str = "tanaka") -> None:
    page.wait_for_selector("#username")
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("form[action='/.sekisho/signin'] button[type=submit]")


def _tiles(page: Page) -> dict[str, str]:
    return {item.get_attribute("data-route") or "": (item.get_attribute("class") or "")
            .removeprefix("app app-") for item in page.query_selector_all("li.app")}


def test_staff_day_at_the_portal(portal_gateway: Gateway, page: Page,
                                 requests_seen: list[Request]) -> None:
    gateway = portal_gateway
    page.goto(gateway.url("/", PORTAL))  # the one address staff are given
    page.wait_for_url("**/.sekisho/signin?rd=*")
    _sign_in(page)
    page.wait_for_url(gateway.url("/.sekisho/portal/", PORTAL))
    assert page.get_attribute("html", "lang") == "ja"
    assert page.inner_text("h1") == "アプリ一覧"
    # Only what she may open, or could after a step; grouped by segment, named in text.
    assert _tiles(page) == {"wiki": "open", "kokuho": "step-up", "docs": "open",
                            "juki": "device"}
    headings = page.locator("section.segment h2").all_inner_texts()
    assert headings == ["インターネット接続系", "LGWAN接続系", "マイナンバー利用事務系"]
    assert "財務会計" not in page.inner_text("main")  # admins only: not listed at all
    shot(page, "portal", doc="portal")

    # Keyboard: the skip link comes first and leads to the main content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('href')") == "#main"

    # "Why can't I open this?" for the app that needs a fresh second factor.
    with page.expect_navigation():
        page.click("li[data-route=kokuho] a.why")
    assert page.inner_text("h1") == "このアプリを開けない理由"
    assert "国民健康保険" in page.inner_text("h2.app-name")
    assert "このアプリには 2 段階目の認証 (TOTP やパスキー) が必要です" in page.inner_text(
        "#reasons")
    stepup = page.get_attribute("#stepup", "href") or ""
    assert stepup.startswith(gateway.url("/.sekisho/stepup?rd=", "wiki.localhost"))
    shot(page, "portal-why", doc="portal-why")

    # The device-bound My Number app: what to do, in plain Japanese.
    page.goto(gateway.url("/.sekisho/portal/why?route=juki", PORTAL))
    assert "sekisho device enroll" in page.inner_text("#enrol")
    assert "登録済みの許可された端末ではありません" in page.inner_text("#reasons")

    # English on request, the same app still explained.
    with page.expect_navigation():
        page.click("nav.lang a")
    assert page.get_attribute("html", "lang") == "en"
    assert page.inner_text("h1") == "Why can't I open this?"
    shot(page, "portal-why-en")

    # Open an app from the launcher: its own host asks her to sign in there, then she is in.
    page.goto(gateway.url("/.sekisho/portal/?lang=ja", PORTAL))
    with page.expect_navigation():
        page.click("li[data-route=wiki] a.app-title")
    _sign_in(page)
    page.wait_for_url(gateway.url("/", "wiki.localhost"))
    assert '"path": "/"' in page.content() or '"path":"/"' in page.content()

    # Nothing left 127.0.0.1: every request went to the gateway's port on a *.localhost name
    # (mapped to 127.0.0.1 by the browser's resolver rules).
    assert requests_seen
    for request in requests_seen:
        parts = urlsplit(request.url)
        assert parts.scheme == "https" and parts.port == gateway.port, request.url
        assert parts.hostname is not None and parts.hostname.endswith(".localhost"), request.url
    stylesheets = [r.url for r in requests_seen if r.resource_type == "stylesheet"]
    assert any("/.sekisho/static/portal.css" in url for url in stylesheets)
    assert not [r.url for r in requests_seen if r.resource_type in ("script", "font")]
