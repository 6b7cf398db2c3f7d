"""`explain`: the same decision as `evaluate` for every input, with a trace that shows why."""

from __future__ import annotations

import json
import random  # noqa: TID251 - a seeded generator for a reproducible property test
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from test_policy_criteria import CASES  # the criteria tables, reused as the property's alphabet

from sekisho.policy import Facts, compile_policy, evaluate, explain
from sekisho.policy.explain import render, show

MakeFacts = Callable[..., Facts]

CITY: dict[str, Any] = {
    "allow": {"and": [{"authenticated": True}, {"group": ["staff", "admins"]},
                      {"or": [{"source_ip": "10.20.0.0/16"}, {"group": "remote-ok"}]}]},
    "deny": {"or": [{"group": "suspended"},
                    {"and": [{"http_path": {"prefix": "/admin"}},
                             {"not": [{"group": "admins"}]}]}]},
}


def _random_block(rng: random.Random, depth: int) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 3)):
        if depth < 3 and rng.random() < 0.3:
            items.append(_random_block(rng, depth + 1))
        else:
            name, argument, _, _ = rng.choice(CASES)
            items.append({name: argument})
    return {rng.choice(("and", "or", "not")): items}


def _random_facts(rng: random.Random, make_facts: MakeFacts) -> Facts:
    overrides: dict[str, Any] = {}
    for _ in range(rng.randint(0, 3)):
        overrides.update(rng.choice(CASES)[2])
    if overrides.get("authenticated") is False or rng.random() < 0.1:
        overrides.update(authenticated=False, user=None)
    return make_facts(**overrides)


def test_explain_agrees_with_evaluate_on_random_policies_and_facts(make_facts: MakeFacts) -> None:
    """Property: decision and reasons are identical, over 3,000 seeded random pairs."""
    rng = random.Random(20261201)
    for _ in range(3000):
        document: dict[str, Any] = {}
        if rng.random() < 0.85:
            document["allow"] = _random_block(rng, 1)
        if rng.random() < 0.5:
            document["deny"] = _random_block(rng, 1)
        policy = compile_policy("random", document)
        facts = _random_facts(rng, make_facts)
        assert explain(facts, policy).decision == evaluate(facts, policy), document


@pytest.mark.parametrize(("name", "argument", "overrides", "expected"), CASES)
def test_explain_agrees_on_every_criterion_row_in_both_blocks(
    make_facts: MakeFacts, name: str, argument: Any, overrides: dict[str, Any], expected: bool
) -> None:
    facts = make_facts(**overrides)
    for document in ({"allow": {"and": [{name: argument}]}},
                     {"deny": {"or": [{name: argument}]}, "allow": {"or": [{"always": True}]}}):
        policy = compile_policy("t", document)
        explanation = explain(facts, policy)
        assert explanation.decision == evaluate(facts, policy)
        block = explanation.allow if "deny" not in document else explanation.deny
        assert block is not None and block.children[0].matched is expected
        assert block.children[0].argument == argument  # as written, not compiled


def test_deny_wins_trace(make_facts: MakeFacts) -> None:
    facts = make_facts(groups={"staff", "suspended"})
    explanation = explain(facts, compile_policy("city", CITY))
    assert explanation.decided_by == "deny"
    assert explanation.decision.allow is False
    assert explanation.decision.reasons == ("group-unauthorized",)
    deny, allow = explanation.deny, explanation.allow
    assert deny is not None and allow is not None
    assert deny.matched and deny.reached
    suspended, admin_path = deny.children
    assert (suspended.path, suspended.kind, suspended.argument) == ("deny.or[0].group", "group",
                                                                    "suspended")
    assert suspended.matched and suspended.reasons == ("group-unauthorized",)
    assert admin_path.reached is False  # `or` stopped at its first match
    # The allow block would have matched, but the engine never looks at it: deny wins.
    assert allow.matched is True and allow.reached is False
    text = "\n".join(render(explanation, "en"))
    assert "the deny block matched (deny wins)" in text
    assert "✓ group: suspended → matched [group-unauthorized]" in text
    assert "✓ and → matched [user-authenticated, group-authorized" in text
    assert "(not reached: does not count)" in text


def test_default_deny_trace(make_facts: MakeFacts) -> None:
    policy = compile_policy("deny-only", {"deny": {"or": [{"group": "suspended"}]}})
    explanation = explain(make_facts(), policy)
    assert explanation.decision == evaluate(make_facts(), policy)
    assert explanation.decided_by == "default-deny"
    assert explanation.decision.reasons == ("default-deny",)
    assert explanation.allow is None and explanation.deny is not None
    assert explanation.deny.matched is False
    ja = "\n".join(render(explanation, "ja"))
    assert "allow ブロックがありません（既定で拒否）" in ja
    assert "default-deny: 許可するルールがないため拒否しました（既定で拒否）" in ja
    assert "  allow（なし）" in ja


def test_allow_block_not_matching_reports_its_first_failure(make_facts: MakeFacts) -> None:
    explanation = explain(make_facts(source_ip="203.0.113.7"), compile_policy("city", CITY))
    assert explanation.decided_by == "allow"
    assert explanation.decision.reasons == ("source-ip-denied", "group-unauthorized")
    assert explanation.allow is not None
    last = explanation.allow.children[2]
    assert [child.matched for child in last.children] == [False, False]


def test_unauthenticated(make_facts: MakeFacts) -> None:
    facts = make_facts(authenticated=False, user=None, groups=set(), email="")
    explanation = explain(facts, compile_policy("city", CITY))
    assert explanation.decision.allow is False
    assert explanation.decision.reasons == ("user-unauthenticated",)
    assert explanation.allow is not None
    first, group, _ = explanation.allow.children
    assert first.kind == "authenticated" and first.matched is False and first.reached
    assert group.reached is False  # `and` stopped at the first failure


def test_not_and_double_negation_polarity(make_facts: MakeFacts) -> None:
    policy = compile_policy("p", {"allow": {"not": [{"not": [{"group": "staff"}]}]},
                                  "deny": {"not": [{"source_ip": "10.0.0.0/8"}]}})
    for facts in (make_facts(), make_facts(groups=set()), make_facts(source_ip="192.0.2.1")):
        assert explain(facts, policy).decision == evaluate(facts, policy)
    explanation = explain(make_facts(source_ip="192.0.2.1"), policy)
    assert explanation.decided_by == "deny"
    assert explanation.decision.reasons == ("source-ip-denied",)


def test_fails_closed_like_evaluate(make_facts: MakeFacts) -> None:
    broken = make_facts(source_ip="10.1.2.3")
    object.__setattr__(broken, "source_ip", "not an address")  # facts of the wrong type
    policy = compile_policy("p", {"allow": {"and": [{"source_ip": "10.0.0.0/8"}]}})
    assert evaluate(broken, policy).reasons == ("policy-error",)
    explanation = explain(broken, policy)
    assert explanation.decision == evaluate(broken, policy)
    assert explanation.decided_by == "policy-error"


def test_an_error_in_a_criterion_the_engine_skips_does_not_change_the_decision(
    make_facts: MakeFacts,
) -> None:
    broken = make_facts()
    object.__setattr__(broken, "source_ip", "not an address")
    policy = compile_policy("p", {"allow": {"or": [{"group": "staff"},
                                                   {"source_ip": "10.0.0.0/8"}]}})
    explanation = explain(broken, policy)
    assert explanation.decision == evaluate(broken, policy)
    assert explanation.decision.allow is True
    assert explanation.allow is not None and explanation.allow.children[1].error is True


def test_to_dict_is_json_with_arguments_as_written(make_facts: MakeFacts) -> None:
    policy = compile_policy("t", {"allow": {"and": [
        {"time": {"dates": {"from": date(2025, 4, 1)}}}, {"group": ["staff"]}]}})
    data = explain(make_facts(), policy).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["allow"] is True and data["decided_by"] == "allow"
    children = data["trace"]["allow"]["children"]
    assert children[0]["argument"] == {"dates": {"from": "2025-04-01"}}
    assert children[1] == {"path": "allow.and[1].group", "kind": "group", "matched": True,
                           "reasons": ["group-authorized"], "reached": True,
                           "argument": ["staff"]}


@pytest.mark.parametrize(("value", "text"), [
    (True, "true"), (["staff", "admins"], "[staff, admins]"),
    ({"prefix": "/admin"}, "{prefix: /admin}"), ("a b", '"a b"'),
    (date(2026, 11, 3), "2026-11-03"),
    (["10.0.0.0/8", "2001:db8::/32"], '[10.0.0.0/8, "2001:db8::/32"]'),
])
def test_show_renders_arguments_like_yaml(value: Any, text: str) -> None:
    assert show(value) == text


def test_render_refuses_an_unknown_language(make_facts: MakeFacts) -> None:
    explanation = explain(make_facts(), compile_policy("city", CITY))
    with pytest.raises(ValueError, match="language"):
        render(explanation, "fr")
