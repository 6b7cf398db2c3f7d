"""Segment guardrails: the table per profile, guard() semantics, explain parity, contradictions."""

from __future__ import annotations

import random  # noqa: TID251 - a seeded generator for a reproducible property test
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_policy_explain import _random_block, _random_facts

from sekisho.policy import Facts, compile_policy, evaluate, explain, guard
from sekisho.policy.explain import render
from sekisho.policy.guardrails import (
    PROFILES,
    RULES,
    SEGMENTS,
    Networks,
    contradictions,
    describe,
    guardrail_for,
    terminal_findings,
)

MakeFacts = Callable[..., Facts]
NETWORKS = Networks(office=("10.20.0.0/16",), mynumber_terminals=("10.99.1.0/24",))
OFFICE, HOME, TERMINAL = "10.20.30.40", "203.0.113.5", "10.99.1.7"
MANAGED = {"device_id": "dev-1", "device_enrolled": True, "device_user": "tanaka",
           "device_profile": "managed"}
BYOD = {**MANAGED, "device_profile": "byod"}
QUARANTINED = {**MANAGED, "device_profile": "quarantine"}
NOW = datetime(2025, 4, 1, 0, 30, tzinfo=UTC)  # conftest's `now`: proven just now
PASSKEY = {"auth_methods": frozenset({"pwd", "webauthn", "webauthn_uv"}), "auth_time": NOW,
           "proofs": {"pwd": NOW, "webauthn": NOW, "webauthn_uv": NOW}}
TOTP = {"auth_methods": frozenset({"pwd", "totp"}), "auth_time": NOW,
        "proofs": {"pwd": NOW, "totp": NOW}}
ANONYMOUS = {"authenticated": False, "user": None, "groups": frozenset()}

# (segment, mode, redirection, facts, allowed, reasons) — the same under every profile
# unless a row below overrides it for that profile.
TABLE: list[tuple[str, str, bool, dict[str, Any], bool, tuple[str, ...]]] = [
    ("internet", "http", False, {"source_ip": OFFICE}, True, ()),
    ("internet", "http", False, {"source_ip": HOME}, False, ("source-ip-denied", "mfa-required")),
    ("internet", "http", False, {"source_ip": HOME, **TOTP}, True, ()),
    ("internet", "http", False, {"source_ip": OFFICE, **ANONYMOUS}, False,
     ("user-unauthenticated",)),
    ("internet", "screen", True, {"source_ip": HOME, **TOTP}, True, ()),
    ("lgwan", "http", False, {"source_ip": OFFICE}, True, ()),
    ("lgwan", "http", False, {"source_ip": HOME, **TOTP, **MANAGED}, False,
     ("source-ip-denied",)),
    ("lgwan", "screen", False, {"source_ip": OFFICE}, True, ()),
    ("lgwan", "screen", False, {"source_ip": HOME, **TOTP, **BYOD}, True, ()),
    ("lgwan", "screen", False, {"source_ip": HOME, **TOTP}, False,
     ("source-ip-denied", "device-unauthorized")),
    ("lgwan", "screen", False, {"source_ip": HOME, **TOTP, **QUARANTINED}, False,
     ("source-ip-denied", "device-unauthorized")),
    ("lgwan", "screen", False, {"source_ip": HOME, **BYOD}, False,
     ("source-ip-denied", "mfa-required")),
    ("mynumber", "http", False, {"source_ip": TERMINAL, **PASSKEY, **MANAGED}, True, ()),
    ("mynumber", "http", False, {"source_ip": TERMINAL, **MANAGED}, False, ("mfa-required",)),
    ("mynumber", "http", False, {"source_ip": TERMINAL, **TOTP, **MANAGED}, False,
     ("mfa-required",)),
    ("mynumber", "http", False, {"source_ip": OFFICE, **PASSKEY, **MANAGED}, False,
     ("source-ip-denied",)),
    ("mynumber", "http", False, {"source_ip": TERMINAL, **PASSKEY, **BYOD}, False,
     ("device-unauthorized",)),
    ("mynumber", "http", False, {"source_ip": TERMINAL, **PASSKEY}, False,
     ("device-unauthorized",)),
    ("mynumber", "http", False, {"source_ip": TERMINAL, **PASSKEY, **MANAGED,
                                 "device_user": "sato"}, False, ("device-unauthorized",)),
    ("mynumber", "screen", False, {"source_ip": TERMINAL, **PASSKEY, **MANAGED}, True, ()),
    ("mynumber", "screen", True, {"source_ip": TERMINAL, **PASSKEY, **MANAGED}, False,
     ("never",)),
]
# α and α′ keep a redirecting LGWAN screen route for the office (their office terminals sit
# in LGWAN); β and β′ close it (theirs sit in the internet segment).
REDIRECTION: list[tuple[str, dict[str, Any], bool, tuple[str, ...]]] = [
    ("alpha", {"source_ip": OFFICE}, True, ()),
    ("alpha-prime", {"source_ip": HOME, **TOTP, **MANAGED}, False, ("source-ip-denied",)),
    ("beta", {"source_ip": OFFICE}, False, ("never",)),
    ("beta-prime", {"source_ip": OFFICE, **TOTP, **MANAGED}, False, ("never",)),
]


def _decide(make_facts: MakeFacts, profile: str, segment: str, mode: str, redirection: bool,
            overrides: dict[str, Any], networks: Networks = NETWORKS) -> tuple[Any, Any]:
    rail = guardrail_for(profile, segment, mode, networks, redirection=redirection)
    policy = rail.compile()
    facts = make_facts(segment=segment, **overrides)
    return evaluate(facts, policy), explain(facts, policy)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("segment", "mode", "redirection", "overrides", "allowed", "reasons"),
                         TABLE)
def test_guardrail_table(make_facts: MakeFacts, profile: str, segment: str, mode: str,
                         redirection: bool, overrides: dict[str, Any], allowed: bool,
                         reasons: tuple[str, ...]) -> None:
    decision, explanation = _decide(make_facts, profile, segment, mode, redirection, overrides)
    assert explanation.decision == decision
    assert decision.allow is allowed
    if not allowed:
        assert decision.reasons == reasons


@pytest.mark.parametrize(("profile", "overrides", "allowed", "reasons"), REDIRECTION)
def test_redirecting_lgwan_screen_route_by_profile(
        make_facts: MakeFacts, profile: str, overrides: dict[str, Any], allowed: bool,
        reasons: tuple[str, ...]) -> None:
    decision, _ = _decide(make_facts, profile, "lgwan", "screen", True, overrides)
    assert decision.allow is allowed
    if not allowed:
        assert decision.reasons == reasons


def test_mynumber_proof_must_be_fresh(make_facts: MakeFacts) -> None:
    facts = make_facts(source_ip=TERMINAL, segment="mynumber", **PASSKEY, **MANAGED)
    policy = guardrail_for("beta-prime", "mynumber", "http", NETWORKS).compile()
    def proven(age: timedelta) -> Facts:
        when = facts.now - age
        return make_facts(**{**_fields(facts), "auth_time": when,
                             "proofs": {m: when for m in facts.auth_methods}})

    assert evaluate(proven(timedelta(minutes=15)), policy).allow is True
    assert evaluate(proven(timedelta(minutes=16)), policy).reasons == ("auth-too-old",)


def _fields(facts: Facts) -> dict[str, Any]:
    return {name: getattr(facts, name) for name in Facts.__dataclass_fields__}


@pytest.mark.parametrize("profile", PROFILES)
def test_a_missing_network_closes_never_opens(make_facts: MakeFacts, profile: str) -> None:
    empty = Networks()
    everything = {"source_ip": TERMINAL, **PASSKEY, **MANAGED}
    for segment, mode in (("mynumber", "http"), ("mynumber", "screen"), ("lgwan", "http")):
        rail = guardrail_for(profile, segment, mode, empty)
        assert rail.closed
        decision, _ = _decide(make_facts, profile, segment, mode, False, everything, empty)
        assert decision.reasons == ("never",)
    # Without office networks nobody is "inside": internet needs MFA, LGWAN screen a device.
    internet, _ = _decide(make_facts, profile, "internet", "http", False,
                          {"source_ip": OFFICE}, empty)
    assert internet.reasons == ("mfa-required",)
    screen, _ = _decide(make_facts, profile, "lgwan", "screen", False,
                        {"source_ip": OFFICE, **TOTP}, empty)
    assert screen.reasons == ("device-unauthorized",)


def test_unknown_names_are_refused() -> None:
    for args in (("gamma", "internet", "http"), ("beta", "dmz", "http"),
                 ("beta", "lgwan", "ssh")):
        with pytest.raises(ValueError):
            guardrail_for(*args, NETWORKS)


def test_guardrail_names_and_describe() -> None:
    rail = guardrail_for("beta-prime", "lgwan", "screen", NETWORKS, redirection=True)
    assert rail.name == "beta-prime/lgwan/screen+redirection"
    lines = describe("beta-prime", NETWORKS)
    assert [segment for segment, _, _ in lines] == list(SEGMENTS)
    mynumber = dict((s, (ja, en)) for s, ja, en in lines)["mynumber"]
    assert "10.99.1.0/24" in mynumber[0] and "webauthn_uv" in mynumber[1]
    assert mynumber[1].endswith("(requirements 1, 4)")


# -- guard(): the guardrail first, then the route's policy ------------------------------

STAFF = {"allow": {"and": [{"authenticated": True}, {"group": ["staff"]}]}}


def test_guardrail_denial_carries_its_own_reasons(make_facts: MakeFacts) -> None:
    rail = guardrail_for("beta-prime", "mynumber", "http", NETWORKS).compile()
    policy = guard(rail, compile_policy("staff", STAFF))
    facts = make_facts(segment="mynumber", source_ip=TERMINAL, **MANAGED)
    decision = evaluate(facts, policy)
    assert decision.allow is False and decision.reasons == ("mfa-required",)  # step-up cures it
    explanation = explain(facts, policy)
    assert explanation.decided_by == "guardrail" and explanation.decision == decision
    assert explanation.guardrail is not None
    assert explanation.guardrail.policy == "beta-prime/mynumber/http"
    assert explanation.allow is not None and explanation.allow.reached is False


def test_a_route_policy_only_narrows(make_facts: MakeFacts) -> None:
    rail = guardrail_for("beta-prime", "mynumber", "http", NETWORKS).compile()
    wide_open = guard(rail, compile_policy("open", {"allow": {"or": [{"always": True}]}}))
    for facts in (make_facts(segment="mynumber", **ANONYMOUS),
                  make_facts(segment="mynumber", source_ip=HOME, **PASSKEY, **MANAGED)):
        assert evaluate(facts, wide_open).allow is False
    narrow = guard(rail, compile_policy("kyuyo", {"allow": {"and": [{"group": "kyuyo"}]}}))
    inside = make_facts(segment="mynumber", source_ip=TERMINAL, **PASSKEY, **MANAGED)
    assert evaluate(inside, wide_open).allow is True
    assert evaluate(inside, narrow).reasons == ("group-unauthorized",)  # the route's own
    denied = guard(rail, compile_policy("deny", {"deny": {"or": [{"group": "staff"}]},
                                                 "allow": {"or": [{"always": True}]}}))
    assert evaluate(inside, denied).reasons == ("group-unauthorized",)
    no_allow = guard(rail, compile_policy("none", {"deny": {"or": [{"never": True}]}}))
    assert evaluate(inside, no_allow).reasons == ("default-deny",)


def test_guard_fails_closed_and_refuses_nesting(make_facts: MakeFacts) -> None:
    rail = guardrail_for("beta-prime", "internet", "http", NETWORKS).compile()
    policy = guard(rail, compile_policy("staff", STAFF))
    broken = make_facts()
    object.__setattr__(broken, "source_ip", "not an address")
    assert evaluate(broken, policy).reasons == ("policy-error",)
    assert explain(broken, policy).decided_by == "policy-error"
    with pytest.raises(ValueError):
        guard(rail, policy)
    with pytest.raises(ValueError):
        guard(policy, compile_policy("staff", STAFF))
    # A guardrail without an allow block lets nothing through.
    closed = guard(compile_policy("g", {"deny": {"or": [{"never": True}]}}),
                   compile_policy("staff", STAFF))
    assert evaluate(make_facts(), closed).reasons == ("default-deny",)
    assert explain(make_facts(), closed).decision == evaluate(make_facts(), closed)


def test_render_shows_the_guardrail_then_the_route_policy(make_facts: MakeFacts) -> None:
    rail = guardrail_for("beta-prime", "lgwan", "http", NETWORKS).compile()
    policy = guard(rail, compile_policy("staff", STAFF))
    text = "\n".join(render(explain(make_facts(segment="lgwan", source_ip=HOME), policy), "en"))
    assert text.splitlines() == [
        "Decision: denied — the segment guardrail denied (the route's policy does not count)",
        "Reasons:",
        "  - source-ip-denied: Access from this source IP address is not permitted",
        "Guardrail beta-prime/lgwan/http: denied — the allow block did not match "
        "(deny by default)",
        "  deny (none)",
        "  allow:",
        "    ✗ and → not matched [source-ip-denied]",
        "      ✓ authenticated: true → matched [user-authenticated]",
        "      ✗ source_ip: [10.20.0.0/16] → not matched [source-ip-denied]",
        "Route policy staff:",
        "  deny (none)",
        "  allow: (not reached: does not count)",
        "    ✓ and → matched [user-authenticated, group-authorized]",
        "      ✓ authenticated: true → matched [user-authenticated]",
        "      ✓ group: [staff] → matched [group-authorized]",
    ]
    data = explain(make_facts(segment="lgwan", source_ip=OFFICE), policy).to_dict()
    assert data["decided_by"] == "allow"
    assert data["guardrail"]["policy"] == "beta-prime/lgwan/http"
    assert data["guardrail"]["allow"] is True


def test_explain_agrees_with_evaluate_under_random_guardrails(make_facts: MakeFacts) -> None:
    """Property: guarded decisions and reasons agree, over 3,000 seeded random triples."""
    rng = random.Random(20261126)
    rails = [guardrail_for(profile, segment, mode, NETWORKS, redirection=redirection).compile()
             for profile in PROFILES for segment in SEGMENTS for mode in ("http", "screen")
             for redirection in (False, True)]
    for _ in range(3000):
        if rng.random() < 0.5:
            rail = rng.choice(rails)
        else:
            document: dict[str, Any] = {}
            if rng.random() < 0.9:
                document["allow"] = _random_block(rng, 1)
            if rng.random() < 0.4:
                document["deny"] = _random_block(rng, 1)
            rail = compile_policy("random-guardrail", document)
        route: dict[str, Any] = {"allow": _random_block(rng, 1)}
        if rng.random() < 0.4:
            route["deny"] = _random_block(rng, 1)
        policy = guard(rail, compile_policy("random", route))
        facts = _random_facts(rng, make_facts)
        if rng.random() < 0.3:
            facts = make_facts(**{**_fields(facts), **rng.choice(
                [MANAGED, BYOD, PASSKEY, {"source_ip": TERMINAL}, {"source_ip": OFFICE}])})
        assert explain(facts, policy).decision == evaluate(facts, policy), route


# -- contradictions: a route trying to open what its guardrail keeps closed ---------------

BROKEN: list[tuple[str, str, str, dict[str, Any], dict[str, bool], str, tuple[Any, ...]]] = [
    ("mynumber-designated-terminals", "mynumber", "http",
     {"allow": {"and": [{"source_ip": ["10.99.1.0/25", "192.0.2.0/24"]}]}}, {},
     "policy", ("allow", "and", 0, "source_ip", 1)),
    ("mynumber-designated-terminals", "mynumber", "http",
     {"allow": {"or": [{"group": "x"}, {"not": [{"not": [{"source_ip": "10.0.0.0/8"}]}]}]}},
     {}, "policy", ("allow", "or", 1, "not", 0, "not", 0, "source_ip")),
    ("mynumber-managed-device", "mynumber", "http",
     {"allow": {"and": [{"device": {"profile": ["managed", "byod"]}}]}}, {},
     "policy", ("allow", "and", 0, "device", "profile")),
    ("mynumber-passkey", "mynumber", "http", {"allow": {"and": [{"mfa": True}]}}, {},
     "policy", ("allow", "and", 0, "mfa")),
    ("mynumber-passkey", "mynumber", "http", {"allow": {"and": [{"mfa": "webauthn"}]}}, {},
     "policy", ("allow", "and", 0, "mfa")),
    ("mynumber-fresh-proof", "mynumber", "http", {"allow": {"and": [{"auth_age": "1h"}]}}, {},
     "policy", ("allow", "and", 0, "auth_age")),
    ("mynumber-fresh-proof", "mynumber", "http",
     {"allow": {"and": [{"mfa": {"methods": "webauthn_uv", "within": "1h"}}]}}, {},
     "policy", ("allow", "and", 0, "mfa", "within")),
    ("mynumber-passkey", "mynumber", "http",
     {"allow": {"and": [{"mfa": {"methods": ["totp", "webauthn_uv"], "within": "5m"}}]}}, {},
     "policy", ("allow", "and", 0, "mfa")),
    ("mynumber-not-public", "mynumber", "http", {"allow": {"or": [{"always": True}]}}, {},
     "policy", ("allow", "or", 0, "always")),
    ("mynumber-no-redirection", "mynumber", "screen", STAFF, {"printing": True},
     "route", ("screen", "printing")),
    ("lgwan-http-internal", "lgwan", "http",
     {"allow": {"and": [{"source_ip": "0.0.0.0/1"}]}}, {}, "policy",
     ("allow", "and", 0, "source_ip")),
    ("lgwan-not-public", "lgwan", "screen", {"allow": {"and": [{"always": True}]}}, {},
     "policy", ("allow", "and", 0, "always")),
    ("lgwan-no-redirection", "lgwan", "screen", STAFF, {"clipboard": True}, "route",
     ("screen", "clipboard")),
]
# The same criteria where they can only narrow: under `not`, in `deny`, or within bounds.
NARROWING: list[tuple[str, str, dict[str, Any], dict[str, bool]]] = [
    ("mynumber", "http", {"allow": {"and": [{"not": [{"source_ip": "192.0.2.0/24"}]}]}}, {}),
    ("mynumber", "http", {"deny": {"or": [{"source_ip": "0.0.0.0/1"}]}}, {}),
    ("mynumber", "http", {"allow": {"and": [{"source_ip": ["10.99.1.0/25", "10.99.1.128/25"]},
                                            {"device": {"profile": "managed"}},
                                            {"mfa": ["webauthn_uv"]}, {"auth_age": "5m"}]}}, {}),
    ("mynumber", "http", {"allow": {"and": [
        {"mfa": {"methods": ["webauthn_uv"], "within": "15m"}}]}}, {}),
    ("mynumber", "http", {"deny": {"not": [{"always": True}]}, **STAFF}, {}),
    ("lgwan", "http", {"allow": {"and": [{"source_ip": "10.20.5.0/24"}]}}, {}),
    ("lgwan", "screen", {"allow": {"and": [{"source_ip": "0.0.0.0/1"}]}}, {}),  # screen: any
    ("lgwan", "http", STAFF, {"clipboard": True}),  # options mean nothing on http routes
    ("internet", "screen", {"allow": {"or": [{"always": True}]}}, {"clipboard": True}),
]


@pytest.mark.parametrize(("rule", "segment", "mode", "document", "screen", "scope", "path"),
                         BROKEN, ids=[f"{row[0]}-{i}" for i, row in enumerate(BROKEN)])
def test_each_rule_catches_a_loosening(rule: str, segment: str, mode: str,
                                       document: dict[str, Any], screen: dict[str, bool],
                                       scope: str, path: tuple[Any, ...]) -> None:
    compile_policy("route", document)  # valid policies: only the guardrail objects
    found = contradictions(profile="beta-prime", segment=segment, mode=mode, screen=screen,
                           document=document, networks=NETWORKS)
    assert [(f.rule, f.scope, f.path) for f in found] == [(rule, scope, path)]
    ja, en = found[0].message("beta-prime", "juki")
    assert ja.startswith(f"ルート 'juki' ({RULES[rule].segment}) の")
    assert f"ガードレール {rule} に反します" in ja and "β′ モデル" in ja
    assert "地方公共団体における情報セキュリティポリシーに関するガイドライン" in ja
    assert en.startswith(f"route 'juki' ({RULES[rule].segment}): ")
    assert f"contradicts guardrail {rule}" in en and "requirement" in en


@pytest.mark.parametrize(("segment", "mode", "document", "screen"), NARROWING)
def test_narrowing_is_not_a_contradiction(segment: str, mode: str, document: dict[str, Any],
                                          screen: dict[str, bool]) -> None:
    compile_policy("route", document)
    assert contradictions(profile="beta-prime", segment=segment, mode=mode, screen=screen,
                          document=document, networks=NETWORKS) == []


def test_redirection_is_a_contradiction_only_where_the_profile_forbids_it() -> None:
    for profile, expected in (("alpha", []), ("alpha-prime", []),
                              ("beta", ["lgwan-no-redirection"]),
                              ("beta-prime", ["lgwan-no-redirection"])):
        found = contradictions(profile=profile, segment="lgwan", mode="screen",
                               screen={"drive": True}, document=STAFF, networks=NETWORKS)
        assert [f.rule for f in found] == expected
        found = contradictions(profile=profile, segment="mynumber", mode="screen",
                               screen={"drive": True}, document=STAFF, networks=NETWORKS)
        assert [f.rule for f in found] == ["mynumber-no-redirection"]


def test_without_designated_terminals_any_source_ip_is_outside() -> None:
    document = {"allow": {"and": [{"source_ip": "10.99.1.7"}]}}
    found = contradictions(profile="alpha", segment="mynumber", mode="http", screen={},
                           document=document, networks=Networks(office=("10.0.0.0/8",)))
    assert [f.rule for f in found] == ["mynumber-designated-terminals"]


def test_designated_terminals_must_be_terminals() -> None:
    networks = Networks(mynumber_terminals=("10.99.1.0/24", "10.0.0.0/15", "2001:db8::/47",
                                            "2001:db8:1::/64", "::ffff:10.0.0.0/104"))
    found = terminal_findings(networks)
    assert [f.path[-1] for f in found] == [1, 2, 4]
    assert {f.rule for f in found} == {"mynumber-terminals-narrow"}
