"""The staff portal through a real `sekisho serve` on 127.0.0.1 (tests/integration/harness.py).

The portal host has no route of its own: `/` there opens the portal and the sign-in works.
Tanaka (staff) signs in there and sees only what the PDP lets her open, or could after a
step; the "why" page explains a step-up app and refuses every other id with one 404 page.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from harness import Browser, EchoUpstream, GatewayProcess

PORTAL = "portal.localhost"
XSS_TITLE = '<script>alert("x")</script>国保'
EXTRA_POLICIES = """\
  fresh-mfa:
    allow:
      and:
        - group: [staff]
        - mfa: true
        - auth_age: 15m
  mfa-first-admins:
    allow:
      and:
        - mfa: true
        - group: [admins]
"""
EXTRA_ROUTES = """\
  - id: docs
    title: 文書管理
    from: https://docs.localhost/
    to: http://127.0.0.1:{port}
    segment: lgwan
    policy: staff
  - id: kokuho
    title: {xss}
    from: https://wiki.localhost/kokuho
    to: http://127.0.0.1:{port}
    segment: internet
    policy: fresh-mfa
  - id: juki
    title: 住民記録
    from: https://juki.localhost/
    to: http://127.0.0.1:{port}
    segment: mynumber
    policy: staff
  - id: admin-tools
    title: 管理ツール
    from: https://wiki.localhost/admin
    to: http://127.0.0.1:{port}
    segment: internet
    policy: mfa-first-admins
portal:
  host: {portal}
  contact: "情報政策課 内線 1234"
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("portal")
    upstream = EchoUpstream()
    process = GatewayProcess(tmp, f"sqlite:///{tmp / 'sekisho.db'}", upstream)
    text = process.config.read_text(encoding="utf-8")
    text = text.replace("\nroutes:\n", "\n" + EXTRA_POLICIES + "routes:\n")
    text += EXTRA_ROUTES.format(port=upstream.port, portal=PORTAL,
                                xss='"' + XSS_TITLE.replace('"', '\\"') + '"')
    process.config.write_text(text, encoding="utf-8")
    process.provision()
    process.start()
    try:
        yield process
    finally:
        process.stop()
        upstream.close()


def _host(gateway: GatewayProcess, name: str = PORTAL) -> str:
    """The Host header a browser sends: the name and the gateway's port."""
    return f"{name}:{gateway.port}"


def _signed_in(gateway: GatewayProcess, user: str = "tanaka") -> Browser:
    browser = gateway.browser()
    response = browser.signin(_host(gateway), user, rd="/.sekisho/portal/")
    assert response.status == 303, response.body[:400]
    assert response.header("Location") == "/.sekisho/portal/"
    return browser


def _listed(body: str) -> dict[str, str]:
    """route id -> access, for every app the launcher lists."""
    found = re.findall(r'<li class="app app-([a-z-]+)" data-route="([^"]+)"', body)
    return {route: access for access, route in found}


def test_the_portal_host_opens_the_portal_without_a_route(gateway: GatewayProcess) -> None:
    browser = gateway.browser()
    root = browser.get(_host(gateway), "/")
    assert (root.status, root.header("Location")) == (302, "/.sekisho/portal/")
    assert browser.get(_host(gateway), "/.sekisho/portal").header("Location") == "/.sekisho/portal/"
    # Only `/` and Sekisho's own pages: anything else on the portal host is not a route.
    assert browser.get(_host(gateway), "/wiki").status == 404
    assert browser.request("POST", _host(gateway), "/").status == 404
    # Another host without routes is still refused outright.
    assert browser.get("elsewhere.localhost", "/").status == 404
    assert browser.get("elsewhere.localhost", "/.sekisho/portal/").status == 404


def test_a_visitor_is_sent_to_sign_in_and_back(gateway: GatewayProcess) -> None:
    browser = gateway.browser()
    page = browser.get(_host(gateway), "/.sekisho/portal/why?route=kokuho")
    assert page.status == 303
    rd = "/.sekisho/portal/why?route=kokuho"
    assert page.header("Location") == "/.sekisho/signin?" + urlencode({"rd": rd})
    _, token = browser.signin_form(_host(gateway), rd)
    form = urlencode({"csrf": token, "rd": rd, "username": "tanaka",
                      "password": "Kaigan-Shiokaze-77"})
    done = browser.request("POST", _host(gateway), "/.sekisho/signin", body=form.encode())
    assert (done.status, done.header("Location")) == (303, rd)
    assert browser.get(_host(gateway), rd).status == 200


def test_staff_see_only_what_they_may_open_grouped_by_segment(gateway: GatewayProcess) -> None:
    browser = _signed_in(gateway)
    page = browser.get(_host(gateway), "/.sekisho/portal/")
    assert page.status == 200
    body = page.body.decode()
    assert _listed(body) == {"wiki": "open", "docs": "open", "kokuho": "step-up"}
    # Segments in order, each named in text (not by colour alone).
    assert body.index("インターネット接続系") < body.index("LGWAN接続系")
    assert "マイナンバー利用事務系" not in body  # no My Number app is open to her
    assert f'href="https://wiki.localhost:{gateway.port}/"' in body
    assert f'href="https://docs.localhost:{gateway.port}/"' in body
    assert '<html lang="ja">' in body and "アプリ一覧" in body
    assert "情報政策課 内線 1234" in body
    # The last proof of identity (the sign-in just now), in Asia/Tokyo and Japanese format.
    shown = re.search(r"最後の本人確認: (\d{4})年(\d{1,2})月(\d{1,2})日 (\d\d):(\d\d)", body)
    assert shown is not None
    when = datetime(*map(int, shown.groups()), tzinfo=ZoneInfo("Asia/Tokyo"))
    assert abs((datetime.now(UTC) - when).total_seconds()) < 180


def test_an_admin_sees_the_admin_apps(gateway: GatewayProcess) -> None:
    body = _signed_in(gateway, "sato").get(_host(gateway), "/.sekisho/portal/").body.decode()
    listed = _listed(body)
    assert listed["finance"] == "open"
    assert listed["admin-tools"] == "step-up"


def test_why_explains_a_step_up_app(gateway: GatewayProcess) -> None:
    browser = _signed_in(gateway)
    page = browser.get(_host(gateway), "/.sekisho/portal/why?route=kokuho")
    assert page.status == 200
    body = page.body.decode()
    assert "このアプリには 2 段階目の認証 (TOTP やパスキー) が必要です" in body  # reasons.py
    assert "<code>mfa-required</code>" in body
    app = f"https://wiki.localhost:{gateway.port}/kokuho"
    stepup = (f"https://wiki.localhost:{gateway.port}/.sekisho/stepup?"
              + urlencode({"rd": app}))
    assert f'href="{stepup.replace("&", "&amp;")}"' in body
    # No policy internals: the trace (criteria, groups, ages) is not shown to staff.
    assert "auth_age" not in body and "fresh-mfa" not in body
    english = browser.get(_host(gateway), "/.sekisho/portal/why?route=kokuho&lang=en").body.decode()
    assert "This app needs a second factor (TOTP or a passkey)" in english
    assert '<html lang="en">' in english
    # The language switch keeps the app being explained.
    assert 'href="/.sekisho/portal/why?lang=ja&amp;route=kokuho"' in english


def test_why_does_not_reveal_routes_the_user_cannot_open(gateway: GatewayProcess) -> None:
    """One 404 page, byte for byte, for an unknown id and for a real route never open to
    this user: the page is no oracle for which internal systems exist."""
    browser = _signed_in(gateway)
    answers = [browser.get(_host(gateway), "/.sekisho/portal/why?" + urlencode({"route": rid}))
               for rid in ("finance", "juki", "admin-tools", "no-such-app", "", "x" * 5000)]
    assert {a.status for a in answers} == {404}
    assert len({a.body for a in answers}) == 1
    for name in ("財務会計", "住民記録", "管理ツール", "finance.localhost"):
        assert name.encode() not in answers[0].body
    assert browser.get(_host(gateway), "/.sekisho/portal/why").status == 404


def test_route_titles_are_escaped(gateway: GatewayProcess) -> None:
    browser = _signed_in(gateway)
    for target in ("/.sekisho/portal/", "/.sekisho/portal/why?route=kokuho"):
        body = browser.get(_host(gateway), target).body.decode()
        assert "<script>" not in body
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;国保" in body


def test_security_headers(gateway: GatewayProcess) -> None:
    browser = _signed_in(gateway)
    for target in ("/.sekisho/portal/", "/.sekisho/portal/why?route=kokuho",
                   "/.sekisho/portal/why?route=nope"):
        page = browser.get(_host(gateway), target)
        csp = page.header("Content-Security-Policy") or ""
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "script-src" not in csp
        assert page.header("X-Frame-Options") == "DENY"
        assert page.header("Referrer-Policy") == "no-referrer"
        assert page.header("Cache-Control") == "no-store"
    css = browser.get(_host(gateway), "/.sekisho/static/portal.css")
    assert css.status == 200 and css.header("Content-Type") == "text/css; charset=utf-8"


def test_no_open_redirect_through_the_portal(gateway: GatewayProcess) -> None:
    browser = gateway.browser()
    evil = "https://evil.example/phish"
    # Signed out: the way back is our own relative path, whatever the query carries.
    for query in ("rd=" + quote(evil, safe=""), "route=" + quote("//evil.example", safe=""),
                  "route=" + quote(evil, safe="")):
        page = browser.get(_host(gateway), "/.sekisho/portal/why?" + query)
        location = page.header("Location") or ""
        assert location.startswith("/.sekisho/signin?rd=%2F.sekisho%2Fportal%2Fwhy%3F")
        rd = location.split("rd=", 1)[1]
        _, token = browser.signin_form(_host(gateway), rd)
        form = "csrf=" + quote(token) + "&rd=" + rd + "&username=tanaka&password=" + quote(
            "Kaigan-Shiokaze-77")
        done = browser.request("POST", _host(gateway), "/.sekisho/signin", body=form.encode())
        assert (done.header("Location") or "").startswith("/.sekisho/portal/why?")
        browser = gateway.browser()
    # Signed in: no parameter of the portal is ever a redirect target.
    signed = _signed_in(gateway)
    page = signed.get(_host(gateway), "/.sekisho/portal/?rd=" + quote(evil, safe=""))
    assert page.status == 200 and page.header("Location") is None
    assert b"evil.example" not in page.body


def test_only_get_and_head(gateway: GatewayProcess) -> None:
    browser = _signed_in(gateway)
    refused = browser.request("POST", _host(gateway), "/.sekisho/portal/", body=b"x=1")
    assert refused.status == 405 and refused.header("Allow") == "GET, HEAD"
    assert browser.request("HEAD", _host(gateway), "/.sekisho/portal/").status == 200


def test_the_portal_answers_on_every_route_host_too(gateway: GatewayProcess) -> None:
    browser = gateway.browser()
    browser.signin(_host(gateway, "wiki.localhost"), "tanaka", rd="/.sekisho/portal/")
    body = browser.get(_host(gateway, "wiki.localhost"), "/.sekisho/portal/").body.decode()
    assert _listed(body) == {"wiki": "open", "docs": "open", "kokuho": "step-up"}
