""""My security" in headless Chromium against a real `sekisho serve`.

Tanaka is signed in from two browsers (two contexts: two cookie jars). From the first she
sees both sessions, her device failing posture with what to do, and her recent sign-ins;
she signs out the other session, and the other browser's very next request is sent to sign
in. The page is saved as a screenshot (tests/artifacts/browser/, docs/images/).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from browser_support import Gateway, shot
from playwright.sync_api import Browser, Page

from sekisho.devices.posture import format_time
from sekisho.storage import devices as device_store
from sekisho.storage import posture as posture_store
from sekisho.storage import users
from sekisho.storage.database import create_database_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from harness import PASSWORD, EchoUpstream, GatewayProcess

EXTRA = """
devices:
  profiles:
    managed: {disk_encryption: true, firewall: true, screen_lock: true}
"""
PAGE = "/.sekisho/security"


@pytest.fixture(scope="module")
def security_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """127.0.0.1 is the office here: a password alone signs in."""
    tmp = tmp_path_factory.mktemp("my-security-browser")
    upstream = EchoUpstream()
    url = f"sqlite:///{tmp / 'sekisho.db'}"
    process = GatewayProcess(tmp, url, upstream)
    process.config.write_text(process.config.read_text(encoding="utf-8") + EXTRA,
                              encoding="utf-8")
    process.provision()
    _laptop_failing_posture(url)
    process.start()
    try:
        yield Gateway(process.port)
    finally:
        process.stop()
        upstream.close()


def _laptop_failing_posture(url: str) -> None:
    """Tanaka's enrolled laptop, whose latest report says the disk is not encrypted."""
    engine = create_database_engine(url)
    try:
        now = datetime.now(UTC)
        user_id = users.require_user(engine, "tanaka").id
        device_store.insert_code(engine, code_hash="c" * 64, user_id=user_id, created_by="it",
                                 now=now, expires_at=now + timedelta(hours=1))
        assert device_store.consume_code_and_add_device(
            engine, code_hash="c" * 64, now=now, device_id="dev-laptop",
            inventory_id="PC-0042", user_id=user_id, name="総務課ノート PC",
            cert_serial="2a", cert_not_after=now + timedelta(days=365))
        report = {"schema": 1, "device_id": "dev-laptop", "platform": "windows",
                  "os_name": "Windows 11", "os_version": "23H2",
                  "last_update": format_time(now - timedelta(days=2)),
                  "disk_encryption": False, "firewall": True, "screen_lock": True,
                  "edr": True, "edr_processes": [], "time": format_time(now),
                  "nonce": hashlib.sha256(b"nonce").hexdigest()}
        # Fresh for the gateway's 15 minutes: the test reads the page well within that.
        posture_store.record(engine, device_id="dev-laptop", nonce=report["nonce"],
                             reported_at=now, received_at=now,
                             nonce_expires=now + timedelta(hours=1),
                             report=json.dumps(report), profile="quarantine")
    finally:
        engine.dispose()


def _signed_in(chromium: Browser, gateway: Gateway, agent: str) -> Page:
    context = chromium.new_context(ignore_https_errors=True, locale="ja-JP", user_agent=agent,
                                   extra_http_headers={"Accept-Language": "ja"},
                                   viewport={"width": 900, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto(gateway.url(PAGE))
    page.wait_for_url("**/.sekisho/signin?rd=*")
    page.fill("#username", "tanaka")
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("form[action='/.sekisho/signin'] button[type=submit]")
    page.wait_for_url(gateway.url(PAGE))
    return page


def test_sign_out_the_other_browser(security_gateway: Gateway, chromium: Browser) -> None:
    gateway = security_gateway
    office = _signed_in(chromium, gateway, "Mozilla/5.0 (Windows NT 10.0) Chrome/131.0")
    other = _signed_in(chromium, gateway, "Mozilla/5.0 (X11; Linux x86_64) UnknownBrowser/1.0")
    try:
        office.reload()
        assert office.inner_text("h1") == "セキュリティ設定"
        rows = office.locator("#my-sessions tbody tr")
        assert rows.count() == 2
        assert "このセッション" in office.inner_text("#my-sessions tr.current")
        assert "UnknownBrowser/1.0" in office.inner_text("#my-sessions tbody")
        device = office.inner_text("#my-devices")
        assert "総務課ノート PC" in device and "ディスクが暗号化されていません。" in device
        signins = office.locator("#my-signins tbody tr[data-event='signin.success']")
        assert signins.count() == 2
        assert "年" in signins.first.inner_text()  # Japanese date, Asia/Tokyo

        with office.expect_navigation():
            office.click("#signout-others")
        assert "ほかのセッションをすべてサインアウトしました。" in office.inner_text("main")
        assert office.locator("#my-sessions tbody tr").count() == 1
        shot(office, "my-security", doc="my-security")

        # The other browser's next request finds its session gone: back to sign-in.
        other.goto(gateway.url(PAGE))
        other.wait_for_url("**/.sekisho/signin?rd=*")
        office.goto(gateway.url(PAGE))  # the first one is still signed in
        assert office.url == gateway.url(PAGE)
    finally:
        office.context.close()
        other.context.close()
