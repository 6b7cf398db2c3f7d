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

Speed (1,000 routes on one page, docs/benchmarks.md): the four variants of the request's
facts (now, stepped up, on a device, both) are built once per page, not once per route, and
a route whose policy and guardrail read none of the route's own facts (id, segment, host,
path) is decided on them as they are; routes sharing such a policy under the same guardrail
share the decision. `plan` works that out once per configuration snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

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
# Criteria that read none of the route's own facts (route id, segment, host, path); the
# method is GET for every route the launcher asks about. A criterion not named here (a new
# one, `segment`, `http_path`) makes its policy be decided on facts aimed at each route.
ROUTE_FREE_CRITERIA = frozenset({
    "always", "never", "authenticated", "user", "group", "email", "email_domain", "idp",
    "mfa", "auth_age", "source_ip", "time", "device", "client_certificate", "http_method"})
_BLOCK_KEYS = frozenset({"allow", "deny", "and", "or", "not"})
_NOW, _STEPPED, _DEVICE, _STEPPED_DEVICE = range(4)
_NOT_DECIDED = Decision(False, ("policy-error",))


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
        return Assessment(route, _NOT_DECIDED, None)
    variants = _Variants(facts, device)
    return Assessment(route, *_classify(policy, variants.get, device is not None))


def launcher(routes: Iterable[Route], facts_for: Callable[[Route], Facts],
             policy_for: Callable[[Route], Policy | None],
             device: DeviceCure | None) -> list[Assessment]:
    """Every route assessed (listed or not), in configuration order."""
    return [assess(route, facts_for(route), policy_for(route), device) for route in routes]


_Verdict = tuple[Decision, Access | None, bool]


def _classify(policy: Policy, facts: Callable[[int], Facts], can_enrol: bool) -> _Verdict:
    """`assess` on the facts variants `facts(kind)`: the one place the cures are tried."""
    decision = evaluate(facts(_NOW), policy)
    if decision.allow:
        return decision, "open", False
    if CURABLE_REASONS.isdisjoint(decision.reasons):
        return decision, None, False
    if evaluate(facts(_STEPPED), policy).allow:
        return decision, "step-up", True
    if not can_enrol:
        return decision, None, False
    if evaluate(facts(_DEVICE), policy).allow:
        return decision, "device", False
    if evaluate(facts(_STEPPED_DEVICE), policy).allow:
        return decision, "device", True
    return decision, None, False


class _Variants:
    """One request's facts now and after each cure, each built on first use."""

    __slots__ = ("_built", "_device", "_facts")

    def __init__(self, facts: Facts, device: DeviceCure | None) -> None:
        self._facts, self._device = facts, device
        self._built: list[Facts | None] = [facts, None, None, None]

    def get(self, kind: int) -> Facts:
        found = self._built[kind]
        if found is None:
            if kind == _STEPPED:
                found = after_step_up(self._facts)
            else:
                assert self._device is not None  # `_classify` asks only when it may enrol
                found = with_device(self.get(_STEPPED if kind == _STEPPED_DEVICE else _NOW),
                                    self._device)
            self._built[kind] = found
        return found


@dataclass(frozen=True, slots=True)
class Plan:
    """The routes of one configuration snapshot with their policies (`plan`), each with the
    key under which routes share their decision (None: decided on the route's own facts)."""

    entries: tuple[tuple[Route, Policy | None, Hashable | None], ...]


def plan(routes: Iterable[Route], policy_for: Callable[[Route], Policy | None]) -> Plan:
    """Work out once per snapshot which routes need facts of their own (see the module)."""
    entries = []
    for route in routes:
        policy = policy_for(route)
        key = None
        if policy is not None and not reads_route(policy):
            # The same compiled policy under the same guardrail object: the same decision
            # for the same facts. The Plan holds the policies, so these ids stay theirs.
            key = (policy.name, id(policy.document), id(policy.allow), id(policy.guardrail))
        entries.append((route, policy, key))
    return Plan(tuple(entries))


def launch(plan: Plan, facts: Facts, device: DeviceCure | None) -> list[Assessment]:
    """Every route of `plan` assessed, as `launcher` with `facts_for(route)` being `facts`
    aimed at the route (`aimed`): `facts` is the request's facts for any one route."""
    variants = _Variants(facts, device)
    can_enrol = device is not None
    shared: dict[Hashable, _Verdict] = {}
    assessments = []
    for route, policy, key in plan.entries:
        if policy is None:
            assessments.append(Assessment(route, _NOT_DECIDED, None))
            continue
        if key is None:
            own = _Variants(aimed(facts, route), device)
            verdict = _classify(policy, own.get, can_enrol)
        else:
            found = shared.get(key)
            if found is None:
                found = shared[key] = _classify(policy, variants.get, can_enrol)
            verdict = found
        assessments.append(Assessment(route, *verdict))
    return assessments


def aimed(facts: Facts, route: Route) -> Facts:
    """The same request to `GET <route prefix>` of `route` (as `pep.request_facts` sets it)."""
    if (facts.route, facts.segment, facts.host, facts.path) == (
            route.id, route.segment, route.host, route.path_prefix):
        return facts
    return replace(facts, route=route.id, segment=route.segment, host=route.host,
                   path=route.path_prefix)


def reads_route(policy: Policy) -> bool:
    """Whether `policy` (with its guardrail) may read the route's own facts. True whenever
    that cannot be shown from the documents it was compiled from (fail safe: slower only)."""
    parts = [policy] if policy.guardrail is None else [policy, policy.guardrail]
    for part in parts:
        document = part.document
        if not isinstance(document, Mapping) or (part.allow is not None
                                                  and "allow" not in document):
            return True
        if part.guardrail is None and part.deny is not None and "deny" not in document:
            return True
        if _names_route_criterion(document):
            return True
    return False


def _names_route_criterion(node: Any) -> bool:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in _BLOCK_KEYS:
                if _names_route_criterion(value):
                    return True
            elif key not in ROUTE_FREE_CRITERIA:
                return True
        return False
    if isinstance(node, list | tuple):
        return any(_names_route_criterion(item) for item in node)
    return True  # not a block or a list of them: nothing to vouch for


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
