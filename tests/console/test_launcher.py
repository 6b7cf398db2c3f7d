"""The launcher's classification, as tables: what is listed, with which mark, and what not.

Each case is a policy, the user's facts and whether a device could be presented at all; the
expected access is "open", "step-up", "device" or None (not listed). The traps are the cases
where a denial's reason codes look curable but the step would not let the user in.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sekisho.config.model import Route
from sekisho.console.launcher import (
    Assessment,
    DeviceCure,
    after_step_up,
    assess,
    grouped,
    launcher,
    with_device,
)
from sekisho.policy import Decision, Facts, compile_policy

NOW = datetime(2026, 6, 1, 1, 0, tzinfo=UTC)  # 10:00 in Tokyo, a Monday
ISSUER = "CN=Sekisho Device CA,O=Example City"
CURE = DeviceCure("managed", ISSUER)


def _facts(**changes: Any) -> Facts:
    base = Facts(
        authenticated=True, user="tanaka", email="tanaka@city.example.jp",
        groups=frozenset({"staff"}), source_ip=ipaddress.ip_address("203.0.113.5"),
        method="GET", path="/", host="app.localhost", route="app", segment="internet",
        now=NOW, auth_methods=frozenset({"pwd"}), auth_time=NOW - timedelta(hours=2))
    return replace(base, **changes)


STAFF = {"allow": {"and": [{"authenticated": True}, {"group": ["staff"]}]}}
ADMINS = {"allow": {"and": [{"group": ["admins"]}]}}
FRESH_MFA = {"allow": {"and": [{"group": ["staff"]}, {"mfa": True}, {"auth_age": "15m"}]}}
PASSKEY = {"allow": {"and": [{"group": ["staff"]}, {"mfa": ["webauthn_uv"]}]}}
# `and` reports its first failing item: mfa-required, though the user is no admin.
MFA_THEN_ADMINS = {"allow": {"and": [{"mfa": True}, {"group": ["admins"]}]}}
DEVICE = {"allow": {"and": [{"group": ["staff"]}, {"device": {"enrolled": True}}]}}
MANAGED = {"allow": {"and": [{"group": ["staff"]}, {"device": {"profile": "managed"}}]}}
BYOD_ONLY = {"allow": {"and": [{"group": ["staff"]}, {"device": {"profile": "byod"}}]}}
DEVICE_AND_MFA = {"allow": {"and": [{"mfa": True}, {"device": {"enrolled": True}},
                                    {"group": ["staff"]}]}}
DEVICE_THEN_ADMINS = {"allow": {"and": [{"device": {"enrolled": True}},
                                        {"group": ["admins"]}]}}
ONE_DEVICE = {"allow": {"and": [{"group": ["staff"]}, {"device": {"id": "dev-0001"}}]}}
CERT_ISSUER = {"allow": {"and": [{"group": ["staff"]},
                                 {"client_certificate": {"issuer": ISSUER}}]}}
CERT_SAN = {"allow": {"and": [{"group": ["staff"]}, {"client_certificate": {
    "issuer": ISSUER, "san": "urn:sekisho:inventory:PC-0042"}}]}}
DENY_WITHOUT_DEVICE = {"deny": {"not": [{"device": {"enrolled": True}}]},
                       "allow": {"and": [{"group": ["staff"]}]}}
OFFICE = {"allow": {"and": [{"group": ["staff"]}, {"source_ip": ["10.0.0.0/8"]}]}}
OFFICE_AND_MFA = {"allow": {"and": [{"mfa": True}, {"source_ip": ["10.0.0.0/8"]}]}}
# A guardrail's shape: both codes are named to a remote user, yet a step-up lets them in.
OFFICE_OR_MFA = {"allow": {"and": [{"authenticated": True}, {"or": [
    {"source_ip": ["10.0.0.0/8"]}, {"mfa": True}]}]}}
WEEKDAY_NIGHT = {"allow": {"and": [{"group": ["staff"]}, {"time": {"hours": "22:00-23:00"}}]}}
NEVER = {"deny": {"and": [{"always": True}]}}
NO_ALLOW = {"deny": {"and": [{"group": ["contractors"]}]}}

SIGNED_IN = _facts()
STEPPED = _facts(auth_methods=frozenset({"pwd", "totp"}), auth_time=NOW - timedelta(minutes=1))
SATO = _facts(user="sato", groups=frozenset({"staff", "admins"}))
ENROLLED = _facts(device_id="dev-0001", device_enrolled=True, device_user="tanaka",
                  device_profile="managed", client_certificate_issuer=ISSUER,
                  client_certificate_sans=frozenset({"urn:sekisho:inventory:PC-0042"}))

CASES = [
    # (id, policy, facts, device cure, expected access)
    ("staff-open", STAFF, SIGNED_IN, CURE, "open"),
    ("admins-hidden", ADMINS, SIGNED_IN, CURE, None),
    ("admins-open-for-admin", ADMINS, SATO, CURE, "open"),
    ("fresh-mfa-step-up", FRESH_MFA, SIGNED_IN, CURE, "step-up"),
    ("fresh-mfa-open-after-totp", FRESH_MFA, STEPPED, CURE, "open"),
    ("too-old-step-up", FRESH_MFA, replace(STEPPED, auth_time=NOW - timedelta(hours=1)), CURE,
     "step-up"),
    ("passkey-step-up", PASSKEY, STEPPED, CURE, "step-up"),
    ("mfa-code-but-not-admin-hidden", MFA_THEN_ADMINS, SIGNED_IN, CURE, None),
    ("mfa-code-admin-step-up", MFA_THEN_ADMINS, SATO, CURE, "step-up"),
    ("device", DEVICE, SIGNED_IN, CURE, "device"),
    ("device-certificates-off-hidden", DEVICE, SIGNED_IN, None, None),
    ("device-open-when-enrolled", DEVICE, ENROLLED, CURE, "open"),
    ("managed-device", MANAGED, SIGNED_IN, CURE, "device"),
    ("managed-device-quarantined-own-device", MANAGED,
     replace(ENROLLED, device_profile="quarantine"), CURE, "device"),
    ("byod-profile-not-what-enrolment-gives", BYOD_ONLY, SIGNED_IN, CURE, None),
    ("device-and-mfa", DEVICE_AND_MFA, SIGNED_IN, CURE, "device"),
    ("device-code-but-not-admin-hidden", DEVICE_THEN_ADMINS, SIGNED_IN, CURE, None),
    ("one-named-device-hidden", ONE_DEVICE, SIGNED_IN, CURE, None),
    ("one-named-device-is-mine", ONE_DEVICE, replace(ENROLLED, device_enrolled=False,
                                                     device_user="", device_profile="",
                                                     client_certificate_issuer=""),
     CURE, "device"),
    ("certificate-issuer", CERT_ISSUER, SIGNED_IN, CURE, "device"),
    ("certificate-issuer-unknown-ca-hidden", CERT_ISSUER, SIGNED_IN, DeviceCure("managed"),
     None),
    ("certificate-one-san-hidden", CERT_SAN, SIGNED_IN, CURE, None),
    ("certificate-san-open", CERT_SAN, ENROLLED, CURE, "open"),
    ("deny-without-device", DENY_WITHOUT_DEVICE, SIGNED_IN, CURE, "device"),
    ("office-only-hidden", OFFICE, SIGNED_IN, CURE, None),
    ("mfa-code-but-outside-office-hidden", OFFICE_AND_MFA, SIGNED_IN, CURE, None),
    ("office-open-inside", OFFICE, replace(SIGNED_IN, source_ip=ipaddress.ip_address(
        "10.1.2.3")), CURE, "open"),
    ("office-or-mfa-remote-step-up", OFFICE_OR_MFA, SIGNED_IN, CURE, "step-up"),
    ("office-or-mfa-inside-open", OFFICE_OR_MFA, replace(SIGNED_IN, source_ip=ipaddress.
                                                         ip_address("10.9.9.9")), CURE, "open"),
    ("wrong-time-hidden", WEEKDAY_NIGHT, SIGNED_IN, CURE, None),
    ("deny-always-hidden", NEVER, SIGNED_IN, CURE, None),
    ("default-deny-hidden", NO_ALLOW, SIGNED_IN, CURE, None),
]


def _route(route_id: str = "app", segment: str = "internet", title: str = "") -> Route:
    return Route(id=route_id, host=f"{route_id}.localhost", path_prefix="/",
                 to="http://127.0.0.1:9", segment=segment,  # type: ignore[arg-type]
                 policy=route_id, title=title)


@pytest.mark.parametrize(("policy", "facts", "cure", "expected"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_classification(policy: dict[str, Any], facts: Facts, cure: DeviceCure | None,
                        expected: str | None) -> None:
    assessment = assess(_route(), facts, compile_policy("p", policy), cure)
    assert assessment.access == expected
    if expected == "open":
        assert assessment.decision.allow
    else:
        assert not assessment.decision.allow


@pytest.mark.parametrize(("policy", "facts", "expected"), [
    (FRESH_MFA, SIGNED_IN, True), (DEVICE, SIGNED_IN, False), (DEVICE_AND_MFA, SIGNED_IN, True),
    (DEVICE_AND_MFA, STEPPED, False), (STAFF, SIGNED_IN, False)])
def test_whether_the_cure_includes_a_step_up(policy: dict[str, Any], facts: Facts,
                                             expected: bool) -> None:
    assert assess(_route(), facts, compile_policy("p", policy), CURE).needs_step_up is expected


def test_missing_policy_is_not_listed() -> None:
    assessment = assess(_route(), SIGNED_IN, None, CURE)
    assert assessment.access is None
    assert assessment.decision == Decision(False, ("policy-error",))


def test_a_policy_error_is_not_listed() -> None:
    # Facts of the wrong type make a criterion raise: the PDP fails closed, so does the list.
    broken = replace(SIGNED_IN, groups=None)  # type: ignore[arg-type]
    assert assess(_route(), broken, compile_policy("p", STAFF), CURE).access is None


def test_the_cures_add_only_what_the_step_gives() -> None:
    stepped = after_step_up(SIGNED_IN)
    assert {"pwd", "totp", "webauthn", "webauthn_uv"} <= stepped.auth_methods
    assert stepped.auth_time == NOW and stepped.groups == SIGNED_IN.groups
    device = with_device(SIGNED_IN, CURE)
    assert (device.device_enrolled, device.device_user, device.device_profile) == (
        True, "tanaka", "managed")
    assert device.client_certificate_issuer == ISSUER
    assert device.client_certificate_sans == frozenset()  # a named device stays named
    assert with_device(ENROLLED, CURE).device_id == "dev-0001"


def test_launcher_and_grouping() -> None:
    routes = [_route("wiki", "internet", "庁内Wiki"), _route("mail", "internet", "メール"),
              _route("juki", "mynumber", "住民記録"), _route("docs", "lgwan", "文書管理"),
              _route("finance", "lgwan", "財務会計"), _route("adm", "internet", "Admin")]
    policies = {"wiki": STAFF, "mail": STAFF, "juki": FRESH_MFA, "docs": DEVICE,
                "finance": ADMINS, "adm": MFA_THEN_ADMINS}
    compiled = {name: compile_policy(name, doc) for name, doc in policies.items()}
    seen: list[str] = []

    def facts_for(route: Route) -> Facts:
        seen.append(route.id)
        return replace(SIGNED_IN, route=route.id, segment=route.segment, host=route.host)

    result = launcher(routes, facts_for, lambda r: compiled.get(r.policy), CURE)
    assert seen == [r.id for r in routes]  # every route decided, in configuration order
    groups = grouped(result)
    assert [g.segment for g in groups] == ["internet", "lgwan", "mynumber"]
    listing = [[(a.route.id, a.access) for a in g.apps] for g in groups]
    assert listing == [[("mail", "open"), ("wiki", "open")], [("docs", "device")],
                       [("juki", "step-up")]]


def test_an_empty_segment_is_left_out() -> None:
    only = [Assessment(_route("x", "lgwan"), Decision(True, ("always",)), "open"),
            Assessment(_route("y", "internet"), Decision(False, ("x",)), None)]
    assert [g.segment for g in grouped(only)] == ["lgwan"]


GUARDED = """\
server: {listen: ["127.0.0.1:8443"], data_dir: "/tmp/sekisho-launcher-test"}
tls: {self_signed: true}
mfa: {office_networks: ["10.0.0.0/8"]}
networks: {office: ["10.0.0.0/8"], mynumber_terminals: ["127.0.0.1/32"]}
policies:
  staff: {allow: {and: [{group: [staff]}]}}
routes:
  - {id: wiki, from: "https://wiki.localhost/", to: "http://127.0.0.1:9", policy: staff,
     segment: internet}
  - {id: docs, from: "https://docs.localhost/", to: "http://127.0.0.1:9", policy: staff,
     segment: lgwan}
  - {id: juki, from: "https://juki.localhost/", to: "http://127.0.0.1:9", policy: staff,
     segment: mynumber}
"""


def test_the_segment_guardrails_decide_too() -> None:
    """Through `Runtime.policy_for`, as the portal calls it: under β′ a remote browser may
    step up for the internet app, never reaches the LGWAN one over HTTP, and the My Number
    one needs the designated terminal, a managed device and a passkey."""
    from sekisho.config.loader import parse_config
    from sekisho.runtime import build_runtime

    runtime = build_runtime(parse_config(GUARDED))

    def access(ip: str, cure: DeviceCure | None = CURE) -> dict[str, tuple[str | None, bool]]:
        def facts_for(route: Route) -> Facts:
            return replace(SIGNED_IN, route=route.id, segment=route.segment, host=route.host,
                           source_ip=ipaddress.ip_address(ip))
        return {a.route.id: (a.access, a.needs_step_up)
                for a in launcher(runtime.config.routes, facts_for, runtime.policy_for, cure)}

    assert access("203.0.113.5") == {"wiki": ("step-up", True), "docs": (None, False),
                                     "juki": (None, False)}
    assert access("10.1.2.3") == {"wiki": ("open", False), "docs": ("open", False),
                                  "juki": (None, False)}
    assert access("127.0.0.1") == {"wiki": ("step-up", True), "docs": (None, False),
                                   "juki": ("device", True)}
    # Client certificates off: no device can be shown, so the My Number app is not listed.
    assert access("127.0.0.1", None)["juki"] == (None, False)
