"""`make run`'s promise, in a real browser: the embedded demo as a city's staff member uses it.

Tanaka signs in to the demo wiki and sees the app greet her by the name the gateway's signed
assertion carries (the demo app verifies it against the JWKS); the admin-only app explains
its 403; the マイナンバー demo route steps her up: she enrols TOTP, proves it, and gets in.
"""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

from sekisho.identity import totp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_support import shot
from harness import free_port


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    data = tmp_path_factory.mktemp("demo")
    port, admin = free_port(), free_port()
    log = (data / "demo.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sekisho", "serve", "--demo", "--data-dir", str(data),
         "--port", str(port), "--admin-port", str(admin)], stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, (data / "demo.log").read_text()[-2000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the demo did not start"
            time.sleep(0.2)
    yield port
    process.terminate()
    process.wait(20)


def _sign_in(page: Page, user: str, password: str) -> None:
    page.wait_for_selector("#username")
    page.fill("#username", user)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("form[action='/.sekisho/signin'] button[type=submit]")


def test_demo_staff_day(demo: int, page: Page) -> None:
    page.goto(f"https://wiki.localhost:{demo}/manual")
    _sign_in(page, "tanaka", "Usuzan-Kazan-2026")
    page.wait_for_url(f"https://wiki.localhost:{demo}/manual")
    assert "ようこそ、田中 花子 (tanaka) さん" in page.inner_text("body")  # verified assertion
    shot(page, "demo-wiki", doc="demo-wiki")

    page.goto(f"https://admin-tools.localhost:{demo}/")
    _sign_in(page, "tanaka", "Usuzan-Kazan-2026")
    assert "group-unauthorized" in page.content()
    shot(page, "demo-denied", doc="demo-denied")

    page.goto(f"https://juki.localhost:{demo}/records")
    _sign_in(page, "tanaka", "Usuzan-Kazan-2026")
    page.wait_for_url("**/.sekisho/stepup?rd=*")
    with page.expect_navigation():
        page.click("a.button")  # no factor yet: set up an authenticator app
    page.wait_for_selector("code.secret")
    raw = page.inner_text("code.secret").replace(" ", "")
    secret = base64.b32decode(raw + "=" * (-len(raw) % 8))
    page.fill("#code", totp.totp(secret, time.time()))
    with page.expect_navigation():
        page.click("form button[type=submit]")
    page.wait_for_selector("ol.codes")
    page.goto(f"https://juki.localhost:{demo}/records")
    page.wait_for_url("**/.sekisho/stepup?rd=*")
    with page.expect_navigation():
        page.click("form[action='/.sekisho/stepup'] button")
    page.fill("#code", totp.totp(secret, time.time() + 30))
    with page.expect_navigation():
        page.click("form[action='/.sekisho/mfa/totp'] button")
    page.wait_for_url(f"https://juki.localhost:{demo}/records")
    assert "住民記録システム" in page.inner_text("h1")
    shot(page, "demo-mynumber", doc="demo-mynumber")
