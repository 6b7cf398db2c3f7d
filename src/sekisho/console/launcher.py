"""Which apps a user may open now, which they could open after a step, and which not at all.

The pure core of the app launcher: for each route it takes the facts the gateway would
build for `GET <route prefix>` and the route's policy (`Runtime.policy_for`, guardrails
included) and asks the real PDP. An app is listed when the PDP allows it (*open*), or when
the user can cure the denial themselves:
- *step-up*: a fresh second factor (the denial names `mfa-required` / `auth-too-old`), or
- *device*: an enrolled device of theirs in good standing (`device-unauthorized` /
  `client-certificate-unauthorized`), perhaps with a step-up too.

Reason codes alone do not prove that a step cures a denial: an `and` reports only its first
failing item, so `and: [mfa: true, group: [admins]]` says `mfa-required` to a user who is no
admin at all — listing it would show a non-admin the admin tools and send them through a
step-up that ends in 403. Nor do they prove the opposite: a guardrail's `or: [office
network, mfa]` names both `source-ip-denied` and `mfa-required` to a remote user whom a
step-up lets in. So the codes only pre-select (a denial naming none of the curable codes is
not looked at again), and the PDP decides the cure: it is asked again with the same facts
after the step, and only an allow lists the app. Everything else — any policy error
included — is not listed at all (see docs/portal.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from sekisho.config.model import Route
from sekisho.gateway.pep import STEP_UP_REASONS, with_fresh_proof
from sekisho.policy import Decision, Facts, Policy, evaluate

Access = Literal["open", "step-up", "device"]
SEGMENT_ORDER = ("internet", "lgwan", "mynumber")  # least to most protected
DEVICE_REASONS = frozenset({"device-unauthorized", "client-certificate-unauthorized"})
CURABLE_REASONS = STEP_UP_REASONS | DEVICE_REASONS
# What a step-up can add: any second factor the user may prove (or enrol, then prove) now.
FRESH_FACTORS = frozenset({"totp", "webauthn", "webauthn_uv"})
HYPOTHETICAL_DEVICE = "(enrolled-device)"  # stands for "a device of yours, once enrolled"


@dataclass(frozen=True, slots=True)
class DeviceCure:
    """What an enrolled, compliant device of the user's would add to the facts.

    `profile`: the best posture profile configured (profiles are listed best first);
    `issuer`: the internal CA's issuer name its certificate would carry ("" if unknown).
    """

    profile: str
    issuer: str = ""


@dataclass(frozen=True, slots=True)
class Assessment:
    """One route for one user: the PDP's decision now, and what the launcher makes of it."""

    route: Route
    decision: Decision
    access: Access | None  # None: not listed
    needs_step_up: bool = False  # a fresh second factor is (also) part of the cure


@dataclass(frozen=True, slots=True)
class SegmentGroup:
    segment: str
    apps: tuple[Assessment, ...]


def after_step_up(facts: Facts) -> Facts:
    """The same request after the user proved a second factor just now."""
    return with_fresh_proof(facts, FRESH_FACTORS)


def with_device(facts: Facts, cure: DeviceCure) -> Facts:
    """The same request from an enrolled device of this user (its own id if one was shown)."""
    return replace(
        facts, device_id=facts.device_id or HYPOTHETICAL_DEVICE, device_enrolled=True,
        device_user=facts.user or "", device_profile=cure.profile,
        client_certificate_issuer=cure.issuer or facts.client_certificate_issuer)


def assess(route: Route, facts: Facts, policy: Policy | None,
           device: DeviceCure | None) -> Assessment:
    """Classify one route. `device`: None when no device can ever be presented (client
    certificates are off), so enrolling one would cure nothing."""
    if policy is None:  # a snapshot without the route's policy decides nothing: not listed
        return Assessment(route, Decision(False, ("policy-error",)), None)
    decision = evaluate(facts, policy)
    if decision.allow:
        return Assessment(route, decision, "open")
    if CURABLE_REASONS.isdisjoint(decision.reasons):
        return Assessment(route, decision, None)
    stepped = after_step_up(facts)
    if evaluate(stepped, policy).allow:
        return Assessment(route, decision, "step-up", needs_step_up=True)
    if device is None:
        return Assessment(route, decision, None)
    if evaluate(with_device(facts, device), policy).allow:
        return Assessment(route, decision, "device")
    if evaluate(with_device(stepped, device), policy).allow:
        return Assessment(route, decision, "device", needs_step_up=True)
    return Assessment(route, decision, None)


def launcher(routes: Iterable[Route], facts_for: Callable[[Route], Facts],
             policy_for: Callable[[Route], Policy | None],
             device: DeviceCure | None) -> list[Assessment]:
    """Every route assessed (listed or not), in configuration order."""
    return [assess(route, facts_for(route), policy_for(route), device) for route in routes]


def grouped(assessments: Sequence[Assessment]) -> list[SegmentGroup]:
    """The listed apps by segment (internet, lgwan, mynumber), each sorted by title."""
    groups = []
    for segment in SEGMENT_ORDER:
        apps = sorted((a for a in assessments if a.access is not None
                       and a.route.segment == segment),
                      key=lambda a: ((a.route.title or a.route.id).casefold(), a.route.id))
        if apps:
            groups.append(SegmentGroup(segment, tuple(apps)))
    return groups
