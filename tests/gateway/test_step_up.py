"""Step-up: a signed-in user denied only for a weak or stale proof is sent to prove it again."""

from __future__ import annotations

import dataclasses
import ipaddress
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from sekisho.audit.events import AccessDecision
from sekisho.config.model import Networks, Route
from sekisho.gateway.pep import Verdict, step_up_cures
from sekisho.identity.principal import SessionInfo
from sekisho.policy import Facts, compile_policy, evaluate

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


def test_only_a_passkey_cures_so_the_step_up_page_is_told(gw: GatewayUnderTest) -> None:
    """`mfa: [webauthn_uv]`: a TOTP step-up would end in 403 again (a loop), so the gateway
    says `need=passkey` and the page offers passkeys only."""
    _with_mynumber_route(gw)
    status, headers, _ = gw.request("GET", "/", host="juki.localhost", token=STAFF)
    assert status == 302
    assert parse_qs(urlsplit(headers["location"]).query)["need"] == ["passkey"]


def test_only_totp_cures(gw: GatewayUnderTest) -> None:
    base = make_config(gw.upstream.port)
    policies = {**base.policies, "staff": {"allow": {"and": [
        {"group": ["staff"]}, {"mfa": ["totp"]}]}}}
    gw.reconfigure(policies=policies)
    status, headers, _ = gw.request("GET", "/", host=HOST, token=STAFF)
    assert status == 302
    assert parse_qs(urlsplit(headers["location"]).query)["need"] == ["totp"]


def test_a_remote_user_without_mfa_is_sent_to_step_up_by_the_internet_guardrail(
        gw: GatewayUnderTest) -> None:
    """β′ internet guardrail `or: [office networks, mfa]` names both `source-ip-denied` and
    `mfa-required` to a remote user: a step-up lets them in, so a redirect, not a 403 (and
    any second factor does, so no `need`)."""
    gw.reconfigure(profile="beta-prime",
                   networks=Networks(office=(ipaddress.ip_network("10.0.0.0/8"),)))
    status, headers, _ = gw.request("GET", "/", host=HOST, token=STAFF)
    assert status == 302, headers
    location = urlsplit(headers["location"])
    assert location.path == "/.sekisho/stepup" and "need" not in parse_qs(location.query)
    denied = [e for e in gw.audit.events if isinstance(e, AccessDecision)][-1]
    assert {"source-ip-denied", "mfa-required"} <= set(denied.reasons)
    # From the office network the same session needs no step-up at all.
    gw.reconfigure(profile="beta-prime",
                   networks=Networks(office=(ipaddress.ip_network("127.0.0.0/8"),)))
    assert gw.request("GET", "/", host=HOST, token=STAFF)[0] == 200


def test_step_up_cures_asks_the_pdp_not_the_reason_codes() -> None:
    """The table behind the redirect: which step-ups would make the PDP allow."""
    facts = Facts(authenticated=True, user="alice", email="", groups=frozenset({"staff"}),
                  source_ip=ipaddress.ip_address("203.0.113.5"), method="GET", path="/",
                  host=HOST, route="r", segment="internet", now=datetime.now(UTC),
                  auth_methods=frozenset({"pwd"}), auth_time=datetime.now(UTC))
    now = datetime.now(UTC)
    session = SessionInfo("ab" * 32, 1, "alice", "Alice", "", frozenset({"staff"}),
                          frozenset({"pwd"}), now, now, now)

    def cures(document: dict[str, object], **changes: object) -> frozenset[str]:
        policy = compile_policy("p", document)
        decision = evaluate(facts, policy)
        assert not decision.allow
        verdict = Verdict(decision, session, facts=facts)
        return step_up_cures(dataclasses.replace(verdict, **changes), policy)

    both = frozenset({"totp", "passkey"})
    assert cures({"allow": {"and": [{"mfa": True}]}}) == both
    assert cures({"allow": {"and": [{"mfa": ["webauthn_uv"]}]}}) == {"passkey"}
    assert cures({"allow": {"and": [{"mfa": ["totp"]}]}}) == {"totp"}
    # `and` names only its first failure: mfa-required to a non-admin. No step-up helps.
    assert cures({"allow": {"and": [{"mfa": True}, {"group": ["admins"]}]}}) == frozenset()
    assert cures({"allow": {"or": [{"source_ip": ["10.0.0.0/8"]}, {"mfa": True}]}}) == both
    assert cures({"allow": {"and": [{"group": ["admins"]}]}}) == frozenset()
    assert cures({"allow": {"and": [{"mfa": True}]}}, session=None) == frozenset()
    assert cures({"allow": {"and": [{"mfa": True}]}}, deny_status=503) == frozenset()
    assert cures({"allow": {"and": [{"mfa": True}]}}, facts=None) == frozenset()
