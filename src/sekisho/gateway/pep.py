"""The enforcement decision for one request: session, facts, policy — failing closed.

Everything that can go wrong while deciding (storage down, a policy bug, an audit writer
that cannot record) ends in a deny; there is no code path from an exception to the upstream.
A session that cannot be found is "not signed in"; a session store that cannot answer is
503, never "let it through".
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

from sekisho.config.model import DeviceSettings, Route
from sekisho.devices.trust import NOT_ENROLLED, DeviceStanding, DeviceTrust
from sekisho.errors import StorageError
from sekisho.gateway.mtls import ClientCertificate
from sekisho.identity.principal import SessionInfo
from sekisho.policy import Decision, Facts, Policy, evaluate
from sekisho.policy.facts import NO_PROOFS
from sekisho.services import SessionLookup

log = logging.getLogger("sekisho.gateway")

STORAGE_DENY = Decision(False, ("storage-unavailable",))
POLICY_DENY = Decision(False, ("policy-error",))
AUDIT_DENY = Decision(False, ("audit-unavailable",))
# A deny naming one of these may be cured by proving identity again: step up, don't 403.
STEP_UP_REASONS = frozenset({"mfa-required", "auth-too-old"})
# What a step-up adds to the session, by the kind of factor the step-up page asks for.
STEP_UP_FACTORS = {
    "totp": frozenset({"totp"}),
    "passkey": frozenset({"webauthn", "webauthn_uv"}),
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome: a decision, the session behind it, and the status to use on deny."""

    decision: Decision
    session: SessionInfo | None
    deny_status: int = 403  # 503 when the deny comes from an internal failure
    facts: Facts | None = None  # on a policy deny: what was decided (for the step-up check)


def cookie_value(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of cookie `name` (raw, no unquoting: tokens are URL-safe)."""
    for key, value in headers:
        if len(key) == 6 and key.lower() == b"cookie":
            for part in value.split(b";"):
                cookie_name, sep, cookie = part.strip().partition(b"=")
                if sep and cookie_name == name:
                    try:
                        return cookie.strip().decode("ascii")
                    except UnicodeDecodeError:
                        return None
    return None


async def find_session(sessions: SessionLookup, token: str | None) -> SessionInfo | None:
    """The live session for a cookie token; StorageError propagates (caller fails closed)."""
    if not token or len(token) > 512:
        return None
    return await sessions.lookup(token)


async def decide(
    *,
    sessions: SessionLookup,
    token: str | None,
    policy: Policy | None,
    route: Route,
    client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    method: str,
    path: str,
    host: str,
    now: float,
    holidays: frozenset[date] = frozenset(),
    certificate: ClientCertificate | None = None,
    devices: DeviceTrust | None = None,
    device_ttl: float = 1.0,
    posture: DeviceSettings | None = None,
) -> Verdict:
    try:
        session = await find_session(sessions, token)
    except StorageError:
        log.warning("session storage unavailable: denying (fail closed)")
        return Verdict(STORAGE_DENY, None, 503)
    except Exception:
        log.exception("session lookup failed: denying (fail closed)")
        return Verdict(STORAGE_DENY, None, 503)
    if policy is None:
        return Verdict(POLICY_DENY, session, 503)
    device = certificate.device if certificate is not None else None
    standing = NOT_ENROLLED
    if device is not None and devices is not None:
        try:
            standing = await devices.standing(device, device_ttl, posture)
        except StorageError:
            log.warning("device registry unavailable: denying (fail closed)")
            return Verdict(STORAGE_DENY, session, 503)
        except Exception:
            log.exception("device lookup failed: denying (fail closed)")
            return Verdict(STORAGE_DENY, session, 503)
    try:
        facts = request_facts(session, route, client_ip=client_ip, method=method, path=path,
                              host=host, now=now, holidays=holidays, certificate=certificate,
                              standing=standing)
        decision = evaluate(facts, policy)
        if not isinstance(decision, Decision) or decision.allow is not True:
            return Verdict(
                decision if isinstance(decision, Decision) else POLICY_DENY, session, 403,
                facts)
        return Verdict(decision, session)
    except Exception:
        log.exception("policy evaluation failed: denying (fail closed)")
        return Verdict(POLICY_DENY, session, 503)


def request_facts(
    session: SessionInfo | None,
    route: Route,
    *,
    client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    method: str,
    path: str,
    host: str,
    now: float,
    holidays: frozenset[date] = frozenset(),
    certificate: ClientCertificate | None = None,
    standing: DeviceStanding = NOT_ENROLLED,
) -> Facts:
    """The PDP's facts for one request. The one builder: the staff portal asks "could this
    user open that route now?" with exactly the facts the gateway would use."""
    return Facts(
        authenticated=session is not None,
        user=session.username if session else None,
        email=session.email if session else "",
        groups=session.groups if session else frozenset(),
        source_ip=client_ip,
        method=method,
        path=path,
        host=host,
        route=route.id,
        segment=route.segment,
        now=datetime.fromtimestamp(now, UTC),
        auth_methods=session.auth_methods if session else frozenset(),
        auth_time=session.last_proof if session else None,
        proofs=session.proofs if session else NO_PROOFS,
        idp=session.idp if session else "",
        holidays=holidays,
        **_device_facts(certificate, standing),
    )


def _device_facts(certificate: ClientCertificate | None,
                  standing: DeviceStanding) -> dict[str, Any]:
    """Device and certificate facts. The certificate's issuer and names are passed on only
    while the registry lists its device as enrolled: a suspended or revoked certificate must
    not satisfy `client_certificate` either."""
    if certificate is None or certificate.device is None:
        return {}
    if not standing.enrolled:
        return {"device_id": certificate.device.device_id}
    return {
        "device_id": certificate.device.device_id,
        "device_enrolled": True,
        "device_user": standing.user,
        "device_profile": standing.profile,
        "client_certificate_issuer": certificate.issuer,
        "client_certificate_sans": certificate.sans,
    }


def with_fresh_proof(facts: Facts, methods: frozenset[str]) -> Facts:
    """The same request after the user proved `methods` just now: those methods, and only
    those, get a fresh proof time (a TOTP step-up leaves an old passkey old)."""
    return replace(facts, auth_methods=facts.auth_methods | methods, auth_time=facts.now,
                   proofs=MappingProxyType({**facts.proofs, **dict.fromkeys(methods, facts.now)}))


def step_up_cures(verdict: Verdict, policy: Policy | None) -> frozenset[str]:
    """The kinds of step-up (`STEP_UP_FACTORS` keys) after which the PDP would allow this
    denied request; empty when none would, or when the user is not signed in.

    The reason codes only pre-select; the PDP decides the cure. An `and` names only its first
    failure, so a non-admin may be told `mfa-required` by `and: [mfa, group: admins]` — a
    step-up would end in 403 again. An `or` names all of them: a remote user is told
    `source-ip-denied` and `mfa-required` by the internet guardrail, and a step-up lets them
    in. And the マイナンバー guardrail wants a passkey: offering TOTP there would loop.
    """
    facts = verdict.facts
    if (verdict.session is None or verdict.deny_status != 403 or facts is None
            or policy is None or STEP_UP_REASONS.isdisjoint(verdict.decision.reasons)):
        return frozenset()
    return frozenset(kind for kind, methods in STEP_UP_FACTORS.items()
                     if evaluate(with_fresh_proof(facts, methods), policy).allow)


def step_up_location(scheme: str, host_header: str, target: str,
                     cures: frozenset[str] = frozenset()) -> str:
    """The step-up page, back to `target` after (a form's body is not replayed: the page
    says so, and the user submits it again). When only one kind of factor cures the denial,
    `need=` tells the page to ask for that one (a hint for the page, not a permission: the
    gateway decides the request again when the browser comes back)."""
    original = f"{scheme}://{host_header}{target}"
    need = f"&need={next(iter(cures))}" if len(cures) == 1 else ""
    return f"{scheme}://{host_header}/.sekisho/stepup?rd={quote(original, safe='')}{need}"


def signin_location(scheme: str, host_header: str, target: str) -> str:
    """Where an unauthenticated browser goes: the sign-in page, back to `target` after."""
    original = f"{scheme}://{host_header}{target}"
    return f"{scheme}://{host_header}/.sekisho/signin?rd={quote(original, safe='')}"
