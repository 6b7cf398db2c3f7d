"""Headless Chromium against the real gateway: TOTP, passkeys (CDP virtual authenticator),
passwordless sign-in and step-up. Each step waits for a navigation or a selector; no sleeps.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any

from browser_support import Gateway, shot
from playwright.sync_api import BrowserContext, Page

from sekisho.identity import totp

PASSWORD = "Kaigan-Shiokaze-77"  # tests/integration/harness.py


def _totp_now(secret: bytes) -> str:
    # One step ahead (inside the ±1 window): never the step the enrolment just used.
    return totp.totp(secret, time.time() + 30)


def _password(page: Page, gateway: Gateway, user: str, name: str = "") -> None:
    page.goto(gateway.url("/"))
    page.wait_for_selector("#username")
    if name:
        shot(page, name, doc=name)
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("form[action='/.sekisho/signin'] button[type=submit]")


def _enrol_totp(page: Page, gateway: Gateway, user: str, prefix: str) -> bytes:
    _password(page, gateway, user, "signin" if prefix == "totp" else "")
    page.wait_for_url(re.compile(r"/\.sekisho/mfa/totp/enrol"))
    shot(page, f"{prefix}-enrol", doc="totp-enrol" if prefix == "totp" else "")
    raw = page.inner_text("code.secret").replace(" ", "")
    secret = base64.b32decode(raw + "=" * (-len(raw) % 8))
    page.fill("#code", totp.totp(secret, time.time()))
    with page.expect_navigation():
        page.click("form button[type=submit]")
    page.wait_for_selector("ol.codes")
    shot(page, f"{prefix}-recovery-codes")
    with page.expect_navigation():
        page.click("a.button")
    _on_app(page, gateway, "/")
    return secret


def _on_app(page: Page, gateway: Gateway, path: str) -> None:
    page.wait_for_url(gateway.url(path) + "*")
    assert f'"path": "{path}"' in page.content() or f'"path":"{path}"' in page.content()


def _sign_out(page: Page, gateway: Gateway, name: str) -> None:
    page.goto(gateway.url("/.sekisho/signout"))
    with page.expect_navigation():
        page.click("form button[type=submit]")
    shot(page, name)


def _authenticator(context: BrowserContext, page: Page) -> Any:
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True}})
    return cdp


def test_totp_enrolment_and_sign_in(gateway: Gateway, page: Page) -> None:
    secret = _enrol_totp(page, gateway, "tanaka", "totp")
    shot(page, "totp-app")
    _sign_out(page, gateway, "totp-signed-out")
    _password(page, gateway, "tanaka")
    page.wait_for_url(re.compile(r"/\.sekisho/mfa$"))
    shot(page, "totp-mfa-choice", doc="mfa-choice")
    page.fill("#code", _totp_now(secret))
    with page.expect_navigation():
        page.click("form[action='/.sekisho/mfa/totp'] button")
    _on_app(page, gateway, "/")

    # My security page: in Japanese; the only factor of a required user cannot be removed,
    # and renewed recovery codes are shown once.
    page.goto(gateway.url("/.sekisho/security"))
    page.wait_for_selector("#codes-left")
    assert page.locator("html").get_attribute("lang") == "ja"
    assert "セキュリティ設定" in page.inner_text("h1")
    assert page.locator("#last-factor").count() == 1
    assert page.locator("#remove-totp").count() == 0
    shot(page, "security", doc="security")
    with page.expect_navigation():
        page.click("#renew-codes")
    page.wait_for_selector("ol.codes")
    assert page.locator("ol.codes li").count() == 10
    with page.expect_navigation():
        page.click("a.button")
    page.wait_for_selector("#codes-left")
    assert "10" in page.inner_text("#codes-left")


def test_passkey_registration_second_factor_passwordless_and_step_up(
        gateway: Gateway, context: BrowserContext, page: Page) -> None:
    _authenticator(context, page)
    secret = _enrol_totp(page, gateway, "sato", "passkey")  # a fresh proof: may add one
    page.goto(gateway.url("/.sekisho/passkeys"))
    page.wait_for_selector("#passkey-start")
    page.fill("#passkey-name", "Work laptop")
    shot(page, "passkey-register", doc="passkey-register")
    with page.expect_navigation():
        page.click("#passkey-start")
    page.wait_for_selector("table.passkeys")
    assert page.input_value("table.passkeys input[name=name]") == "Work laptop"
    shot(page, "passkey-registered", doc="passkey-list")

    # Second factor: password, then the passkey chosen on the MFA page.
    _sign_out(page, gateway, "passkey-signed-out")
    _password(page, gateway, "sato")
    page.wait_for_url(re.compile(r"/\.sekisho/mfa$"))
    shot(page, "passkey-mfa-choice")
    with page.expect_navigation():
        page.click("a[href='/.sekisho/passkeys/verify']")
    page.wait_for_selector("#passkey-start")
    shot(page, "passkey-verify", doc="passkey-verify")
    with page.expect_navigation():
        page.click("#passkey-start")
    _on_app(page, gateway, "/")

    # Passwordless: the sign-in page's passkey button, a discoverable credential, UV.
    _sign_out(page, gateway, "passkey-signed-out-2")
    page.goto(gateway.url("/.sekisho/signin"))
    with page.expect_navigation():
        page.click("p.passkey a.button")
    page.wait_for_selector("#passkey-start")
    shot(page, "passwordless", doc="passwordless")
    with page.expect_navigation():
        page.click("#passkey-start")
    page.wait_for_url(gateway.url("/") + "*")

    # A fresh passwordless session (passkey with UV) opens the マイナンバー route directly.
    page.goto(gateway.url("/juki/records"))
    _on_app(page, gateway, "/juki/records")

    # An old session: the route wants a proof at most 3 s old. Once it has aged, the gateway
    # sends the user to step up; the passkey proves it again and the user is back.
    page.goto(gateway.url("/kokuho/"))
    _on_app(page, gateway, "/kokuho/")
    time.sleep(3.5)  # let the proof age past the route's auth_age (a clock, not a wait-for)
    page.goto(gateway.url("/kokuho/cases"))
    page.wait_for_url(re.compile(r"/\.sekisho/stepup\?rd="))
    with page.expect_navigation():
        page.click("form[action='/.sekisho/stepup'] button")
    page.wait_for_url(re.compile(r"/\.sekisho/mfa$"))
    with page.expect_navigation():
        page.click("a[href='/.sekisho/passkeys/verify']")
    page.wait_for_selector("#passkey-start")
    with page.expect_navigation():
        page.click("#passkey-start")
    _on_app(page, gateway, "/kokuho/cases")

    # Step-up: password + TOTP is not enough for that route. The gateway sends the user to
    # step up; the passkey is proven, the session gets a new id, and the user is back.
    _sign_out(page, gateway, "passkey-signed-out-3")
    _password(page, gateway, "sato")
    page.wait_for_url(re.compile(r"/\.sekisho/mfa$"))
    page.fill("#code", _totp_now(secret))
    with page.expect_navigation():
        page.click("form[action='/.sekisho/mfa/totp'] button")
    _on_app(page, gateway, "/")
    before = _session_cookie(context)
    page.goto(gateway.url("/juki/records?id=7"))
    page.wait_for_url(re.compile(r"/\.sekisho/stepup\?rd="))
    shot(page, "stepup", doc="stepup")
    with page.expect_navigation():
        page.click("form[action='/.sekisho/stepup'] button")
    # Only a passkey cures this route: the choice page offers no TOTP form (a TOTP step-up
    # would end in the same denial).
    page.wait_for_url(re.compile(r"/\.sekisho/mfa\?need=passkey$"))
    assert page.locator("form[action='/.sekisho/mfa/totp']").count() == 0
    with page.expect_navigation():
        page.click("a[href='/.sekisho/passkeys/verify']")
    page.wait_for_selector("#passkey-start")
    with page.expect_navigation():
        page.click("#passkey-start")
    _on_app(page, gateway, "/juki/records?id=7")
    shot(page, "stepup-done")
    after = _session_cookie(context)
    assert before and after and before != after


def _session_cookie(context: BrowserContext) -> str:
    return next((c["value"] for c in context.cookies() if c["name"] == "__Host-sekisho"), "")
