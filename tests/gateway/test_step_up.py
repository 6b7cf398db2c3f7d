"""Step-up: a signed-in user denied only for a weak or stale proof is sent to prove it again."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from sekisho.audit.events import AccessDecision
from sekisho.config.model import Route

from .conftest import HOST, STAFF, GatewayUnderTest, make_config

STRONG = "strong-token-0123456789abcdef"


def _with_mynumber_route(gw: GatewayUnderTest) -> None:
    base = make_config(gw.upstream.port)
    route = Route(id="juki", host="juki.localhost", path_prefix="/", segment="mynumber",
                  to=f"http://127.0.0.1:{gw.upstream.port}", policy="mynumber")
    policies = {**base.policies, "mynumber": {"allow": {"and": [
        {"group": ["staff"]}, {"mfa": ["webauthn_uv"]}, {"auth_age": "15m"}]}}}
    gw.reconfigure(routes=(*base.routes, route), policies=policies)


def _strong_session(gw: GatewayUnderTest, proved_ago: timedelta) -> None:
    info = gw.sessions.add(STRONG, "alice", {"staff"})
    proved = datetime.now(UTC) - proved_ago
    gw.sessions.sessions[STRONG] = dataclasses.replace(
        info, auth_methods=frozenset({"pwd", "webauthn", "webauthn_uv"}),
        auth_time=proved - timedelta(hours=1), mfa_time=proved)


def test_password_only_session_is_sent_to_step_up_and_back(gw: GatewayUnderTest) -> None:
    _with_mynumber_route(gw)
    status, headers, _ = gw.request("GET", "/records?id=7", host="juki.localhost", token=STAFF)
    assert status == 302
    location = urlsplit(headers["location"])
    assert location.path == "/.sekisho/stepup"
    assert parse_qs(location.query)["rd"] == ["http://juki.localhost/records?id=7"]
    assert not gw.upstream.requests
    denied = [e for e in gw.audit.events if isinstance(e, AccessDecision)][-1]
    assert denied.decision == "deny" and denied.reasons == ("mfa-required",)


def test_stale_second_factor_is_sent_to_step_up(gw: GatewayUnderTest) -> None:
    _with_mynumber_route(gw)
    _strong_session(gw, timedelta(minutes=20))
    status, headers, _ = gw.request("GET", "/", host="juki.localhost", token=STRONG)
    assert status == 302 and "/.sekisho/stepup?" in headers["location"]
    denied = [e for e in gw.audit.events if isinstance(e, AccessDecision)][-1]
    assert denied.reasons == ("auth-too-old",)


def test_fresh_strong_session_is_let_through(gw: GatewayUnderTest) -> None:
    _with_mynumber_route(gw)
    _strong_session(gw, timedelta(minutes=5))
    status, _, _ = gw.request("GET", "/", host="juki.localhost", token=STRONG)
    assert status == 200 and gw.upstream.requests


def test_a_deny_step_up_cannot_cure_is_a_403(gw: GatewayUnderTest) -> None:
    """Wrong group and no second factor: proving a passkey would not help, so no step-up."""
    _with_mynumber_route(gw)
    gw.sessions.add("outsider-token-0123456789ab", "mallory", {"contractors"})
    status, _, body = gw.request("GET", "/", host="juki.localhost",
                                 token="outsider-token-0123456789ab")
    assert status == 403 and b"group-unauthorized" in body


def test_api_clients_get_a_403_not_a_redirect(gw: GatewayUnderTest) -> None:
    _with_mynumber_route(gw)
    status, headers, body = gw.request("GET", "/", host="juki.localhost", token=STAFF,
                                       headers={"Accept": "application/json"})
    assert status == 403 and "location" not in headers and b"mfa-required" in body


def test_staff_route_unaffected(gw: GatewayUnderTest) -> None:
    _with_mynumber_route(gw)
    assert gw.request("GET", "/", host=HOST, token=STAFF)[0] == 200


def test_configured_holidays_reach_the_time_criterion(gw: GatewayUnderTest) -> None:
    """`holidays:` from the configuration becomes Facts.holidays: a route closed on holidays
    is closed today when today is one, and open otherwise."""
    base = make_config(gw.upstream.port)
    today = datetime.now(UTC).astimezone(ZoneInfo("Asia/Tokyo")).date()
    closed = {"allow": {"and": [{"group": ["staff"]},
                                {"time": {"hours": "00:00-24:00", "holidays": "exclude"}}]}}
    gw.reconfigure(policies={**base.policies, "staff": closed}, holidays=frozenset({today}))
    status, _, body = gw.request("GET", "/", host=HOST, token=STAFF)
    assert status == 403 and b"time-denied" in body
    gw.reconfigure(policies={**base.policies, "staff": closed},
                   holidays=frozenset({today - timedelta(days=1)}))
    assert gw.request("GET", "/", host=HOST, token=STAFF)[0] == 200
