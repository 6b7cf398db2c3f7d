"""画面転送 in a real browser: Chromium opens a `mode: screen` route, noVNC (vendored from its
registry package, served by the gateway under a strict CSP) connects through the gateway's
WebSocket and RFB filter to a real VNC desktop, and the watermark lies over the picture.

The gateway runs in-process (tests/gateway/test_screen.py's ScreenGateway: real sessions,
real change feed over SQLite); the desktop is TigerVNC's Xvnc with a coloured root window
and xclock. The screenshot goes to tests/artifacts/browser/ and docs/images/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import ROOT, shot
from playwright.sync_api import Browser, ConsoleMessage

sys.path.insert(0, str(ROOT / "tests"))
from gateway.test_screen import XCLIP, XVNC, Desktop, ScreenGateway

NOVNC = ROOT / "src" / "sekisho" / "console" / "static" / "vendor" / "novnc" / "core" / "rfb.js"
pytestmark = [
    pytest.mark.skipif(not (XVNC and XCLIP), reason="needs Xvnc and xclip "
                       "(apt-get install tigervnc-standalone-server xclip)"),
    pytest.mark.skipif(not NOVNC.is_file(), reason="noVNC not vendored (run scripts/assets)"),
]
ROOT_COLOUR = (0x3A, 0x6E, 0xA5)  # the desktop's background, looked for in the canvas


@pytest.fixture
def desktop() -> Iterator[Desktop]:
    running = Desktop()
    display = f":{running.display}"
    subprocess.run(["xsetroot", "-display", display, "-solid", "#3a6ea5"], check=True,
                   timeout=10)
    apps = [subprocess.Popen([app, "-display", display, "-geometry", "120x120+20+20"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for app in ("xclock",) if shutil.which(app)]
    yield running
    for app in apps:
        app.terminate()
        app.wait(5)
    running.close()


def test_browser_shows_the_remote_desktop_under_the_watermark(
        tmp_path: Path, desktop: Desktop, chromium: Browser) -> None:
    # Browsers keep `__Host-` cookies for https only: this plain-HTTP test uses another name.
    gateway = ScreenGateway(tmp_path, desktop, cookie="sekisho_screen_test")
    context = chromium.new_context(locale="ja-JP", extra_http_headers={"Accept-Language": "ja"},
                                   viewport={"width": 760, "height": 560})
    try:
        context.add_cookies([{"name": gateway.cookie, "value": gateway.token,
                              "url": f"http://desk.localhost:{gateway.port}/"}])
        page = context.new_page()
        problems: list[str] = []

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                problems.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(f"http://desk.localhost:{gateway.port}/")
        page.wait_for_selector("body[data-state=connected]", timeout=15_000)
        canvas = page.locator("#screen canvas")
        size = canvas.evaluate("c => [c.width, c.height]")
        assert size == [320, 240]  # the remote framebuffer, at its own size
        # The picture arrived: the desktop's background colour is in the canvas.
        page.wait_for_function(
            """([r, g, b]) => {
                 const c = document.querySelector('#screen canvas');
                 const d = c.getContext('2d').getImageData(300, 230, 1, 1).data;
                 return Math.abs(d[0] - r) < 8 && Math.abs(d[1] - g) < 8
                        && Math.abs(d[2] - b) < 8;
               }""", arg=list(ROOT_COLOUR), timeout=10_000)
        text = page.locator("#watermark").get_attribute("data-text") or ""
        assert "hanako" in text and "LGWAN 端末" in text and "JST" in text
        tiles = page.locator("#watermark .tile")
        assert tiles.count() >= 20
        style = page.locator("#watermark").evaluate(
            "w => [getComputedStyle(w).pointerEvents, getComputedStyle(w).zIndex]")
        assert style[0] == "none" and int(style[1]) > 0
        page.wait_for_timeout(300)
        shot(page, "screen-transfer", doc="screen-transfer")
        # No inline script, no blocked resource: noVNC runs under the page's CSP as it is.
        assert not problems, problems
    finally:
        context.close()
        gateway.close()
