"""Unit tables for every criterion: a single-criterion allow policy, pass and fail cases."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest

from sekisho.policy import CRITERIA, Facts, compile_policy, evaluate

MakeFacts = Callable[..., Facts]

_ISSUER = "CN=Sekisho Device CA,O=City"
# Facts of a request from tanaka's enrolled device, as the gateway fills them under mTLS.
_DEVICE: dict[str, Any] = {
    "device_id": "dev-1", "device_enrolled": True, "device_user": "tanaka",
    "client_certificate_issuer": _ISSUER,
    "client_certificate_sans": frozenset({"urn:sekisho:device:dev-1",
                                          "urn:sekisho:inventory:PC-0042"}),
}

# (criterion, argument, fact overrides, expected match)
CASES: list[tuple[str, Any, dict[str, Any], bool]] = [
    ("always", True, {}, True),
    ("mfa", True, {"auth_methods": frozenset({"pwd", "totp"})}, True),
    ("mfa", True, {"auth_methods": frozenset({"pwd"})}, False),
    ("mfa", "webauthn_uv", {"auth_methods": frozenset({"pwd", "webauthn"})}, False),
    ("mfa", True, {"authenticated": False, "auth_methods": frozenset({"totp"})}, False),
    ("auth_age", "15m", {"auth_time": datetime(2025, 4, 1, 0, 20, tzinfo=UTC)}, True),
    ("auth_age", "15m", {"auth_time": datetime(2025, 4, 1, 0, 10, tzinfo=UTC)}, False),
    ("auth_age", 60, {}, False),  # no proof time known
    ("idp", "entra", {"idp": "entra"}, True),
    ("idp", "local", {}, True),
    ("idp", "entra", {"authenticated": False, "idp": "entra"}, False),
    ("segment", "internet", {}, True),
    ("segment", ["lgwan", "mynumber"], {}, False),
    ("segment", ["lgwan", "mynumber"], {"segment": "mynumber"}, True),
    ("segment", "lgwan", {"authenticated": False, "user": None}, False),
    # The default facts' time, 2025-04-01 00:30 UTC, is Tuesday 09:30 in Tokyo.
    ("time", {"weekdays": ["tue"], "hours": "09:00-10:00"}, {}, True),
    ("time", {"weekdays": ["mon"]}, {}, False),
    ("time", {"hours": "08:30-09:30"}, {}, False),
    ("time", {"dates": {"from": date(2025, 4, 1)}, "holidays": "exclude"},
     {"holidays": frozenset({date(2025, 4, 1)})}, False),
    ("always", True, {"authenticated": False, "user": None}, True),
    ("never", True, {}, False),
    ("authenticated", True, {}, True),
    ("authenticated", True, {"authenticated": False, "user": None, "groups": set()}, False),
    ("user", "tanaka", {}, True),
    ("user", ["sato", "tanaka"], {}, True),
    ("user", ["sato"], {}, False),
    ("user", "Tanaka", {}, False),  # user names are exact
    ("user", "tanaka", {"authenticated": False}, False),  # unverified identity never counts
    ("user", "tanaka", {"user": None}, False),
    ("group", "staff", {}, True),
    ("group", ["admins", "staff"], {}, True),
    ("group", ["admins"], {}, False),
    ("group", "staff", {"groups": set()}, False),
    ("group", "staff", {"groups": {"admins", "staff", "x"}}, True),
    ("group", "Staff", {}, False),
    ("group", "staff", {"authenticated": False}, False),
    ("email", "tanaka@city.example.lg.jp", {}, True),
    ("email", "TANAKA@City.Example.LG.JP", {}, True),
    ("email", "tanaka@city.example.lg.jp", {"email": "Tanaka@CITY.example.lg.jp"}, True),
    ("email", ["sato@city.example.lg.jp"], {}, False),
    ("email", "tanaka@city.example.lg.jp", {"email": ""}, False),
    ("email", "tanaka@city.example.lg.jp", {"authenticated": False}, False),
    ("email_domain", "city.example.lg.jp", {}, True),
    ("email_domain", ["other.example.jp", "CITY.example.lg.jp"], {}, True),
    ("email_domain", "city.example.lg.jp", {"email": "a@CITY.EXAMPLE.LG.JP"}, True),
    ("email_domain", "city.example.lg.jp", {"email": "a@evil-city.example.lg.jp"}, False),
    ("email_domain", "city.example.lg.jp", {"email": "a@sub.city.example.lg.jp"}, False),
    ("email_domain", "example.lg.jp", {}, False),  # no implicit subdomains
    ("email_domain", "city.example.lg.jp", {"email": "a@evil.example@city.example.lg.jp"}, False),
    ("email_domain", "city.example.lg.jp", {"email": "city.example.lg.jp"}, False),
    ("email_domain", "city.example.lg.jp", {"email": "@city.example.lg.jp"}, False),
    ("email_domain", "city.example.lg.jp", {"email": ""}, False),
    ("email_domain", "city.example.lg.jp", {"email": "a@city.example.lg.jp@"}, False),
    ("email_domain", "city.example.lg.jp", {"authenticated": False}, False),
    ("source_ip", "10.0.0.0/8", {}, True),
    ("source_ip", "10.20.30.40", {}, True),
    ("source_ip", "10.20.30.40/32", {"source_ip": "10.20.30.41"}, False),
    ("source_ip", ["192.0.2.0/24", "10.20.0.0/16"], {}, True),
    ("source_ip", ["192.0.2.0/24"], {}, False),
    ("source_ip", "192.0.2.0/24", {"source_ip": "192.0.2.0"}, True),
    ("source_ip", "192.0.2.0/24", {"source_ip": "192.0.2.255"}, True),
    ("source_ip", "192.0.2.0/24", {"source_ip": "192.0.3.0"}, False),
    ("source_ip", "192.0.2.0/24", {"source_ip": "192.0.1.255"}, False),
    ("source_ip", "0.0.0.0/0", {"source_ip": "203.0.113.9"}, True),
    ("source_ip", "0.0.0.0/0", {"source_ip": "2001:db8::1"}, False),
    ("source_ip", "2001:db8::/32", {"source_ip": "2001:db8:1::5"}, True),
    ("source_ip", "2001:db8::/32", {"source_ip": "2001:db9::5"}, False),
    ("source_ip", "2001:db8::/32", {}, False),
    ("source_ip", "::/0", {"source_ip": "::1"}, True),
    ("source_ip", "::1", {"source_ip": "::1"}, True),
    # IPv4-mapped IPv6 is the IPv4 address it carries, in facts and in rules.
    ("source_ip", "10.0.0.0/8", {"source_ip": "::ffff:10.1.2.3"}, True),
    ("source_ip", "192.0.2.0/24", {"source_ip": "::ffff:10.1.2.3"}, False),
    ("source_ip", "::ffff:10.0.0.0/104", {"source_ip": "10.9.9.9"}, True),
    ("source_ip", "::ffff:10.0.0.0/104", {"source_ip": "11.9.9.9"}, False),
    ("source_ip", "::/0", {"source_ip": "::ffff:10.1.2.3"}, False),
    # Overlapping and adjacent ranges are merged without losing coverage.
    ("source_ip", ["10.0.0.0/9", "10.128.0.0/9", "10.5.0.0/16"], {"source_ip": "10.200.0.1"}, True),
    ("source_ip", ["10.0.0.0/9", "10.128.0.0/9"], {"source_ip": "11.0.0.0"}, False),
    ("source_ip", ["10.0.0.0/8", "172.16.0.0/12"], {"source_ip": "172.31.255.255"}, True),
    ("source_ip", ["10.0.0.0/8", "172.16.0.0/12"], {"source_ip": "172.32.0.0"}, False),
    ("http_method", "GET", {}, True),
    ("http_method", "get", {}, True),
    ("http_method", ["POST", "PUT"], {}, False),
    ("http_method", ["POST", "put"], {"method": "PUT"}, True),
    ("http_method", "GET", {"method": "get"}, True),
    ("http_path", {"prefix": "/admin"}, {"path": "/admin"}, True),
    ("http_path", {"prefix": "/admin"}, {"path": "/admin/"}, True),
    ("http_path", {"prefix": "/admin"}, {"path": "/admin/users/1"}, True),
    ("http_path", {"prefix": "/admin"}, {"path": "/administrator"}, False),
    ("http_path", {"prefix": "/admin"}, {"path": "/admin.php"}, False),
    ("http_path", {"prefix": "/admin"}, {"path": "/Admin"}, False),
    ("http_path", {"prefix": "/admin"}, {"path": "/"}, False),
    ("http_path", {"prefix": "/admin/"}, {"path": "/admin"}, True),
    ("http_path", {"prefix": "/admin/"}, {"path": "/admin/x"}, True),
    ("http_path", {"prefix": "/admin/"}, {"path": "/adminx"}, False),
    ("http_path", {"prefix": "/"}, {"path": "/anything/at/all"}, True),
    ("http_path", {"prefix": "/"}, {"path": "/"}, True),
    ("http_path", {"exact": "/healthz"}, {"path": "/healthz"}, True),
    ("http_path", {"exact": "/healthz"}, {"path": "/healthz/"}, False),
    ("http_path", {"exact": "/healthz"}, {"path": "/healthz/x"}, False),
    ("http_path", [{"exact": "/a"}, {"prefix": "/b/c"}], {"path": "/b/c/d"}, True),
    ("http_path", [{"exact": "/a"}, {"prefix": "/b/c"}], {"path": "/b"}, False),
    ("http_path", [{"exact": "/a"}, {"prefix": "/b/c"}], {"path": "/a"}, True),
    ("http_path", {"prefix": "/文書"}, {"path": "/文書/一覧"}, True),
    ("device", {"enrolled": True}, _DEVICE, True),
    ("device", {"enrolled": True}, {}, False),  # no device certificate
    ("device", {"enrolled": True}, {**_DEVICE, "device_enrolled": False}, False),  # revoked
    ("device", {"id": ["dev-1", "dev-2"]}, _DEVICE, True),
    ("device", {"id": "dev-2"}, _DEVICE, False),
    ("device", {"enrolled": True, "id": "dev-1"}, {**_DEVICE, "device_enrolled": False}, False),
    # A device certificate of user A never vouches for a session of user B.
    ("device", {"enrolled": True}, {**_DEVICE, "device_user": "sato"}, False),
    ("device", {"enrolled": True}, {**_DEVICE, "authenticated": False, "user": None}, True),
    ("device", {"enrolled": True}, {**_DEVICE, "device_user": ""}, True),
    # Posture profiles: a byod device is not managed; list every profile you accept.
    ("device", {"profile": "managed"}, {**_DEVICE, "device_profile": "managed"}, True),
    ("device", {"profile": "managed"}, {**_DEVICE, "device_profile": "byod"}, False),
    ("device", {"profile": ["managed", "byod"]}, {**_DEVICE, "device_profile": "byod"}, True),
    ("device", {"profile": "byod"}, {**_DEVICE, "device_profile": "managed"}, False),
    ("device", {"profile": "managed"}, {**_DEVICE, "device_profile": "quarantine"}, False),
    ("device", {"profile": "managed"}, {**_DEVICE, "device_profile": ""}, False),
    # A profile alone still needs an enrolled device (a revoked one carries no profile).
    ("device", {"profile": "managed"}, {**_DEVICE, "device_enrolled": False,
                                        "device_profile": "managed"}, False),
    ("device", {"enrolled": True, "profile": ["managed"], "id": "dev-1"},
     {**_DEVICE, "device_profile": "managed", "device_user": "sato"}, False),
    ("client_certificate", {"issuer": _ISSUER}, _DEVICE, True),
    ("client_certificate", {"issuer": "CN=Other CA"}, _DEVICE, False),
    ("client_certificate", {"san": ["urn:sekisho:inventory:PC-0042"]}, _DEVICE, True),
    ("client_certificate", {"san": "urn:sekisho:inventory:PC-004"}, _DEVICE, False),
    ("client_certificate", {"issuer": _ISSUER, "san": "urn:sekisho:device:dev-1"}, _DEVICE, True),
    ("client_certificate", {"issuer": _ISSUER, "san": "urn:x"}, _DEVICE, False),
    ("client_certificate", {"issuer": _ISSUER}, {}, False),  # no certificate
]


@pytest.mark.parametrize(("name", "argument", "overrides", "expected"), CASES)
def test_criterion_table(
    make_facts: MakeFacts, name: str, argument: Any, overrides: dict[str, Any], expected: bool
) -> None:
    criterion = CRITERIA[name]
    policy = compile_policy("t", {"allow": {"and": [{name: argument}]}})
    decision = evaluate(make_facts(**overrides), policy)
    assert decision.allow is expected
    expected_reason = criterion.passed_reason if expected else criterion.failed_reason
    assert decision.reasons == (expected_reason,)


@pytest.mark.parametrize(("name", "argument", "overrides", "expected"), CASES)
def test_criterion_table_in_deny(
    make_facts: MakeFacts, name: str, argument: Any, overrides: dict[str, Any], expected: bool
) -> None:
    """The same table in a deny block: a match denies and reports the criterion's fail code."""
    criterion = CRITERIA[name]
    policy = compile_policy(
        "t", {"deny": {"or": [{name: argument}]}, "allow": {"or": [{"always": True}]}}
    )
    decision = evaluate(make_facts(**overrides), policy)
    assert decision.allow is not expected
    assert decision.reasons == ((criterion.failed_reason,) if expected else ("always",))


def test_every_criterion_has_a_table_row() -> None:
    assert {case[0] for case in CASES} == set(CRITERIA)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_criterion_metadata(name: str) -> None:
    criterion = CRITERIA[name]
    assert criterion.name == name
    assert criterion.summary_ja and criterion.summary_en


def test_a_managed_only_policy_denies_a_byod_device(make_facts: MakeFacts) -> None:
    policy = compile_policy("t", {"allow": {"and": [{"user": "tanaka"},
                                                    {"device": {"profile": "managed"}}]}})
    byod = evaluate(make_facts(**_DEVICE, device_profile="byod"), policy)
    assert not byod.allow and "device-unauthorized" in byod.reasons
    managed = evaluate(make_facts(**_DEVICE, device_profile="managed"), policy)
    assert managed.allow and "device-authorized" in managed.reasons
