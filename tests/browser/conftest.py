"""A real `sekisho serve` (tests/integration/harness.py) and the system Chromium, headless.

The gateway treats 127.0.0.1 as *remote* here (`mfa.office_networks` is another network),
so every sign-in needs a second factor, and passwordless passkeys are enabled. Chromium is
Debian's `/usr/bin/chromium` driven by Playwright (no browser download); `*.localhost`
resolves to loopback. Every page a test visits is saved as a screenshot under
tests/artifacts/browser/ (gitignored); `shot(..., doc=...)` also copies it to docs/images/.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from browser_support import Gateway  # noqa: E402
from harness import EchoUpstream, GatewayProcess  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--host-resolver-rules=MAP *.localhost 127.0.0.1"]
MYNUMBER_POLICY = """
  mynumber-staff:
    allow:
      and:
        - group: [staff]
        - mfa: [webauthn_uv]
        - auth_age: 15m
  fresh-proof:
    allow:
      and:
        - group: [staff]
        - mfa: true
        - auth_age: 3s
"""
# Step-up mechanics only: on `internet`, so the β′ マイナンバー guardrail (designated terminal,
# managed device; tested in test_demo.py) does not stand in front of them.
MYNUMBER_ROUTE = """\
  - id: juki
    title: 住民記録
    from: https://wiki.localhost/juki
    to: http://127.0.0.1:{port}
    segment: internet
    policy: mynumber-staff
  - id: kokuho
    title: 国保 (3 秒以内の本人確認)
    from: https://wiki.localhost/kokuho
    to: http://127.0.0.1:{port}
    segment: internet
    policy: fresh-proof
"""
EXTRA_CONFIG = """
webauthn:
  rp_name: "Sekisho テスト"
  passwordless: true
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("browser-gateway")
    upstream = EchoUpstream()
    process = GatewayProcess(tmp, f"sqlite:///{tmp / 'sekisho.db'}", upstream)
    text = process.config.read_text(encoding="utf-8")
    # 127.0.0.1 is not an office network: a second factor is required for every sign-in.
    assert 'office_networks: ["127.0.0.0/8"]' in text
    text = text.replace('office_networks: ["127.0.0.0/8"]', 'office_networks: ["10.0.0.0/8"]')
    # A マイナンバー route on the same host: a passkey with user verification within 15 min.
    text = text.replace("\nroutes:\n", MYNUMBER_POLICY + "routes:\n")
    text += MYNUMBER_ROUTE.format(port=upstream.port)
    process.config.write_text(text + EXTRA_CONFIG, encoding="utf-8")
    process.provision()
    process.start()
    try:
        yield Gateway(process.port)
    finally:
        process.stop()
        upstream.close()


# Module scope, not session: Playwright's sync API runs an event loop in this thread while
# it is open, and later tests in the same run call asyncio.run().
@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    # Japanese first, as the staff of a city hall see it (fonts-noto-cjk renders the text).
    context = chromium.new_context(ignore_https_errors=True, locale="ja-JP",
                                   extra_http_headers={"Accept-Language": "ja"},
                                   viewport={"width": 760, "height": 820})
    context.set_default_timeout(10_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()
