"""The second-factor, freshness and IdP criteria: tables over the facts the gateway passes."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sekisho.policy import Facts, PolicyError, compile_policy, evaluate

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def facts(methods: set[str] = frozenset(), age: float | None = 60, idp: str = "",
          authenticated: bool = True) -> Facts:
    return Facts(
        authenticated=authenticated, user="tanaka" if authenticated else None, email="",
        groups=frozenset({"staff"}), source_ip=ipaddress.ip_address("192.0.2.10"),
        method="GET", path="/", host="app.localhost", route="app", segment="mynumber",
        now=NOW, auth_methods=frozenset(methods),
        auth_time=None if age is None else NOW - timedelta(seconds=age), idp=idp)


def decide(criterion: dict[str, Any], f: Facts) -> tuple[bool, tuple[str, ...]]:
    decision = evaluate(f, compile_policy("p", {"allow": {"and": [criterion]}}))
    return decision.allow, decision.reasons


@pytest.mark.parametrize(("argument", "methods", "allowed"), [
    (True, {"pwd", "totp"}, True),
    (True, {"pwd", "webauthn", "webauthn_uv"}, True),
    (True, {"oidc", "idp_mfa"}, True),
    (True, {"pwd"}, False),  # a password alone is never a second factor
    (True, {"oidc"}, False),
    ("webauthn_uv", {"pwd", "totp"}, False),
    ("webauthn_uv", {"pwd", "webauthn"}, False),  # presence without user verification
    ("webauthn_uv", {"pwd", "webauthn", "webauthn_uv"}, True),
    (["totp", "webauthn"], {"pwd", "totp"}, True),
    (["totp", "webauthn"], {"pwd", "recovery"}, False),
])
def test_mfa(argument: Any, methods: set[str], allowed: bool) -> None:
    allow, reasons = decide({"mfa": argument}, facts(methods))
    assert allow is allowed
    assert reasons == (("mfa-satisfied",) if allowed else ("mfa-required",))


def test_mfa_needs_a_signed_in_session() -> None:
    assert decide({"mfa": True}, facts({"totp"}, authenticated=False))[0] is False


@pytest.mark.parametrize(("argument", "age", "allowed"), [
    (900, 60, True), (900, 900, True), (900, 901, False), ("15m", 899, True),
    ("15m", 901, False), ("1h", 3599, True), ("30s", 31, False), (900, None, False),
])
def test_auth_age(argument: Any, age: float | None, allowed: bool) -> None:
    allow, reasons = decide({"auth_age": argument}, facts({"pwd"}, age=age))
    assert allow is allowed
    assert reasons == (("auth-fresh",) if allowed else ("auth-too-old",))


@pytest.mark.parametrize(("argument", "idp", "allowed"), [
    ("entra", "entra", True), ("entra", "google", False), (["local"], "", True),
    (["entra", "local"], "keycloak", False),
])
def test_idp(argument: Any, idp: str, allowed: bool) -> None:
    allow, reasons = decide({"idp": argument}, facts({"oidc"}, idp=idp))
    assert allow is allowed
    assert reasons == (("idp-authorized",) if allowed else ("idp-unauthorized",))


@pytest.mark.parametrize(("criterion", "fragment"), [
    ({"mfa": "sms"}, "unknown second factor 'sms'"),
    ({"mfa": []}, "empty list"),
    ({"mfa": False}, "true or a second-factor method"),
    ({"auth_age": 0}, "longer than zero"),
    ({"auth_age": "15 minutes"}, "duration like '15m'"),
    ({"auth_age": True}, "duration like '15m'"),
    ({"idp": []}, "empty list"),
])
def test_bad_arguments(criterion: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy("p", {"allow": {"and": [criterion]}})
    assert fragment in caught.value.message
