"""The admin console's pages over HTTP values: a real SQLite database built by the migrations,
a real audit log and the live runtime (the admin policy of the snapshot), real sessions.

The handlers are the ones `sekisho serve` mounts (`build_signin_handlers` with the console's
builder); requests are `web.Request` values as the gateway builds them. Checked here: the
menu shows what the role may do, a POST without this browser's CSRF token changes nothing,
every answer carries the console's CSP and frame/referrer headers (HSTS on TLS), the pages
render in Japanese and English with every visible text translated, and the operations
really run (a created user exists, a revoked session is gone, a change is audited).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import Engine

from sekisho import app
from sekisho.audit.log import AuditLog
from sekisho.console.admin import pages as admin_pages
from sekisho.identity import csrf as csrf_mod
from sekisho.identity.principal import SessionInfo
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.storage import users
from sekisho.storage.audit_log import iter_records
from sekisho.storage.database import create_database_engine, upgrade
from sekisho.web import Handler, Request, Response

CONFIG = """\
server:
  data_dir: "{data}"
tls:
  self_signed: true
storage:
  url: "sqlite:///{db}"
networks:
  office: ["127.0.0.0/8"]
policies:
  staff:
    allow:
      and:
        - authenticated: true
        - group: [staff]
routes:
  - id: wiki
    from: https://wiki.localhost/
    to: http://127.0.0.1:9
    segment: internet
    policy: staff
"""
PEOPLE = {"sato": "admins", "kato": "helpdesk", "suzuki": "auditors", "tanaka": "staff"}
PASSKEY = ("password", "webauthn_uv")


@dataclass
class Site:
    handlers: dict[str, Handler]
    engine: Engine
    sessions: SessionManager
    tokens: dict[str, str]  # username -> session cookie token

    def session(self, username: str) -> SessionInfo:
        info = asyncio.run(self.sessions.lookup(self.tokens[username]))
        assert info is not None
        return info

    def request(self, username: str | None, method: str, path: str, *, query: str = "",
                form: dict[str, str] | None = None, scheme: str = "https",
                lang: str = "ja") -> Response:
        headers = [("host", "admin.localhost"), ("accept-language", lang)]
        session = self.session(username) if username else None
        if username:
            headers.append(("cookie", f"sekisho_session={self.tokens[username]}"))
        body = urlencode(form or {}).encode()
        request = Request(method, path + ("?" + query if query else ""), path, query, headers,
                          "127.0.0.1", scheme, "admin.localhost", body, session=session)
        handler = self.handlers.get(path) or self.handlers["/.sekisho/admin/*"]
        return asyncio.run(handler(request))

    def page(self, username: str, path: str, **kwargs: Any) -> str:
        response = self.request(username, "GET", path, **kwargs)
        assert response.status == 200, (response.status, response.body[:2000])
        return response.body.decode()

    def post(self, username: str, path: str, form: dict[str, str], *,
             from_page: str = "") -> Response:
        """POST with the CSRF token the page `from_page` (default: `path`) carries."""
        html = self.page(username, from_page or path)
        token = re.search(r'name="csrf" value="([^"]+)"', html)
        assert token, html[:2000]
        return self.request(username, "POST", path, form={csrf_mod.FIELD: token.group(1),
                                                          **form})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("admin-pages")
    data, db = tmp / "data", tmp / "sekisho.db"
    engine = create_database_engine(f"sqlite:///{db}")
    upgrade(engine)
    path = tmp / "sekisho.yaml"
    path.write_text(CONFIG.format(data=data, db=db), encoding="utf-8")
    runtime, _ = app.load_snapshot(str(path))
    holder = app.RuntimeHolder(runtime)
    audit = AuditLog(engine)
    audit.start()
    config = runtime.config
    sessions = SessionManager(engine, config.session)
    handlers = build_signin_handlers(
        current_config=lambda: holder.get().config, engine=engine, sessions=sessions,
        audit=audit, builders=[admin_pages.build_handlers], current_runtime=holder.get)
    tokens = {}
    now = datetime.now(UTC)
    for name in set(PEOPLE.values()):
        users.create_group(engine, name)
    for username, group in PEOPLE.items():
        record = users.create_user(engine, username, display_name=username.title())
        users.add_member(engine, group, username)
        tokens[username], _ = sessions.create(record, PASSKEY, "127.0.0.1", "pytest",
                                              mfa_time=now)
    try:
        yield Site(handlers, engine, sessions, tokens)
    finally:
        audit.close()
        engine.dispose()


class _Text(HTMLParser):
    """Visible text nodes of a page (not inside script/style/code/pre/option values)."""

    SKIP = frozenset({"script", "style", "code", "pre", "textarea"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("br", "input", "meta", "link", "hr", "img"):
            self.stack.append(tag)
        for name, value in attrs:  # labels read out by assistive technology
            if name in ("aria-label", "title") and value:
                self.texts.append(value.strip())

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack.pop() != tag:
            pass

    def handle_data(self, data: str) -> None:
        if data.strip() and not self.SKIP.intersection(self.stack):
            self.texts.append(data.strip())


def _texts(html: str) -> list[str]:
    parser = _Text()
    parser.feed(html)
    return parser.texts


# -- access, menus, headers -------------------------------------------------------------------

def test_signed_out_is_sent_to_sign_in(site: Site) -> None:
    response = site.request(None, "GET", "/.sekisho/admin/users")
    assert response.status == 303
    assert dict(response.headers)["Location"].startswith("/.sekisho/signin?rd=")


def test_staff_without_an_admin_role_is_refused(site: Site) -> None:
    assert site.request("tanaka", "GET", "/.sekisho/admin/").status == 403


@pytest.mark.parametrize(("username", "shown", "hidden"), [
    ("sato", {"users", "devices", "sessions", "config", "audit", "tokens"}, set()),
    ("kato", {"users", "devices", "sessions", "config", "audit"}, {"tokens"}),
    ("suzuki", {"config", "audit"}, {"users", "devices", "sessions", "tokens", "groups"}),
])
def test_the_menu_shows_only_what_the_role_may_do(site: Site, username: str, shown: set[str],
                                                   hidden: set[str]) -> None:
    html = site.page(username, "/.sekisho/admin/config")
    menu = html.split('<nav class="menu"', 1)[1].split("</nav>", 1)[0]
    links = set(re.findall(r'href="/\.sekisho/admin/(\w*)"', menu))
    assert shown <= links and not hidden & links, links


def test_a_page_the_role_may_not_use_is_refused_with_its_code(site: Site) -> None:
    response = site.request("suzuki", "GET", "/.sekisho/admin/users")
    assert response.status == 403
    assert "role-forbidden" in response.body.decode()


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_every_answer_carries_the_console_headers(site: Site, scheme: str) -> None:
    for response in (site.request("sato", "GET", "/.sekisho/admin/users", scheme=scheme),
                     site.request("sato", "GET", "/.sekisho/admin/nowhere", scheme=scheme),
                     site.request(None, "GET", "/.sekisho/admin/", scheme=scheme)):
        headers = dict(response.headers)
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "style-src 'self';" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert "connect-src 'self'" in csp and "img-src 'self' data:" in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert ("Strict-Transport-Security" in headers) == (scheme == "https")
        assert [k for k, _ in response.headers].count("Content-Security-Policy") == 1


def test_pages_have_no_inline_script_or_style(site: Site) -> None:
    for path in ("/.sekisho/admin/", "/.sekisho/admin/users", "/.sekisho/admin/config",
                 "/.sekisho/admin/audit", "/.sekisho/admin/tokens"):
        html = site.page("sato", path)
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert 'src="/.sekisho/static/' in tag or 'type="application/json"' in tag, tag
        assert "<style" not in html and " style=" not in html
        assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers


def test_static_assets_are_served_versioned_and_immutable(site: Site) -> None:
    html = site.page("sato", "/.sekisho/admin/")
    for name in ("admin.css", "admin.js"):
        url = re.search(rf'"(/\.sekisho/static/{re.escape(name)}\?v=[0-9a-f]{{10}})"', html)
        assert url, name
        response = site.request(None, "GET", url.group(1).split("?")[0])
        assert response.status == 200 and response.body
        assert "immutable" in dict(response.headers)["Cache-Control"]
    if "vendor/uPlot.iife.min.js" in admin_pages._load_assets():
        assert "/.sekisho/static/vendor/uPlot.iife.min.js?v=" in html
        licence = site.request(None, "GET", "/.sekisho/static/vendor/uPlot.LICENSE.txt")
        assert licence.status == 200 and b"MIT" in licence.body


# -- CSRF ---------------------------------------------------------------------------------------

def test_a_post_without_the_csrf_token_changes_nothing(site: Site) -> None:
    for form in ({}, {"csrf": "forged"}):
        response = site.request("sato", "POST", "/.sekisho/admin/users",
                                form={**form, "username": "mallory"})
        assert response.status == 403
    assert users.get_user_by_name(site.engine, "mallory") is None


def test_a_token_of_another_browser_is_refused(site: Site) -> None:
    html = site.page("kato", "/.sekisho/admin/users")
    token = re.search(r'name="csrf" value="([^"]+)"', html)
    assert token
    response = site.request("sato", "POST", "/.sekisho/admin/users",
                            form={"csrf": token.group(1), "username": "mallory2"})
    assert response.status == 403
    assert users.get_user_by_name(site.engine, "mallory2") is None


# -- operations through the pages ------------------------------------------------------------

def test_create_a_user_shows_the_generated_password_once_and_audits(site: Site) -> None:
    response = site.post("sato", "/.sekisho/admin/users",
                         {"username": "yamada", "display_name": "山田 太郎"})
    html = response.body.decode()
    assert response.status == 200 and "no-store" in dict(response.headers)["Cache-Control"]
    secret = re.search(r'id="secret">([^<]+)<', html)
    assert secret and len(secret.group(1)) >= 12
    assert users.get_user_by_name(site.engine, "yamada") is not None
    created = [json.loads(r.body) for r in iter_records(site.engine)
               if r.event_type == "user.changed"]
    assert any(e["user"] == "yamada" and e["admin"] == "sato" for e in created)
    # The detail page does not show it again.
    assert secret.group(1) not in site.page("sato", "/.sekisho/admin/users/yamada")


def test_a_refusal_is_a_page_with_its_code_in_the_chosen_language(site: Site) -> None:
    response = site.post("sato", "/.sekisho/admin/users", {"username": "bad name!"})
    assert 400 <= response.status < 500
    assert "refusal" in response.body.decode()
    # helpdesk may not act on an administrator (decided by the operation)
    response = site.post("kato", "/.sekisho/admin/users/sato/factors", {},
                         from_page="/.sekisho/admin/users/sato")
    body = response.body.decode()
    assert response.status == 403 and "target-is-admin" in body


def test_revoking_a_session_from_the_sessions_page_ends_it(site: Site) -> None:
    record = users.get_user_by_name(site.engine, "yamada") or \
        users.create_user(site.engine, "yamada")
    token, _ = site.sessions.create(record, ("password",), "127.0.0.1", "pytest")
    html = site.page("sato", "/.sekisho/admin/sessions", query="user=yamada")
    short = re.search(r'data-session="([0-9a-f]{12})"', html)
    assert short
    response = site.post("sato", f"/.sekisho/admin/sessions/{short.group(1)}/revoke", {},
                         from_page="/.sekisho/admin/sessions")
    assert response.status == 303
    assert dict(response.headers)["Location"].endswith("done=session-revoked")
    assert asyncio.run(site.sessions.lookup(token)) is None
    flashed = site.page("sato", "/.sekisho/admin/sessions", query="done=session-revoked")
    assert "セッションを終了しました。" in flashed


@pytest.mark.parametrize("back", ["https://evil.example/", "//evil.example/x",
                                  "/.sekisho/admin//evil.example", "/elsewhere"])
def test_the_way_back_after_a_revocation_stays_in_the_console(site: Site, back: str) -> None:
    record = users.get_user_by_name(site.engine, "tanaka")
    assert record is not None
    site.sessions.create(record, ("password",), "127.0.0.1", "pytest")
    html = site.page("sato", "/.sekisho/admin/sessions", query="user=tanaka")
    short = re.findall(r'data-session="([0-9a-f]{12})"', html)[-1]
    response = site.post("sato", f"/.sekisho/admin/sessions/{short}/revoke", {"back": back},
                         from_page="/.sekisho/admin/sessions")
    location = dict(response.headers)["Location"]
    assert location == "/.sekisho/admin/sessions?done=session-revoked"


def test_unknown_flash_keys_show_nothing(site: Site) -> None:
    html = site.page("sato", "/.sekisho/admin/users", query="done=<script>x</script>")
    assert 'class="flash"' not in html and "<script>x" not in html


def test_times_are_shown_in_tokyo_time_in_japanese(site: Site) -> None:
    html = site.page("sato", "/.sekisho/admin/users/sato")
    assert re.search(r"\d{4}年\d{1,2}月\d{1,2}日 \d{2}:\d{2}:\d{2}", html)
    english = site.page("sato", "/.sekisho/admin/users/sato", query="lang=en")
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", english)


# -- language -----------------------------------------------------------------------------------

DATA = {"山田 太郎"}  # display names the tests gave
ALLOWED_SAME = re.compile(
    r"^(English|日本語|—|[\d\s:.,/()\-–—+]*|[\w.@\-]+|\w+ \(\w+\)|.*[=:→].*|[A-Z]{2,5})$")


@pytest.mark.parametrize("path", ["/.sekisho/admin/", "/.sekisho/admin/users",
                                  "/.sekisho/admin/users/sato", "/.sekisho/admin/groups",
                                  "/.sekisho/admin/sessions", "/.sekisho/admin/devices",
                                  "/.sekisho/admin/config", "/.sekisho/admin/audit",
                                  "/.sekisho/admin/tokens"])
def test_every_visible_text_is_translated(site: Site, path: str) -> None:
    """A text node left the same in English and Japanese is a string that escaped the
    catalog (unless it is data: names, numbers, codes)."""
    ja = _texts(site.page("sato", path, query="lang=ja"))
    en = _texts(site.page("sato", path, query="lang=en"))
    assert 'lang="en"' in site.page("sato", path, query="lang=en")[:200]
    same = sorted(set(ja) & set(en))
    leaked = [text for text in same if not ALLOWED_SAME.match(text) and text not in DATA]
    assert leaked == []
    assert len(set(ja) - set(en)) >= 5  # the page really is translated


def _luminance(colour: str) -> float:
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize(("ink", "paper"), [
    ("#102a43", "#e4e7eb"),  # menu
    ("#14522b", "#e2f3e8"),  # flash, ok, badge-on, diff additions
    ("#7a1540", "#fbe6ee"),  # badge-off
    ("#7f1313", "#fde8e8"),  # diff deletions
    ("#3d2600", "#fff3d6"),  # the secret shown once
    ("#ffffff", "#1d4e89"),  # buttons
    ("#ffffff", "#a61b1b"),  # danger buttons
    ("#52606d", "#ffffff"),  # muted text
])
def test_colours_meet_wcag_aa(ink: str, paper: str) -> None:
    css = (Path(admin_pages.STATIC_DIR) / "admin.css").read_text(encoding="utf-8")
    assert ink in css or ink in ("#ffffff", "#52606d")
    assert _contrast(ink, paper) >= 4.5


# -- configuration, audit, tokens -----------------------------------------------------------

def test_a_config_check_shows_the_error_with_its_line_and_changes_nothing(site: Site) -> None:
    html = site.page("sato", "/.sekisho/admin/config")
    text = re.search(r'<textarea id="yaml"[^>]*>(.*?)</textarea>', html, re.S)
    base = re.search(r'name="base_sha256" value="([0-9a-f]{64})"', html)
    assert text and base
    original = text.group(1).replace("&#34;", '"').replace("&quot;", '"')
    broken = original.replace("    segment: internet\n", "    segment: intranet\n")
    line = original.splitlines().index("    segment: internet") + 1
    response = site.post("sato", "/.sekisho/admin/config",
                         {"yaml": broken, "base_sha256": base.group(1), "action": "check"})
    body = response.body.decode()
    assert response.status == 200 and 'id="check-failed"' in body
    assert f"{line} 行目" in body and "routes[0].segment" in body
    assert '<span class="diff-add">+    segment: intranet</span>' in body
    # "apply" with the error is refused by the operation; the text stays in the editor.
    response = site.post("sato", "/.sekisho/admin/config",
                         {"yaml": broken, "base_sha256": base.group(1), "action": "apply"},
                         from_page="/.sekisho/admin/config")
    body = response.body.decode()
    assert response.status == 422 and 'id="config-refusal"' in body and "intranet" in body
    # An auditor may check but sees no "apply" button, and applying is refused.
    auditor = site.page("suzuki", "/.sekisho/admin/config")
    assert 'id="config-check"' in auditor and 'id="config-apply"' not in auditor
    response = site.post("suzuki", "/.sekisho/admin/config",
                         {"yaml": original, "base_sha256": base.group(1), "action": "apply"})
    assert response.status == 403 and "role-forbidden" in response.body.decode()


def test_audit_search_export_and_verification(site: Site) -> None:
    html = site.page("suzuki", "/.sekisho/admin/audit", query="type=user.changed")
    assert 'data-type="user.changed"' in html and 'data-type="session.revoked"' not in html
    export = site.request("suzuki", "GET", "/.sekisho/admin/audit/export",
                          query="type=user.changed&format=csv")
    assert export.status == 200 and b"user.changed" in export.body
    assert "attachment" in dict(export.headers)["Content-Disposition"]
    response = site.post("suzuki", "/.sekisho/admin/audit/verify", {},
                         from_page="/.sekisho/admin/audit")
    assert response.status == 200 and 'id="verify-ok"' in response.body.decode()
    verified = [r for r in iter_records(site.engine) if r.event_type == "audit.verified"]
    assert verified and json.loads(verified[-1].body)["admin"] == "suzuki"


def test_an_api_token_is_shown_once_and_can_be_revoked(site: Site) -> None:
    response = site.post("sato", "/.sekisho/admin/tokens",
                         {"name": "nightly-export", "role": "auditor", "expires_in_days": "30"})
    secret = re.search(r'id="secret">(skt_[^<]+)<', response.body.decode())
    assert response.status == 200 and secret
    listing = site.page("sato", "/.sekisho/admin/tokens")
    assert "nightly-export" in listing and secret.group(1) not in listing
    token_id = re.search(r'action="/\.sekisho/admin/tokens/([^/"]+)/revoke"', listing)
    assert token_id
    revoked = site.post("sato", f"/.sekisho/admin/tokens/{token_id.group(1)}/revoke", {},
                        from_page="/.sekisho/admin/tokens")
    assert revoked.status == 303
    assert "失効" in site.page("sato", "/.sekisho/admin/tokens")
