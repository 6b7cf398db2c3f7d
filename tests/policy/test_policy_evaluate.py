"""`evaluate`: deny wins, default deny, nested and/or/not, reasons, fail-closed."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from typing import Any

import pytest

from sekisho.policy import (
    DEFAULT_DENY,
    POLICY_ERROR,
    REASONS,
    Decision,
    Facts,
    compile_policy,
    evaluate,
)

MakeFacts = Callable[..., Facts]

OFFICE = "10.20.0.0/16"

CITY: dict[str, Any] = {
    "allow": {
        "and": [
            {"authenticated": True},
            {"group": ["staff", "admins"]},
            {"or": [{"source_ip": OFFICE}, {"group": "remote-ok"}]},
        ]
    },
    "deny": {
        "or": [
            {"group": "suspended"},
            {"and": [{"http_path": {"prefix": "/admin"}}, {"not": [{"group": "admins"}]}]},
        ]
    },
}

# (fact overrides, allow, reasons)
CITY_TABLE: list[tuple[dict[str, Any], bool, tuple[str, ...]]] = [
    ({}, True, ("user-authenticated", "group-authorized", "source-ip-allowed")),
    (
        {"source_ip": "203.0.113.7", "groups": {"staff", "remote-ok"}},
        True,
        ("user-authenticated", "group-authorized"),
    ),
    (
        {"source_ip": "203.0.113.7"},
        False,
        ("source-ip-denied", "group-unauthorized"),
    ),
    ({"authenticated": False, "user": None, "groups": set()}, False, ("user-unauthenticated",)),
    ({"groups": {"visitors"}}, False, ("group-unauthorized",)),
    # deny wins even though allow would match
    ({"groups": {"staff", "suspended"}}, False, ("group-unauthorized",)),
    ({"path": "/admin/users"}, False, ("http-path-denied", "group-unauthorized")),
    (
        {"path": "/administrator"},
        True,
        ("user-authenticated", "group-authorized", "source-ip-allowed"),
    ),
    (
        {"path": "/admin/users", "groups": {"admins"}},
        True,
        ("user-authenticated", "group-authorized", "source-ip-allowed"),
    ),
]


@pytest.mark.parametrize(("overrides", "allow", "reasons"), CITY_TABLE)
def test_city_policy(
    make_facts: MakeFacts, overrides: dict[str, Any], allow: bool, reasons: tuple[str, ...]
) -> None:
    decision = evaluate(make_facts(**overrides), compile_policy("city", CITY))
    assert decision == Decision(allow, reasons)


def test_deny_wins_over_allow(make_facts: MakeFacts) -> None:
    policy = compile_policy(
        "p", {"allow": {"or": [{"always": True}]}, "deny": {"or": [{"user": "tanaka"}]}}
    )
    assert evaluate(make_facts(), policy) == Decision(False, ("user-unauthorized",))
    assert evaluate(make_facts(user="sato"), policy) == Decision(True, ("always",))


@pytest.mark.parametrize(
    "document",
    [{}, {"deny": {"or": [{"never": True}]}}, {"deny": {"or": [{"group": "nobody"}]}}],
)
def test_default_deny_without_allow(make_facts: MakeFacts, document: dict[str, Any]) -> None:
    assert evaluate(make_facts(), compile_policy("p", document)) == DEFAULT_DENY
    assert DEFAULT_DENY.reasons == ("default-deny",)


def test_never_in_allow_denies(make_facts: MakeFacts) -> None:
    policy = compile_policy("p", {"allow": {"or": [{"never": True}]}})
    assert evaluate(make_facts(), policy) == Decision(False, ("never",))


def test_and_reports_first_failure_only(make_facts: MakeFacts) -> None:
    policy = compile_policy(
        "p", {"allow": {"and": [{"group": "admins"}, {"source_ip": "192.0.2.0/24"}]}}
    )
    facts = make_facts(source_ip="198.51.100.1")
    assert evaluate(facts, policy) == Decision(False, ("group-unauthorized",))


def test_or_reports_all_failures_deduplicated_in_order(make_facts: MakeFacts) -> None:
    policy = compile_policy(
        "p",
        {
            "allow": {
                "or": [
                    {"source_ip": "192.0.2.0/24"},
                    {"group": "admins"},
                    {"source_ip": "198.51.100.0/24"},
                    {"http_method": "POST"},
                ]
            }
        },
    )
    assert evaluate(make_facts(), policy).reasons == (
        "source-ip-denied",
        "group-unauthorized",
        "http-method-denied",
    )


def test_or_reports_first_match(make_facts: MakeFacts) -> None:
    policy = compile_policy(
        "p", {"allow": {"or": [{"group": "admins"}, {"user": "tanaka"}, {"always": True}]}}
    )
    assert evaluate(make_facts(), policy) == Decision(True, ("user-authorized",))


def test_not_is_none_of(make_facts: MakeFacts) -> None:
    policy = compile_policy(
        "p",
        {"allow": {"not": [{"group": "contractors"}, {"source_ip": "203.0.113.0/24"}]}},
    )
    assert evaluate(make_facts(), policy) == Decision(
        True, ("group-authorized", "source-ip-allowed")
    )
    assert evaluate(make_facts(groups={"contractors"}), policy) == Decision(
        False, ("group-unauthorized",)
    )
    assert evaluate(make_facts(source_ip="203.0.113.5"), policy) == Decision(
        False, ("source-ip-denied",)
    )


def test_deny_outside_office_reports_source_ip_denied(make_facts: MakeFacts) -> None:
    policy = compile_policy(
        "p",
        {"allow": {"and": [{"group": "staff"}]}, "deny": {"not": [{"source_ip": OFFICE}]}},
    )
    assert evaluate(make_facts(source_ip="203.0.113.5"), policy) == Decision(
        False, ("source-ip-denied",)
    )
    assert evaluate(make_facts(), policy) == Decision(True, ("group-authorized",))


def test_double_negation_restores_polarity(make_facts: MakeFacts) -> None:
    policy = compile_policy("p", {"allow": {"not": [{"not": [{"group": "staff"}]}]}})
    assert evaluate(make_facts(), policy) == Decision(True, ("group-authorized",))
    assert evaluate(make_facts(groups=set()), policy) == Decision(False, ("group-unauthorized",))


def test_nested_blocks_with_dynamic_reasons(make_facts: MakeFacts) -> None:
    """An `and` over `or` blocks: reasons depend on which branch passed."""
    policy = compile_policy(
        "p",
        {
            "allow": {
                "and": [
                    {"or": [{"group": "admins"}, {"user": "tanaka"}]},
                    {"or": [{"source_ip": OFFICE}, {"email_domain": "city.example.lg.jp"}]},
                ]
            }
        },
    )
    first = evaluate(make_facts(), policy)
    assert first == Decision(True, ("user-authorized", "source-ip-allowed"))
    assert evaluate(make_facts(), policy) is first  # interned: no new objects per request
    assert evaluate(make_facts(source_ip="203.0.113.1"), policy) == Decision(
        True, ("user-authorized", "email-authorized")
    )
    assert evaluate(make_facts(groups={"admins"}, user="sato"), policy) == Decision(
        True, ("group-authorized", "source-ip-allowed")
    )
    assert evaluate(make_facts(user="sato"), policy) == Decision(
        False, ("group-unauthorized", "user-unauthorized")
    )


def test_nested_or_inside_not_with_dynamic_reasons(make_facts: MakeFacts) -> None:
    policy = compile_policy(
        "p",
        {
            "deny": {
                "not": [
                    {"and": [{"group": "staff"}, {"or": [{"source_ip": OFFICE}, {"user": "x"}]}]}
                ]
            },
            "allow": {"or": [{"always": True}]},
        },
    )
    assert evaluate(make_facts(), policy) == Decision(True, ("always",))
    assert evaluate(make_facts(source_ip="203.0.113.1"), policy) == Decision(
        False, ("source-ip-denied", "user-unauthorized")
    )
    assert evaluate(make_facts(groups=set()), policy) == Decision(False, ("group-unauthorized",))


def test_every_reason_produced_is_in_the_closed_list(make_facts: MakeFacts) -> None:
    decisions = [evaluate(make_facts(**o), compile_policy("c", CITY)) for o, _, _ in CITY_TABLE]
    for decision in [*decisions, DEFAULT_DENY, POLICY_ERROR]:
        assert decision.reasons
        assert set(decision.reasons) <= set(REASONS)


@pytest.mark.parametrize(
    "broken",
    [
        {"email": None},  # a gateway bug: wrong type where a string belongs
        {"source_ip": "10.20.30.40"},  # a string, not an ip_address
        {"groups": None},
    ],
)
def test_errors_while_deciding_fail_closed(make_facts: MakeFacts, broken: dict[str, Any]) -> None:
    policy = compile_policy(
        "p",
        {
            "allow": {
                "and": [
                    {"group": "staff"},
                    {"source_ip": OFFICE},
                    {"email_domain": "city.example.lg.jp"},
                ]
            }
        },
    )
    facts = make_facts()
    values = {name: getattr(facts, name) for name in Facts.__slots__}
    values.update(broken)
    assert evaluate(Facts(**values), policy) == POLICY_ERROR


def test_policy_is_shareable_across_threads(make_facts: MakeFacts) -> None:
    policy = compile_policy("city", CITY)
    inputs = [make_facts(**o) for o, _, _ in CITY_TABLE]
    expected = [Decision(a, r) for _, a, r in CITY_TABLE]
    failures: list[int] = []

    def worker() -> None:
        for _ in range(300):
            got = [evaluate(f, policy) for f in inputs]
            if got != expected:
                failures.append(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_mapped_ipv6_cannot_bypass_an_ipv4_deny(make_facts: MakeFacts) -> None:
    policy = compile_policy(
        "p",
        {"allow": {"or": [{"always": True}]}, "deny": {"or": [{"source_ip": "198.51.100.0/24"}]}},
    )
    mapped = ipaddress.ip_address("::ffff:198.51.100.9")
    assert evaluate(make_facts(source_ip=mapped), policy) == Decision(False, ("source-ip-denied",))
