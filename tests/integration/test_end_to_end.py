"""The whole path, as a staff member and an administrator live it: real processes only."""

from __future__ import annotations

import json
import signal
import time
from urllib.parse import quote

from joserfc import jwt
from joserfc.jwk import KeySet

from .harness import EchoUpstream, GatewayProcess


def test_sign_in_reach_allowed_route_and_be_denied_on_another(
    gateway: GatewayProcess, upstream: EchoUpstream
) -> None:
    browser = gateway.browser()
    first = browser.get("wiki.localhost", "/manual/index.html?q=1")
    assert first.status == 302
    original = quote("https://wiki.localhost/manual/index.html?q=1", safe="")
    assert first.header("Location") == "https://wiki.localhost/.sekisho/signin?rd=" + original

    signed_in = browser.signin("wiki.localhost", "tanaka", rd="/manual/index.html?q=1")
    assert signed_in.status == 303, signed_in.body[:300]
    assert signed_in.header("Location") in ("/manual/index.html?q=1",
                                            "https://wiki.localhost/manual/index.html?q=1")
    cookie = next(v for k, v in signed_in.headers if k.lower() == "set-cookie"
                  and v.startswith("__Host-sekisho="))
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in cookie

    page = browser.get("wiki.localhost", "/manual/index.html?q=1")
    assert page.status == 200
    seen = page.json()
    assert seen["path"] == "/manual/index.html?q=1"
    names = [name for name, _ in seen["headers"]]  # type: ignore[union-attr]
    assert "x-sekisho-assertion" in names
    # The upstream never sees the gateway's session token.
    assert all("__Host-sekisho" not in value for _, value in seen["headers"])  # type: ignore[union-attr]

    denied = browser.get("finance.localhost", "/")
    # A separate host has its own session: not signed in there yet.
    assert denied.status == 302
    browser.signin("finance.localhost", "tanaka")
    denied = browser.get("finance.localhost", "/", headers={"Accept-Language": "ja"})
    assert denied.status == 403
    assert b"group-unauthorized" in denied.body


def test_assertion_verifies_against_the_published_jwks(
    gateway: GatewayProcess, upstream: EchoUpstream
) -> None:
    browser = gateway.browser()
    browser.signin("wiki.localhost", "tanaka")
    seen = browser.get("wiki.localhost", "/").json()
    token = dict(seen["headers"])["x-sekisho-assertion"]  # type: ignore[arg-type]
    jwks = json.loads(browser.get("wiki.localhost", "/.well-known/sekisho/jwks.json").body)
    assert all("d" not in key for key in jwks["keys"])
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    claims = decoded.claims
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": "https://sekisho.test"},
        aud={"essential": True, "value": "wiki"},
        exp={"essential": True},
    ).validate(claims)
    assert claims["sub"] == "tanaka"
    assert claims["email"] == "tanaka@city.example.jp"
    assert "staff" in claims["groups"]
    assert 0 < claims["exp"] - claims["iat"] <= 60
    assert claims["jti"]


def test_revoked_session_is_refused_on_the_next_request(gateway: GatewayProcess) -> None:
    browser = gateway.browser()
    browser.signin("wiki.localhost", "tanaka")
    assert browser.get("wiki.localhost", "/").status == 200
    listing = gateway.cli("session", "list", "--json")
    sessions = json.loads(listing.stdout)
    assert any(s["user"] == "tanaka" for s in sessions), sessions
    gateway.cli("session", "revoke", "--user", "tanaka")
    assert browser.get("wiki.localhost", "/").status == 302


def test_sign_out_ends_the_session_on_the_server(sqlite_gateway: GatewayProcess) -> None:
    browser = sqlite_gateway.browser()
    browser.signin("wiki.localhost", "tanaka")
    stolen = dict(browser.cookies_for("wiki.localhost"))
    page = browser.get("wiki.localhost", "/.sekisho/signout")
    import re

    token = re.search(rb'name="csrf" value="([^"]+)"', page.body)
    assert token
    out = browser.request("POST", "wiki.localhost", "/.sekisho/signout",
                          body=b"csrf=" + token.group(1))
    assert out.status in (200, 303)
    assert "__Host-sekisho" not in browser.cookies_for("wiki.localhost")
    # The old cookie, replayed, is worthless: the server ended the session.
    thief = sqlite_gateway.browser()
    thief.cookies_for("wiki.localhost").update(stolen)
    assert thief.get("wiki.localhost", "/").status == 302


def test_every_decision_and_sign_in_is_in_the_verified_audit_trail(
    sqlite_gateway: GatewayProcess,
) -> None:
    browser = sqlite_gateway.browser()
    browser.signin("wiki.localhost", "tanaka")
    browser.get("wiki.localhost", "/a")
    browser.get("finance.localhost", "/")
    assert sqlite_gateway.stop() == 0  # graceful: the writer flushes everything
    assert sqlite_gateway.cli("audit", "verify").returncode == 0
    exported = sqlite_gateway.cli("audit", "export", "--format", "jsonl").stdout
    events = [json.loads(line)["event"] for line in exported.splitlines() if line.strip()]
    kinds = [event["event_type"] for event in events]
    assert "signin.success" in kinds
    decisions = {(e["route"], e["decision"], e["path"]) for e in events
                 if e["event_type"] == "access.decision"}
    assert ("wiki", "allow", "/a") in decisions
    assert ("finance", "deny", "/") in decisions


def test_sighup_swaps_the_config_and_refuses_a_broken_one(
    sqlite_gateway: GatewayProcess,
) -> None:
    browser = sqlite_gateway.browser()
    browser.signin("wiki.localhost", "tanaka")
    assert browser.get("wiki.localhost", "/").status == 200
    original = sqlite_gateway.config.read_text()

    # A broken file: refused, the old snapshot stays in force.
    sqlite_gateway.config.write_text(original.replace("segment: internet", "segment: nowhere"))
    sqlite_gateway.signal(signal.SIGHUP)
    time.sleep(1.0)
    assert browser.get("wiki.localhost", "/").status == 200
    assert "configuration reload refused" in sqlite_gateway.log.read_text()

    # A valid change: wiki becomes admins-only, and Tanaka is now denied.
    changed = original.replace("    segment: internet\n    policy: staff",
                               "    segment: internet\n    policy: admins")
    assert changed != original
    sqlite_gateway.config.write_text(changed)
    sqlite_gateway.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and browser.get("wiki.localhost", "/").status != 403:
        time.sleep(0.1)
    assert browser.get("wiki.localhost", "/").status == 403
    assert sqlite_gateway.stop() == 0
    exported = sqlite_gateway.cli("audit", "export", "--format", "jsonl").stdout
    kinds = [json.loads(line)["event"]["event_type"] for line in exported.splitlines() if line]
    assert "config.rejected" in kinds and "config.reloaded" in kinds


def test_admin_endpoints_live_only_on_the_admin_listener(sqlite_gateway: GatewayProcess) -> None:
    browser = sqlite_gateway.browser()
    browser.signin("wiki.localhost", "tanaka")
    assert browser.get("wiki.localhost", "/").status == 200
    # The request path's counters reach /metrics within a flush interval (1 s): poll ≤ 3 s.
    deadline = time.monotonic() + 3
    while True:
        status, body = sqlite_gateway.admin_get("/metrics")
        if b'sekisho_requests_total{route="wiki"' in body or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200
    assert b'sekisho_requests_total{route="wiki",status="200"} 1.0' in body
    assert b"sekisho_active_sessions 1.0" in body
    assert b'sekisho_signins_total{result="success"} 1.0' in body
    assert sqlite_gateway.admin_get("/healthz")[0] == 200
    assert sqlite_gateway.admin_get("/readyz")[0] == 200
    stranger = sqlite_gateway.browser()
    for path in ("/metrics", "/healthz", "/readyz"):
        assert stranger.get("wiki.localhost", path).status == 302  # just a route path
        # Signed in, the path goes to the upstream like any other: the gateway keeps nothing there.
        assert b"sekisho_requests_total" not in browser.get("wiki.localhost", path).body


def test_serve_refuses_an_unmigrated_database(tmp_path, upstream: EchoUpstream) -> None:
    import subprocess

    from .harness import SEKISHO

    gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/never-migrated.db", upstream)
    result = subprocess.run([*SEKISHO, "serve", "--config", str(gateway.config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "sekisho db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def test_reload_keeps_live_keep_alive_connections(sqlite_gateway: GatewayProcess) -> None:
    import http.client

    browser = sqlite_gateway.browser()
    browser.signin("wiki.localhost", "tanaka")
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies_for("wiki.localhost").items())
    connection = http.client.HTTPSConnection("127.0.0.1", sqlite_gateway.port,
                                             context=browser.context, timeout=10)
    headers = {"Host": "wiki.localhost", "Cookie": cookie}
    connection.request("GET", "/before", headers=headers)
    assert connection.getresponse().read() and True
    sock = connection.sock
    original = sqlite_gateway.config.read_text()
    sqlite_gateway.config.write_text(original.replace("title: 財務会計", "title: 財務会計システム"))
    sqlite_gateway.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "configuration reloaded" not in sqlite_gateway.log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    connection.request("GET", "/after", headers=headers)
    response = connection.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["path"] == "/after"
    assert connection.sock is sock  # the same TCP connection carried on across the reload
    connection.close()
