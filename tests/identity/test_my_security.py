""""My security": my devices and posture, my sessions (sign out others), recent sign-ins.

Through the real identity handlers on a migrated database (SQLite and PostgreSQL), with the
real hash-chained audit log: what the page shows is what the auditor would find.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from datetime import timedelta

import pytest
from mfa_browser import OFFICE_IP, PASSWORD, App, Browser, location, make_config
from sqlalchemy import text

from sekisho.audit.events import AccountLocked, SessionRevoked, SignInFailed
from sekisho.audit.log import AuditLog
from sekisho.config.model import DeviceSettings, PostureProfile
from sekisho.devices.posture import format_time
from sekisho.storage import devices as device_store
from sekisho.storage import posture as posture_store
from sekisho.storage import users
from sekisho.storage.audit_recent import recent_by_actor, recent_of_type

PAGE = "/.sekisho/security"
OTHERS, ONE = PAGE + "/sessions/others", PAGE + "/sessions/one"
PROFILES = DeviceSettings(profiles=(
    PostureProfile("managed", disk_encryption=True, firewall=True, screen_lock=True),))


@pytest.fixture
def app(engine, clock, fast_hasher):
    for name in ("suzuki", "sato"):
        users.create_user(engine, name, password_hash=fast_hasher.hash(PASSWORD))
    config = dataclasses.replace(make_config(), devices=PROFILES)
    return App(engine, AuditLog(engine, now=clock), clock, fast_hasher, config)


def _browser(app: App, user: str = "suzuki", ip: str = OFFICE_IP,
             agent: str = "pytest-browser") -> Browser:
    browser = Browser(app, ip=ip, agent=agent)
    assert browser.sign_in(user).status == 303
    assert "__Host-sekisho" in browser.cookies
    return browser


def _short(browser: Browser) -> str:
    token = browser.cookies["__Host-sekisho"]
    info = browser.app.manager.lookup_sync(token)
    assert info is not None
    return info.short_id


def _page(browser: Browser) -> str:
    response = browser.request("GET", PAGE)
    assert response.status == 200, response.status
    return response.body.decode()


def _post(browser: Browser, path: str, **form: str):
    # The token is bound to the session; the sign-in page hands one out even when this page
    # shows no form (a single session, no factor to change).
    return browser.request("POST", path, form={"csrf": browser.csrf("/.sekisho/signin"),
                                               **form})


def _revoked(app: App) -> list[tuple[str, str, str, str]]:
    log = app.audit
    assert isinstance(log, AuditLog)
    found = recent_by_actor(app.engine, "suzuki", ["session.revoked"], limit=50) + \
        recent_by_actor(app.engine, "sato", ["session.revoked"], limit=50)
    return sorted((b["user"], b["admin"], b["session"], b["reason"])
                  for b in (json.loads(r.body) for r in found))


# -- my sessions -------------------------------------------------------------------------------

def test_sessions_are_listed_with_the_current_one_marked(app):
    first = _browser(app, agent="Mozilla/5.0 (Windows NT 10.0) Firefox/128.0")
    second = _browser(app, ip="10.9.8.7", agent="Mozilla/5.0 (Macintosh) Safari/605")
    _browser(app, user="sato", ip="10.6.6.6")
    page = _page(first)
    rows = re.findall(r'<tr( class="current")? data-session="([0-9a-f]{12})">', page)
    assert rows == [(' class="current"', _short(first)), ("", _short(second))]
    assert "10.9.8.7" in page and "Safari/605" in page and "10.6.6.6" not in page
    assert "2026年4月1日 09:00" in page  # started: UTC midnight shown in Asia/Tokyo
    assert 'id="signout-others"' in page


def test_sign_out_all_others_ends_them_at_once_and_is_audited(app):
    first, second, third = _browser(app), _browser(app, ip="10.2.2.2"), _browser(app)
    other_user = _browser(app, user="sato")
    response = _post(first, OTHERS)
    assert response.status == 303 and location(response) == PAGE + "?done=signed-out-others"
    # The others' next request finds no session: it is sent to sign in.
    for ended in (second, third):
        gone = ended.request("GET", PAGE)
        assert gone.status == 303 and location(gone).startswith("/.sekisho/signin?")
    done = first.request("GET", PAGE, "done=signed-out-others").body.decode()
    assert "ほかのセッションをすべてサインアウトしました。" in done
    assert _page(other_user)  # another user's session is untouched
    assert _revoked(app) == sorted(
        ("suzuki", "suzuki", _short_of(app, b), "user-signed-out-others")
        for b in (second, third))
    # Nothing left to end: said so, nothing audited.
    assert location(_post(first, OTHERS)) == PAGE + "?done=no-others"
    assert len(_revoked(app)) == 2


def _short_of(app: App, browser: Browser) -> str:
    from sekisho.identity.sessions import session_id_for

    return session_id_for(browser.cookies["__Host-sekisho"])[:12]


def test_sign_out_one_other_session(app):
    first, second = _browser(app), _browser(app, ip="10.2.2.2")
    response = _post(first, ONE, session=_short(second))
    assert response.status == 303 and location(response) == PAGE + "?done=signed-out-one"
    assert second.request("GET", PAGE).status == 303
    assert _page(first)
    assert _revoked(app) == [("suzuki", "suzuki", _short_of(app, second),
                              "user-signed-out-one")]


def test_someone_elses_session_and_an_unknown_id_get_the_same_answer(app):
    """The form is no oracle for which sessions exist (hijacking reconnaissance)."""
    mine = _browser(app)
    theirs = _browser(app, user="sato")
    bodies = {}
    for name, short_id in (("theirs", _short(theirs)), ("unknown", "0123456789ab"),
                           ("malformed", "'><script>"), ("prefix", _short(theirs)[:8])):
        response = _post(mine, ONE, session=short_id)
        assert response.status == 404, name
        page = response.body.decode()
        assert "該当するセッションはありません" in page and "<script>" not in page
        bodies[name] = re.sub(r'name="csrf" value="[^"]+"', "", page)
    assert len(set(bodies.values())) == 1
    assert _page(theirs)  # still signed in
    assert _revoked(app) == []


def test_the_current_session_is_not_ended_from_this_form(app):
    browser = _browser(app)
    response = _post(browser, ONE, session=_short(browser))
    assert response.status == 409 and "現在お使いのセッション" in response.body.decode()
    assert _page(browser)


def test_a_forged_post_ends_nothing(app):
    """CSRF: another site cannot make the user's browser sign out their sessions."""
    first, second = _browser(app), _browser(app)
    for path, form in ((OTHERS, {}), (ONE, {"session": _short(second)})):
        response = first.request("POST", path, form={"csrf": "forged", **form})
        assert response.status == 403
    assert _page(second)
    assert _revoked(app) == []


def test_no_recent_proof_is_needed_to_sign_out_others(app, clock):
    first, second = _browser(app), _browser(app)
    clock.advance(3 * 3600)  # far past the recent-proof window for factor changes
    assert _post(first, OTHERS).status == 303
    assert second.request("GET", PAGE).status == 303


# -- my devices --------------------------------------------------------------------------------

def _device(app: App, user: str, name: str, device_id: str, *, days: int = 365) -> None:
    now = app.clock.now
    user_id = users.require_user(app.engine, user).id
    device_store.insert_code(app.engine, code_hash=device_id * 4, user_id=user_id,
                             created_by="it", now=now, expires_at=now + timedelta(hours=1))
    assert device_store.consume_code_and_add_device(
        app.engine, code_hash=device_id * 4, now=now, device_id=device_id,
        inventory_id="INV-" + device_id, user_id=user_id, name=name, cert_serial="0a",
        cert_not_after=now + timedelta(days=days))


def _report(app: App, device_id: str, **checks: bool) -> None:
    now = app.clock.now
    report = {"schema": 1, "device_id": device_id, "platform": "windows",
              "os_name": "Windows 11", "os_version": "23H2",
              "last_update": format_time(now - timedelta(days=1)), "disk_encryption": True,
              "firewall": True, "screen_lock": True, "edr": True, "edr_processes": [],
              "nonce": hashlib.sha256(device_id.encode()).hexdigest(), "time": format_time(now)}
    report.update(checks)
    posture_store.record(app.engine, device_id=device_id, nonce=report["nonce"],
                         reported_at=now, received_at=now,
                         nonce_expires=now + timedelta(hours=1),
                         report=json.dumps(report), profile="")


def _device_block(page: str, device_id: str) -> str:
    found = re.search(rf'<div class="device[^"]*" data-device="{device_id}">(.*?)</div>',
                      page, re.S)
    assert found is not None, device_id
    return found.group(0)


def test_my_devices_show_posture_in_plain_japanese_and_what_to_do(app):
    _device(app, "suzuki", "総務課ノート PC", "dev1")
    _device(app, "suzuki", "自宅用端末", "dev2", days=10)
    _device(app, "suzuki", "予備機", "dev3")
    _device(app, "sato", "佐藤さんの端末", "dev9")
    _report(app, "dev1", disk_encryption=False, firewall=False)
    _report(app, "dev3")
    _report(app, "dev9", disk_encryption=False)
    page = _page(_browser(app))
    failing = _device_block(page, "dev1")
    assert "attention" in failing and "セキュリティ要件を満たしていません" in failing
    assert "ディスクが暗号化されていません。" in failing and "BitLocker" in failing
    assert "ファイアウォールが無効になっています。" in failing
    assert re.findall(r'data-check="([a-z_-]+)"', failing) == ["disk_encryption", "firewall"]
    assert "Windows 11 23H2" in failing and "2026年4月1日 09:00" in failing
    silent = _device_block(page, "dev2")
    assert 'data-check="report-missing"' in silent and "まだありません" in silent
    assert "まもなく期限切れ" in silent  # certificate ends within 30 days
    good = _device_block(page, "dev3")
    assert "セキュリティ要件を満たしています。" in good and "attention" not in good
    # Another person's device never shows, not even its name or id.
    assert "dev9" not in page and "佐藤さんの端末" not in page


def test_a_stale_report_and_a_suspended_device(app, clock):
    _device(app, "suzuki", "ノート PC", "dev1")
    _device(app, "suzuki", "止めた端末", "dev2")
    _report(app, "dev1")
    device_store.set_status(app.engine, "dev2", "suspended", now=clock.now, reason="lost")
    clock.advance(3600)  # past the 15-minute freshness the gateway requires
    page = _page(_browser(app))
    assert 'data-check="report-stale"' in _device_block(page, "dev1")
    suspended = _device_block(page, "dev2")
    assert "一時停止中" in suspended and "情報システム担当へ連絡" in suspended


# -- recent sign-ins ---------------------------------------------------------------------------

def test_recent_signins_show_mine_only_newest_first_in_tokyo_time(app, clock):
    intruder = Browser(app, ip="198.51.100.9")
    for _ in range(2):
        assert intruder.sign_in("suzuki", "wrong-password").status == 401
    assert Browser(app, ip="198.51.100.7").sign_in("sato", "wrong").status == 401
    Browser(app, ip="198.51.100.8").sign_in("suzuki-x", "wrong")  # another name typed
    clock.advance(60)
    browser = _browser(app)
    page = _page(browser)
    rows = re.findall(r'<tr class="(ok|failed)" data-event="([a-z._]+)">\s*<td>([^<]+)</td>'
                      r'<td>([^<]+)', page)
    assert [(r[0], r[1], r[3].strip()) for r in rows] == [
        ("ok", "signin.success", "サインイン成功"),
        ("failed", "signin.failure", "サインイン失敗"),
        ("failed", "signin.failure", "サインイン失敗")]
    assert rows[0][2] == "2026年4月1日 09:01" and rows[1][2] == "2026年4月1日 09:00"
    assert "198.51.100.9" in page and "ユーザー名またはパスワードの誤り" in page
    assert "198.51.100.7" not in page and "198.51.100.8" not in page
    english = browser.request("GET", PAGE, "lang=en").body.decode()
    assert "Recent sign-ins" in english and "2026-04-01 09:01" in english


def test_a_lockout_of_my_account_is_listed(app):
    for _ in range(5):  # account_max_failures=5 in the test configuration
        Browser(app, ip="198.51.100.9").sign_in("suzuki", "wrong-password")
    for _ in range(5):
        Browser(app, ip="198.51.100.9").sign_in("sato", "wrong-password")
    locked = recent_of_type(app.engine, "signin.lockout", limit=10)
    assert {json.loads(r.body)["key"] for r in locked} >= {"account:suzuki", "account:sato"}
    app.clock.advance(601)  # the lock has passed
    page = _page(_browser(app))
    assert page.count('data-event="signin.lockout"') == 1
    assert "失敗が続いたため、サインインを一時的にロック" in page


def test_only_the_last_ten_and_only_ninety_days(app, clock):
    log = app.audit
    assert isinstance(log, AuditLog)
    for index in range(12):
        log.append_sync(SignInFailed(user="suzuki", source_ip=f"192.0.2.{index}",
                                     reason="invalid-credentials"))
    clock.advance(60)
    page = _page(_browser(app))
    assert page.count('data-event="signin.') == 10
    assert "192.0.2.0<" not in page and "192.0.2.1<" not in page  # the two oldest
    clock.advance(91 * 86400)
    page = _page(_browser(app))
    assert page.count('data-event="signin.failure"') == 0


# -- fail closed -------------------------------------------------------------------------------

@pytest.mark.parametrize("table", ["audit_events", "device_posture"])
def test_storage_failure_answers_503_never_a_traceback(app, table):
    browser = _browser(app)
    _device(app, "suzuki", "ノート PC", "dev1")
    with app.engine.begin() as connection:
        connection.execute(text(f"DROP TABLE {table}"))
    response = browser.request("GET", PAGE)
    assert response.status == 503
    assert "Traceback" not in response.body.decode()


# -- the newest-first query --------------------------------------------------------------------

def test_recent_by_actor_is_newest_first_exact_and_bounded(app, clock):
    log = app.audit
    assert isinstance(log, AuditLog)
    for index in range(30):
        log.append_sync(SignInFailed(user="suzuki" if index % 3 else "Suzuki",
                                     source_ip=f"192.0.2.{index}", reason="x"))
        log.append_sync(SessionRevoked(admin="it", session="s", user="suzuki"))
        clock.advance(86400)
    log.append_sync(AccountLocked(key="account:suzuki", failures=5, locked_until="t"))
    found = recent_by_actor(app.engine, "suzuki", ["signin.failure", "oidc.signin"],
                            limit=5)
    assert [json.loads(r.body)["source_ip"] for r in found] == [
        "192.0.2.29", "192.0.2.28", "192.0.2.26", "192.0.2.25", "192.0.2.23"]
    assert all(r.actor == "suzuki" for r in found)
    since = recent_by_actor(app.engine, "suzuki", ["signin.failure"], limit=100,
                            since=clock.now - timedelta(days=4, hours=1))
    assert [json.loads(r.body)["source_ip"] for r in since] == ["192.0.2.29", "192.0.2.28",
                                                                "192.0.2.26"]
    assert recent_by_actor(app.engine, "suzuki", ["signin.failure"],
                           since=clock.now + timedelta(days=1)) == []
    assert recent_by_actor(app.engine, "suzuki", []) == []
    assert [r.event_type for r in recent_of_type(app.engine, "signin.lockout", limit=5)] == [
        "signin.lockout"]
