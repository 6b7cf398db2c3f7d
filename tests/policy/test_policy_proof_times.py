"""Per-method proof times: `mfa: {methods, within}`, the β′ マイナンバー guardrail and the admin
console's built-in policy against "a passkey hours ago + a TOTP a minute ago"."""

from __future__ import annotations

import random  # noqa: TID251 - a seeded generator for a reproducible property test
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_policy_criteria import CASES

from sekisho.config.admin import ADMIN_ROUTE, default_policy
from sekisho.config.model import AdminSettings
from sekisho.gateway.pep import Verdict, step_up_cures, with_fresh_proof
from sekisho.policy import Facts, PolicyError, compile_policy, evaluate, explain, guard
from sekisho.policy.guardrails import Networks, guardrail_for

MakeFacts = Callable[..., Facts]
NETWORKS = Networks(office=("10.20.0.0/16",), mynumber_terminals=("10.99.1.0/24",))
TERMINAL = "10.99.1.7"
MANAGED = {"device_id": "dev-1", "device_enrolled": True, "device_user": "tanaka",
           "device_profile": "managed"}
PASSKEY_15M = {"mfa": {"methods": ["webauthn", "webauthn_uv"], "within": "15m"}}


def _session(make_facts: MakeFacts, **ages: float) -> dict[str, Any]:
    """Facts fields of a session whose methods were proven `ages` seconds ago each."""
    now: datetime = make_facts().now
    proofs = {name: now - timedelta(seconds=age) for name, age in ages.items()}
    return {"auth_methods": frozenset(proofs), "auth_time": max(proofs.values()),
            "proofs": proofs}


# The attack: signed in with a passkey two hours ago, then a (phishable) TOTP a minute ago.
ATTACK = {"pwd": 7200, "webauthn": 7200, "webauthn_uv": 7200, "totp": 60}


def _mynumber() -> Any:
    return guard(guardrail_for("beta-prime", "mynumber", "http", NETWORKS).compile(),
                 compile_policy("staff", {"allow": {"and": [{"group": "staff"}]}}))


def _admin() -> Any:
    settings = AdminSettings(roles=(("superadmin", ("admins",)), ("helpdesk", ()),
                                    ("auditor", ())))
    return guard(guardrail_for("beta-prime", "internet", "http", NETWORKS).compile(),
                 compile_policy("admin:default", default_policy(settings)))


def _cures(facts: Facts, policy: Any) -> frozenset[str]:
    from sekisho.identity.principal import SessionInfo

    now = facts.now
    session = SessionInfo("0" * 64, 1, "tanaka", "Tanaka", "", facts.groups,
                          facts.auth_methods, now, now, now + timedelta(hours=1))
    return step_up_cures(Verdict(evaluate(facts, policy), session, 403, facts), policy)


def test_the_attack_is_denied_on_mynumber_and_a_passkey_step_up_cures_it(
        make_facts: MakeFacts) -> None:
    policy = _mynumber()
    facts = make_facts(segment="mynumber", source_ip=TERMINAL, **MANAGED,
                       **_session(make_facts, **ATTACK))
    # Before per-method times this passed: `mfa: [webauthn_uv]` AND `auth_age: 15m`.
    legacy = compile_policy("legacy", {"allow": {"and": [{"mfa": ["webauthn_uv"]},
                                                         {"auth_age": "15m"}]}})
    assert evaluate(facts, legacy).allow is True
    decision = evaluate(facts, policy)
    assert decision.allow is False and decision.reasons == ("auth-too-old",)
    assert explain(facts, policy).decision == decision
    assert _cures(facts, policy) == {"passkey"}  # a TOTP step-up would loop
    assert evaluate(with_fresh_proof(facts, frozenset({"totp"})), policy).allow is False
    assert evaluate(with_fresh_proof(facts, frozenset({"webauthn", "webauthn_uv"})),
                    policy).allow is True


def test_the_attack_is_denied_on_the_admin_console_and_asks_for_a_passkey(
        make_facts: MakeFacts) -> None:
    policy = _admin()
    base = {"groups": frozenset({"admins"}), "route": ADMIN_ROUTE.id, "source_ip": "10.20.1.1"}
    attack = make_facts(**base, **_session(make_facts, **ATTACK))
    decision = evaluate(attack, policy)
    assert decision == explain(attack, policy).decision
    assert decision.allow is False and decision.reasons == ("auth-too-old",)
    assert _cures(attack, policy) == {"passkey"}
    fresh = make_facts(**base, **_session(make_facts, pwd=7200, webauthn=600))
    assert evaluate(fresh, policy).allow is True
    never = make_facts(**base, **_session(make_facts, pwd=60, totp=60))
    assert evaluate(never, policy).reasons == ("mfa-required",)
    assert _cures(never, policy) == {"passkey"}


@pytest.mark.parametrize(("ages", "allowed", "reasons"), [
    ({"pwd": 60, "webauthn_uv": 60}, True, ("user-authenticated", "source-ip-allowed",
                                            "device-authorized", "mfa-satisfied", "auth-fresh")),
    ({"pwd": 3600, "webauthn_uv": 900}, True, None),  # exactly 15 minutes: still fresh
    ({"pwd": 3600, "webauthn_uv": 901}, False, ("auth-too-old",)),
    ({"pwd": 60, "webauthn": 60}, False, ("mfa-required",)),  # no user verification
    ({"pwd": 60, "totp": 60}, False, ("mfa-required",)),
    ({"pwd": 60}, False, ("mfa-required",)),
], ids=["fresh", "15m", "15m+1s", "no-uv", "totp", "password"])
def test_the_mynumber_guardrail_reads_the_passkeys_own_time(
        make_facts: MakeFacts, ages: dict[str, float], allowed: bool,
        reasons: tuple[str, ...] | None) -> None:
    rail = guardrail_for("beta-prime", "mynumber", "http", NETWORKS).compile()
    facts = make_facts(segment="mynumber", source_ip=TERMINAL, **MANAGED,
                       **_session(make_facts, **ages))
    decision = evaluate(facts, rail)
    assert decision == explain(facts, rail).decision
    assert decision.allow is allowed
    if reasons is not None:
        assert decision.reasons == reasons


def test_methods_without_a_known_time_never_pass_the_timed_form(make_facts: MakeFacts) -> None:
    """A session that lists a passkey but carries no time for it (a row that could not be
    read back) is refused: fail closed, and a step-up records the time."""
    policy = compile_policy("t", {"allow": {"and": [PASSKEY_15M]}})
    facts = make_facts(auth_methods=frozenset({"pwd", "webauthn"}), auth_time=make_facts().now)
    assert evaluate(facts, policy).reasons == ("mfa-required",)
    anonymous = make_facts(authenticated=False, user=None, **_session(make_facts, webauthn=1))
    assert evaluate(anonymous, policy).allow is False


def test_timed_form_defaults_to_any_second_factor_and_reports_in_deny_blocks(
        make_facts: MakeFacts) -> None:
    timed = {"mfa": {"within": "5m"}}
    allow = compile_policy("a", {"allow": {"and": [timed]}})
    assert evaluate(make_facts(**_session(make_facts, pwd=9, totp=299)), allow).allow is True
    assert evaluate(make_facts(**_session(make_facts, pwd=9, totp=301)), allow).reasons == (
        "auth-too-old",)
    deny = compile_policy("d", {"deny": {"or": [timed]}, "allow": {"or": [{"always": True}]}})
    for ages in ({"pwd": 9, "totp": 1}, {"pwd": 9, "totp": 999}, {"pwd": 9}):
        facts = make_facts(**_session(make_facts, **ages))
        assert explain(facts, deny).decision == evaluate(facts, deny)


@pytest.mark.parametrize(("argument", "where", "fragment"), [
    ({"methods": ["webauthn_uv"]}, (), "within"),
    ({"within": "15m", "max_age": 1}, ("max_age",), "unknown key"),
    ({"methods": ["pwd"], "within": "15m"}, ("methods", 0), "unknown second factor"),
    ({"methods": [], "within": "15m"}, ("methods",), "empty list"),
    ({"methods": False, "within": "15m"}, ("methods",), "boolean"),
    ({"methods": "totp", "within": "0m"}, ("within",), "longer than zero"),
    ({"methods": "totp", "within": "soon"}, ("within",), "duration"),
])
def test_timed_form_errors_name_the_field(argument: dict[str, Any], where: tuple[Any, ...],
                                          fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy("p", {"allow": {"and": [{"mfa": argument}]}})
    assert caught.value.path == ("allow", "and", 0, "mfa", *where)
    assert fragment in caught.value.message
    assert caught.value.message_ja


# Rows in the shape of test_policy_criteria.CASES (conftest's `now` is 2025-04-01 00:30 UTC).
TIMED: list[tuple[str, Any, dict[str, Any], bool]] = [
    ("mfa", PASSKEY_15M["mfa"], {"proofs": {"webauthn": datetime(2025, 4, 1, 0, 20,
                                                                 tzinfo=UTC)}}, True),
    ("mfa", {"methods": "totp", "within": 60}, {"proofs": {}}, False),
    ("mfa", {"within": "1h"}, {"proofs": {"totp": datetime(2025, 4, 1, tzinfo=UTC)}}, True),
    ("mfa", {"within": "10m"}, {"proofs": {"totp": datetime(2025, 4, 1, tzinfo=UTC)}}, False),
]


def test_explain_agrees_with_evaluate_with_timed_factors(make_facts: MakeFacts) -> None:
    """The explain ≡ evaluate property, with the timed form in the alphabet (3,000 pairs)."""
    alphabet = CASES + TIMED
    rng = random.Random(20261126)

    def block(depth: int) -> dict[str, Any]:
        items: list[dict[str, Any]] = []
        for _ in range(rng.randint(1, 4)):
            if depth < 3 and rng.random() < 0.3:
                items.append(block(depth + 1))
            else:
                name, argument, _, _ = rng.choice(alphabet)
                items.append({name: argument})
        return {rng.choice(("and", "or", "not")): items}

    for _ in range(3000):
        document: dict[str, Any] = {}
        if rng.random() < 0.85:
            document["allow"] = block(1)
        if rng.random() < 0.5:
            document["deny"] = block(1)
        policy = compile_policy("random", document)
        overrides: dict[str, Any] = {}
        for _ in range(rng.randint(0, 3)):
            overrides.update(rng.choice(alphabet)[2])
        if rng.random() < 0.1:
            overrides.update(authenticated=False, user=None)
        facts = make_facts(**overrides)
        assert explain(facts, policy).decision == evaluate(facts, policy), document
