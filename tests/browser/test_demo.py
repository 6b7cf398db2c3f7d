"""`make run`'s promise, in a real browser: the embedded demo as a city's staff member uses it.

The demo runs on loopback, which its configuration calls the office and the one designated
マイナンバー terminal (β′ guardrails, docs/segments.md). Tanaka signs in to the demo wiki and
sees the app greet her by the name the gateway's signed assertion carries (the demo app
verifies it against the JWKS); the admin-only app explains its 403; the LGWAN app opens from
the office. The マイナンバー app refuses her browser — no device certificate — with the
guardrail's reason. Then this machine is enrolled as a demo device through the CLI (code,
enrol, signed posture report), the browser presents the device certificate, and after a
passkey step-up she is in; `sekisho policy explain --device` says the same.

Chromium maps `*.localhost` to 127.0.0.1 by a flag; the device CLI and Playwright's client
certificate proxy (Node) get the same mapping from a resolver shim written to a temporary
directory, since the system resolver here does not know `*.localhost`.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_support import shot
from harness import free_port

from sekisho.identity import totp

CHROMIUM = "/usr/bin/chromium"  # as in conftest.py
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--host-resolver-rules=MAP *.localhost 127.0.0.1"]

PASSWORD = "Usuzan-Kazan-2026"
P12_PASSWORD = "demo-device-p12"
PYTHON_SHIM = """\
import socket
_getaddrinfo = socket.getaddrinfo
def _mapped(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith(".localhost"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = _mapped
"""
NODE_SHIM = """\
const dns = require('dns');
const mapped = (host) => (typeof host === 'string' && host.endsWith('.localhost'))
  ? '127.0.0.1' : host;
const lookup = dns.lookup;
dns.lookup = function (host, ...rest) { return lookup.call(this, mapped(host), ...rest); };
const promised = dns.promises.lookup;
dns.promises.lookup = function (host, ...rest) {
  return promised.call(this, mapped(host), ...rest);
};
"""


@dataclass
class Demo:
    port: int
    data: Path
    shims: Path

    def url(self, host: str, path: str = "/") -> str:
        return f"https://{host}.localhost:{self.port}{path}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PYTHONPATH=str(self.shims))
        env.pop("SEKISHO_DATABASE_URL", None)
        result = subprocess.run([sys.executable, "-m", "sekisho", *args], capture_output=True,
                                text=True, timeout=60, check=False, env=env)
        assert "Traceback" not in result.stderr, result.stderr
        return result


@pytest.fixture(scope="module")
def shims(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("shims")
    (directory / "sitecustomize.py").write_text(PYTHON_SHIM, encoding="utf-8")
    (directory / "localhost.js").write_text(NODE_SHIM, encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, shims: Path) -> Iterator[Demo]:
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
    yield Demo(port, data, shims)
    process.terminate()
    process.wait(20)


# Overrides conftest's browser for this module: Playwright's driver (Node) must start with
# the resolver shim, because it makes the TLS connections that carry the client certificate.
@pytest.fixture(scope="module")
def chromium(shims: Path) -> Iterator[Browser]:
    previous = os.environ.get("NODE_OPTIONS")
    os.environ["NODE_OPTIONS"] = f"--require {shims / 'localhost.js'}"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=ARGS)
            try:
                yield browser
            finally:
                browser.close()
    finally:
        if previous is None:
            os.environ.pop("NODE_OPTIONS", None)
        else:
            os.environ["NODE_OPTIONS"] = previous


def _sign_in(page: Page, user: str = "tanaka", password: str = PASSWORD) -> None:
    page.wait_for_selector("#username")
    page.fill("#username", user)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("form[action='/.sekisho/signin'] button[type=submit]")


def _passkey_then_step_up(page: Page, demo: Demo, host: str, path: str, name: str) -> None:
    """Register a passkey (the virtual authenticator; a fresh sign-in allows it), open `path`,
    which asks to step up, and prove the passkey: back on `path`."""
    page.goto(demo.url(host, "/.sekisho/passkeys"))
    page.fill("#passkey-name", name)
    with page.expect_navigation():
        page.click("#passkey-start")
    page.wait_for_selector("table.passkeys")
    page.goto(demo.url(host, path))
    page.wait_for_url("**/.sekisho/stepup?*")
    with page.expect_navigation():
        page.click("form[action='/.sekisho/stepup'] button")
    with page.expect_navigation():
        page.click("a[href='/.sekisho/passkeys/verify']")
    page.wait_for_selector("#passkey-start")
    with page.expect_navigation():
        page.click("#passkey-start")
    page.wait_for_url(demo.url(host, path))


def test_demo_staff_day(demo: Demo, page: Page) -> None:
    page.goto(demo.url("wiki", "/manual"))
    _sign_in(page)
    page.wait_for_url(demo.url("wiki", "/manual"))
    assert "ようこそ、田中 花子 (tanaka) さん" in page.inner_text("body")  # verified assertion
    shot(page, "demo-wiki", doc="demo-wiki")

    page.goto(demo.url("admin-tools"))
    _sign_in(page)
    assert "group-unauthorized" in page.content()
    shot(page, "demo-denied", doc="demo-denied")

    # LGWAN over HTTP: from the office (loopback, in the demo) it opens.
    page.goto(demo.url("docs", "/kian"))
    _sign_in(page)
    page.wait_for_url(demo.url("docs", "/kian"))
    assert "文書管理システム" in page.inner_text("h1")

    # マイナンバー: the browser presents no device certificate, so the guardrail refuses it
    # (no step-up can cure that) and the 403 page says why.
    page.goto(demo.url("juki", "/records"))
    _sign_in(page)
    content = page.content()
    assert "device-unauthorized" in content and "住民記録システム" not in content
    shot(page, "demo-mynumber-refused", doc="demo-mynumber-refused")


@pytest.fixture(scope="module")
def device(demo: Demo) -> dict[str, Any]:
    """This machine enrolled through the CLI, with a fresh signed posture report."""
    config = str(demo.data / "sekisho.demo.yaml")
    made = demo.cli("device", "code", "tanaka", "--config", config)
    assert made.returncode == 0, made.stderr
    code = made.stdout.split("tanaka: ", 1)[1].split()[0]
    password_file = demo.data / "p12-password"
    password_file.write_text(P12_PASSWORD, encoding="utf-8")
    gateway = ["--gateway", demo.url("news"), "--cafile", str(demo.data / "tls" /
                                                                "self-signed.crt")]
    directory = demo.data / "device"
    enrolled = demo.cli("device", "enroll", *gateway, "--code", code, "--name", "demo-pc",
                        "--dir", str(directory), "--p12-password-file", str(password_file))
    assert enrolled.returncode == 0, enrolled.stderr
    reported = demo.cli("device", "report", *gateway, "--dir", str(directory))
    assert reported.returncode == 0, reported.stderr
    assert "→ managed" in reported.stdout
    listed = json.loads(demo.cli("device", "list", "--config", config, "--json").stdout)
    return {"id": listed[0]["device_id"], "p12": directory / "device.p12", "config": config}


def test_enrolled_managed_device_and_passkey_reach_mynumber(
        demo: Demo, device: dict[str, Any], chromium: Browser) -> None:
    origin = f"https://juki.localhost:{demo.port}"
    context = chromium.new_context(
        ignore_https_errors=True, locale="ja-JP", viewport={"width": 760, "height": 820},
        extra_http_headers={"Accept-Language": "ja"},
        client_certificates=[{"origin": origin, "pfxPath": str(device["p12"]),
                              "passphrase": P12_PASSWORD}])
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("WebAuthn.enable")
        cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
            "hasUserVerification": True, "isUserVerified": True}})
        page.goto(demo.url("juki", "/records"))
        _sign_in(page)
        # Terminal and device pass; a password is not a passkey: the guardrail's
        # mfa-required sends her to step up rather than to a 403.
        page.wait_for_url("**/.sekisho/stepup?rd=*")

        _passkey_then_step_up(page, demo, "juki", "/records", "窓口PC")
        assert "住民記録システム" in page.inner_text("h1")
        shot(page, "demo-mynumber", doc="demo-mynumber")
    finally:
        context.close()

    # The CLI explains the same request from the registry's view of this device.
    explained = demo.cli(
        "policy", "explain", "--config", device["config"], "--url", f"{origin}/records",
        "--user", "tanaka", "--group", "staff", "--ip", "127.0.0.1", "--device", device["id"],
        "--mfa", "webauthn_uv", "--lang", "en")
    assert explained.returncode == 0, explained.stdout + explained.stderr
    assert "Guardrail beta-prime/mynumber/http: allowed" in explained.stdout
    assert f"device={device['id']}(enrolled,user=tanaka,profile=managed)" in explained.stdout


def test_explain_shows_why_byod_reaches_internet_but_not_lgwan(demo: Demo) -> None:
    config = str(demo.data / "sekisho.demo.yaml")
    home = ["--user", "tanaka", "--group", "staff", "--ip", "203.0.113.5", "--mfa", "totp",
            "--device-profile", "byod", "--lang", "en"]
    wiki = demo.cli("policy", "explain", "--config", config, "--url",
                    "https://wiki.localhost/", *home)
    assert wiki.returncode == 0, wiki.stdout + wiki.stderr
    assert "Guardrail beta-prime/internet/http: allowed" in wiki.stdout
    docs = demo.cli("policy", "explain", "--config", config, "--url",
                    "https://docs.localhost/", *home)
    assert docs.returncode == 1, docs.stdout + docs.stderr
    assert "Decision: denied — the segment guardrail denied" in docs.stdout
    assert "  - source-ip-denied: " in docs.stdout
    assert ('✗ source_ip: [127.0.0.0/8, "::1/128"] → not matched [source-ip-denied]'
            in docs.stdout)


def test_demo_admin_reaches_the_console_in_japanese(demo: Demo, chromium: Browser) -> None:
    """`make run` as the README says: sato signs in, registers a passkey, proves it when the
    console asks, and manages from the dashboard in Japanese; the LGWAN app behind the demo's
    connector opens from the office (loopback)."""
    context = chromium.new_context(
        ignore_https_errors=True, locale="ja-JP", viewport={"width": 1100, "height": 900},
        extra_http_headers={"Accept-Language": "ja"})
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("WebAuthn.enable")
        cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
            "hasUserVerification": True, "isUserVerified": True}})
        page.goto(demo.url("wiki", "/.sekisho/admin/"))
        _sign_in(page, "sato", "Toyako-Onsen-2026")
        # Administrators always need a second factor: the first sign-in sets up an app.
        page.wait_for_url("**/.sekisho/mfa/totp/enrol*")
        raw = page.inner_text("code.secret").replace(" ", "")
        secret = base64.b32decode(raw + "=" * (-len(raw) % 8))
        page.fill("#code", totp.totp(secret, time.time()))
        with page.expect_navigation():
            page.click("form button[type=submit]")
        page.wait_for_selector("ol.codes")  # recovery codes, shown once
        _passkey_then_step_up(page, demo, "wiki", "/.sekisho/admin/", "情報政策課 PC")
        assert "ダッシュボード" in page.inner_text("h1")
        page.goto(demo.url("wiki", "/.sekisho/admin/users"))
        assert "tanaka" in page.inner_text("main")
        # Sessions are per host: she signs in again on the app's own host (password + the
        # app's next code: a code once used is refused as a replay).
        page.goto(demo.url("kintai", "/"))
        _sign_in(page, "sato", "Toyako-Onsen-2026")
        page.wait_for_selector("#code")
        page.fill("#code", totp.totp(secret, time.time() + 30))
        with page.expect_navigation():
            page.click("form[action='/.sekisho/mfa/totp'] button")
        page.wait_for_url(demo.url("kintai", "/"))
        assert "佐藤 一郎" in page.inner_text("body")  # the connector-only app, assertion checked
    finally:
        context.close()
