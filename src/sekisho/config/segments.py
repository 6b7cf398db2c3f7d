"""`profile:` and `networks:`, and every route checked against its segment guardrail.

The guardrails themselves live in `sekisho.policy.guardrails` (pure); this module feeds them
the configuration and maps what they find back to file lines: a route that tries to open
what its guardrail keeps closed is an error naming the route, the rule and the guideline
item; a route its guardrail keeps closed for want of a network is a warning (it is safe —
closed — and an error would only tempt someone to "fix" it with a wide network).

`networks.office` and `mfa.office_networks` are one setting under two names: the office is
where sign-in needs no second factor *and* where LGWAN may be reached over plain HTTP, and
two different lists would make the two decisions disagree. Either may be written; both, only
if they are equal.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

from sekisho.config.build import Builder
from sekisho.config.model import IPNetwork, MfaSettings, Networks, Profile, Route
from sekisho.config.problems import FieldPath, Problem
from sekisho.policy.guardrails import (
    DEFAULT_PROFILE,
    MYNUMBER_DEVICE_PROFILE,
    PROFILES,
    Finding,
    contradictions,
    guardrail_for,
    terminal_findings,
)
from sekisho.policy.guardrails import Networks as GuardrailNetworks


def build_profile(builder: Builder) -> Profile:
    value = builder.data.get("profile", DEFAULT_PROFILE)
    return cast(Profile, value if value in PROFILES else DEFAULT_PROFILE)


def _cidrs(builder: Builder, key: str) -> tuple[IPNetwork, ...]:
    raw = builder.section("networks").get(key)
    networks: list[IPNetwork] = []
    for index, value in enumerate(raw) if isinstance(raw, list) else ():
        if not isinstance(value, str):
            continue
        where = ("networks", key, index)
        try:
            network = ipaddress.ip_network(value, strict=True)
        except ValueError:
            builder.problem(where, '"10.20.0.0/16" のような CIDR（ホスト部は 0）が必要です',
                            f'must be a CIDR like "10.20.0.0/16" with no host bits set '
                            f"(got {value!r})")
            continue
        if network.prefixlen == 0:
            # "Everywhere is the office" would drop MFA and open LGWAN to the internet.
            builder.problem(where, "すべてのアドレスを 1 つのネットワークとはみなせません",
                            f"cannot name every address as one network (got {value!r})")
            continue
        networks.append(network)
    return tuple(networks)


def build_networks(builder: Builder, mfa: MfaSettings) -> tuple[Networks, MfaSettings]:
    """`networks:`, with the office shared with `mfa.office_networks` (module docstring)."""
    office = _cidrs(builder, "office")
    networks = Networks(office=office, mynumber_terminals=_cidrs(builder, "mynumber_terminals"))
    given_here = isinstance(builder.section("networks").get("office"), list)
    given_mfa = isinstance(builder.section("mfa").get("office_networks"), list)
    if given_here and given_mfa and set(office) != set(mfa.office_networks):
        builder.problem(("networks", "office"),
                        "mfa.office_networks と異なります。庁内は 1 つだけ書いてください（どちらか"
                        "一方、または同じ一覧）",
                        "differs from mfa.office_networks; the office is one setting: write "
                        "one of them, or the same list in both")
    if given_here and not given_mfa:
        mfa = replace(mfa, office_networks=office)
    elif given_mfa and not given_here:
        networks = replace(networks, office=mfa.office_networks)
    return networks, mfa


def guardrail_networks(networks: Networks) -> GuardrailNetworks:
    return GuardrailNetworks(office=tuple(str(n) for n in networks.office),
                             mynumber_terminals=tuple(str(n) for n in networks.mynumber_terminals))


def check_guardrails(
    builder: Builder,
    *,
    profile: Profile,
    networks: Networks,
    routes: tuple[Route, ...],
    policies: Mapping[str, Mapping[str, Any]],
    inline_paths: Mapping[str, FieldPath],
    posture_profiles: tuple[str, ...],
) -> tuple[str, ...]:
    """Report contradictions as problems; return the warnings as rendered lines."""
    from sekisho.policy import PolicyError, compile_policy

    plain = guardrail_networks(networks)
    for finding in terminal_findings(plain):
        _report(builder, profile, finding, finding.path)
    if builder.section("mfa").get("require_remote") is False:
        finding = Finding("remote-mfa", "config", ("mfa", "require_remote"),
                          "「mfa.require_remote: false」", "mfa.require_remote: false")
        _report(builder, profile, finding, finding.path)
    indices = _route_indices(builder)
    warnings: list[Problem] = []
    for route in routes:
        here: FieldPath = ("routes", indices.get(route.id, 0))
        document = policies.get(route.policy)
        if document is None:
            continue
        try:
            compile_policy(route.policy, document)
        except PolicyError:
            continue  # already reported where it is wrong
        base = inline_paths.get(route.policy, ("policies", route.policy))
        screen = {name: getattr(route.screen, name) for name in
                  ("clipboard", "file_transfer", "printing", "drive")}
        for finding in contradictions(profile=profile, segment=route.segment, mode=route.mode,
                                      screen=screen, document=document, networks=plain):
            path = (*base, *finding.path) if finding.scope == "policy" else \
                (*here, *finding.path)
            _report(builder, profile, finding, path, route.id)
        guardrail = guardrail_for(profile, route.segment, route.mode, plain,
                                  redirection=any(screen.values()))
        if guardrail.closed:
            warnings.append(Problem(
                builder.lines.line((*here, "segment")), (*here, "segment"),
                f"警告: ルート '{route.id}' はガードレールにより閉じています"
                f"（{guardrail.summary_ja}）",
                f"warning: route '{route.id}' is closed by its guardrail "
                f"({guardrail.summary_en})"))
        elif route.segment == "mynumber" and MYNUMBER_DEVICE_PROFILE not in posture_profiles:
            warnings.append(Problem(
                builder.lines.line((*here, "segment")), (*here, "segment"),
                f"警告: ルート '{route.id}' には devices.profiles の {MYNUMBER_DEVICE_PROFILE} "
                "の端末が必要ですが、そのプロファイルがないため誰も接続できません",
                f"warning: route '{route.id}' needs a device of posture profile "
                f"{MYNUMBER_DEVICE_PROFILE}, which devices.profiles does not define, so nobody "
                "can reach it"))
    return tuple(p.render(builder.source) for p in sorted(warnings, key=lambda p: p.line))


def _report(builder: Builder, profile: str, finding: Finding, path: FieldPath,
            route: str = "") -> None:
    ja, en = finding.message(profile, route)
    builder.problem(path, ja, en)


def _route_indices(builder: Builder) -> dict[str, int]:
    raw = builder.data.get("routes")
    indices: dict[str, int] = {}
    for index, entry in enumerate(raw) if isinstance(raw, list) else ():
        if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
            indices.setdefault(entry["id"], index)
    return indices
