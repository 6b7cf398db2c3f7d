"""`launch` (the portal's fast path: facts built once, decisions shared between routes) gives
exactly what `launcher` gives with facts built for every route, on a varied configuration
under the β′ guardrails — and a policy that reads the route's own facts is never shared."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sekisho.config.loader import parse_config
from sekisho.config.model import Route
from sekisho.console.launcher import DeviceCure, aimed, launch, launcher, plan, reads_route
from sekisho.policy import Facts, compile_policy
from sekisho.runtime import build_runtime

NOW = datetime(2026, 6, 1, 1, 0, tzinfo=UTC)  # 10:00 in Tokyo, a Monday
CURE = DeviceCure("managed", "CN=Sekisho Device CA")
CONFIG = """\
server: {listen: ["127.0.0.1:8443"], data_dir: "/tmp/sekisho-launcher-plan-test"}
tls: {self_signed: true, client_certificates: optional}
networks: {office: ["10.0.0.0/8"], mynumber_terminals: ["127.0.0.1/32"]}
policies:
  staff: {allow: {and: [{group: [staff]}]}}
  staff-mfa: {allow: {and: [{group: [staff]}, {mfa: true}]}}
  staff-device: {allow: {and: [{group: [staff]}, {device: {enrolled: true}}]}}
  not-lgwan: {allow: {and: [{group: [staff]}]}, deny: {or: [{segment: lgwan}]}}
  reports-only: {allow: {and: [{group: [staff]}, {http_path: [{prefix: /reports/}]}]}}
routes:
"""
ROUTES = [("internet", "staff"), ("internet", "staff-mfa"), ("internet", "staff-device"),
          ("internet", "not-lgwan"), ("lgwan", "not-lgwan"), ("lgwan", "staff"),
          ("mynumber", "staff-device"), ("internet", "reports-only"),
          ("internet", "staff"), ("lgwan", "staff-mfa"), ("internet", "staff-mfa")]


def _config() -> str:
    lines = []
    for n, (segment, policy) in enumerate(ROUTES):
        prefix = "/reports/" if n == 7 else "/"
        lines.append(f'  - {{id: r{n}, from: "https://r{n}.localhost{prefix}", '
                     f'to: "http://127.0.0.1:9", segment: {segment}, policy: {policy}}}\n')
    lines.append('  - {id: own, from: "https://own.localhost/", to: "http://127.0.0.1:9", '
                 "segment: internet, policy: {allow: {and: [{group: [staff]}]}}}\n")
    return CONFIG + "".join(lines)


def _facts(ip: str, **changes: object) -> Facts:
    base = Facts(
        authenticated=True, user="tanaka", email="tanaka@city.example.jp",
        groups=frozenset({"staff"}), source_ip=ipaddress.ip_address(ip), method="GET",
        path="/", host="elsewhere.localhost", route="elsewhere", segment="internet", now=NOW,
        auth_methods=frozenset({"pwd"}), auth_time=NOW - timedelta(hours=1))
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("ip", ["203.0.113.5", "10.1.2.3", "127.0.0.1"])
@pytest.mark.parametrize("cure", [CURE, None])
@pytest.mark.parametrize("changes", [
    {}, {"auth_methods": frozenset({"pwd", "totp"})},
    {"device_id": "dev-1", "device_enrolled": True, "device_user": "tanaka",
     "device_profile": "managed"},
    {"groups": frozenset({"other"})}])
def test_launch_decides_as_launcher(ip: str, cure: DeviceCure | None,
                                    changes: dict[str, object]) -> None:
    runtime = build_runtime(parse_config(_config()))
    facts = _facts(ip, **changes)

    def facts_for(route: Route) -> Facts:
        return aimed(facts, route)

    slow = launcher(runtime.config.routes, facts_for, runtime.policy_for, cure)
    fast = launch(plan(runtime.config.routes, runtime.policy_for), facts, cure)
    assert [(a.route.id, a.decision, a.access, a.needs_step_up) for a in fast] == \
        [(a.route.id, a.decision, a.access, a.needs_step_up) for a in slow]


def test_route_facts_are_never_shared() -> None:
    """A policy naming `segment` or `http_path` is decided on facts aimed at its route: the
    same named policy opens the internet route and not the LGWAN one."""
    runtime = build_runtime(parse_config(_config()))
    made = plan(runtime.config.routes, runtime.policy_for)
    keys = {route.id: key for route, _, key in made.entries}
    assert keys["r3"] is None and keys["r4"] is None and keys["r7"] is None
    assert keys["r0"] is not None and keys["r0"] == keys["r8"]  # same policy, same guardrail
    assert keys["r1"] != keys["r9"]  # same policy under another guardrail
    access = {a.route.id: a.access for a in launch(made, _facts("10.1.2.3"), CURE)}
    assert access["r3"] == "open" and access["r4"] is None
    assert access["r7"] == "open"  # its prefix is /reports/, whatever the template's path


def test_unknown_shapes_count_as_reading_the_route() -> None:
    assert not reads_route(compile_policy("p", {"allow": {"and": [{"group": ["a"]}]}}))
    assert reads_route(compile_policy("p", {"allow": {"or": [{"segment": "lgwan"}]}}))
    assert reads_route(compile_policy("p", {"deny": {"not": [{"http_path": [{"prefix": "/a/"}]}]}}))
    # A policy whose document does not show what it was compiled from: not vouched for.
    compiled = compile_policy("p", {"allow": {"and": [{"group": ["a"]}]}})
    assert reads_route(replace(compiled, document={}))
