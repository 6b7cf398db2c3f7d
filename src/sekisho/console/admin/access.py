"""Who is calling the admin API or console: a session through the admin policy, or an API
token; and with which role.

A session is decided exactly as the gateway decides a route: the same facts
(`gateway.pep.request_facts`, the device certificate with its registry standing) evaluated by
the admin policy of the live snapshot (`Runtime.admin_policy`, under the internet
guardrail). A deny that a passkey would cure sends the browser to step up; any other deny is
a 403 with its reasons; an allowed session without an admin role is a 403 too.

A token (`Authorization: Bearer skt_…`) never meets the cookie: a request that carries one
is judged by the token alone, so a browser's ambient cookie cannot lend its role to a script
and a token never needs CSRF protection. Unknown, wrong, expired and revoked tokens get one
and the same answer (no oracle for which ids exist), the secret is compared in constant
time, and failures are throttled per source address (online guessing).

Everything fails closed: storage, device registry, policy or audit trouble is a 503, never
an allow.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from sekisho.audit.events import AccessDecision
from sekisho.audit.log import AuditUnavailable
from sekisho.console.admin.ops import API_PREFIX, Actor, AdminContext, AdminError, Role
from sekisho.devices.trust import NOT_ENROLLED
from sekisho.errors import StorageError
from sekisho.gateway.mtls import ClientCertificate
from sekisho.gateway.pages import error_page, explain_reason, prefers_english
from sekisho.gateway.pep import (
    Verdict,
    cookie_value,
    request_facts,
    step_up_cures,
    step_up_location,
)
from sekisho.identity.principal import SessionInfo
from sekisho.policy import evaluate
from sekisho.storage import api_tokens
from sekisho.web import Request, Response, json_response, redirect

log = logging.getLogger("sekisho.admin")

SIGNIN_PATH = "/.sekisho/signin"
ADMIN_ROUTE_ID = "sekisho-admin"
_DUMMY_HASH = "0" * 64  # compared against when the id is unknown: same work, same answer
_MAX_AUTHORIZATION = 256
_ROLE_NAMES = frozenset(role.value for role in Role)
PASSKEY = "passkey"  # a `gateway.pep.STEP_UP_FACTORS` kind

TOKEN_INVALID = ("token-invalid",
                 "API トークンが無効です（不明・誤り・期限切れ・失効のいずれか）。",
                 "The API token is not valid (unknown, wrong, expired or revoked).")


def language(request: Request) -> str:
    """The answer's language: English when Accept-Language prefers it, else Japanese."""
    return "en" if prefers_english(request.header("accept-language") or "", "") else "ja"


def error_response(error: AdminError, lang: str,
                   headers: Iterable[tuple[str, str]] = ()) -> Response:
    response = json_response(error.as_json(lang), error.status, headers)
    response.set_header("X-Content-Type-Options", "nosniff")
    return response


def unavailable() -> AdminError:
    return AdminError("storage-unavailable",
                      "データベースまたは監査ログが利用できません。しばらくしてから再度お試しください。",
                      "The database or the audit log is unavailable; try again later.", 503)


def token_invalid() -> AdminError:
    return AdminError(*TOKEN_INVALID, status=401)


def wants_json(request: Request) -> bool:
    return request.path.startswith(API_PREFIX + "/") or request.wants_json()


# -- sessions ---------------------------------------------------------------------------------

async def _session(ctx: AdminContext, request: Request) -> SessionInfo | None:
    """The request's session; never the cookie when an Authorization header is present.

    The gateway fills `request.session` but goes on signed out when storage fails; a cookie
    without a session is therefore looked up again here, so a storage failure surfaces as
    StorageError (503) instead of a sign-in page.
    """
    if request.header("authorization") is not None:
        return None
    if isinstance(request.session, SessionInfo):
        return request.session
    name = ctx.identity.current_config().session.cookie_name.encode("latin-1")
    raw = [(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in request.headers]
    token = cookie_value(raw, name)
    if not token or len(token) > 512:
        return None
    session = await ctx.identity.sessions.lookup(token)
    request.session = session  # the API's CSRF check binds to this session
    return session


async def session_actor(ctx: AdminContext, request: Request, *,
                        as_json: bool | None = None) -> Actor | Response:
    """The signed-in administrator, or the answer to send instead (sign in, step up, 403,
    503). `as_json` defaults to JSON under /.sekisho/api/ and for JSON-only clients."""
    as_json = wants_json(request) if as_json is None else as_json
    lang = language(request)
    try:
        return await _decide_session(ctx, request, as_json, lang)
    except (StorageError, AuditUnavailable):
        log.warning("admin access: storage or audit unavailable, denying (fail closed)")
        return _refuse(unavailable(), request, as_json, lang)


async def _decide_session(ctx: AdminContext, request: Request, as_json: bool,
                          lang: str) -> Actor | Response:
    started = time.perf_counter()
    identity = ctx.identity
    session = await _session(ctx, request)
    if session is None:
        record_decision(ctx, request, ("user-unauthenticated",),
                        status=401 if as_json else 303, started=started)
        if as_json:
            return error_response(AdminError(
                "unauthenticated", "サインインしてください。", "Sign in first.", 401), lang)
        back = request.path + ("?" + request.query if request.query else "")
        return redirect(SIGNIN_PATH + "?" + urlencode({"rd": back}))
    if identity.current_runtime is None:
        return _refuse(unavailable(), request, as_json, lang)
    runtime = identity.current_runtime()
    config = runtime.config
    certificate = request.certificate if isinstance(request.certificate,
                                                    ClientCertificate) else None
    standing = NOT_ENROLLED
    if certificate is not None and certificate.device is not None and \
            identity.device_trust is not None:
        standing = await identity.device_trust.standing(
            certificate.device, config.session.cache_ttl, config.devices)
    policy = runtime.admin_policy
    try:
        facts = request_facts(
            session, runtime.admin_route, client_ip=ipaddress.ip_address(request.client_ip),
            method=request.method, path=request.path, host=request.host,
            now=identity.clock().timestamp(), holidays=config.holidays,
            certificate=certificate, standing=standing)
        if policy is None:
            raise ValueError("no admin policy in this snapshot")
        decision = evaluate(facts, policy)
    except Exception:
        log.exception("admin policy evaluation failed: denying (fail closed)")
        record_decision(ctx, request, ("policy-error",), status=503, started=started,
                        session=session)
        return _refuse(unavailable(), request, as_json, lang)
    if not decision.allow:
        # Which step-up cures is the PDP's answer: under the built-in policy ("a passkey
        # proven within 15 minutes") a TOTP step-up leaves the passkey old, so only a
        # passkey is offered.
        cures = step_up_cures(Verdict(decision, session, 403, facts), policy)
        if cures:
            location = step_up_location(request.scheme, request.header("host") or request.host,
                                        request.target, cures)
            record_decision(ctx, request, decision.reasons, status=401 if as_json else 302,
                            started=started, session=session)
            if as_json:
                passkey = cures == {PASSKEY}
                return error_response(AdminError(
                    "step-up-required",
                    "もう一度本人確認（パスキー）をしてください。" if passkey
                    else "もう一度本人確認をしてください。",
                    "Prove your identity again (passkey) first." if passkey
                    else "Prove your identity again first.", 401,
                    details={"location": location, "reasons": list(decision.reasons)}), lang)
            return redirect(location, 302 if request.method in ("GET", "HEAD") else 303)
        record_decision(ctx, request, decision.reasons, status=403, started=started,
                        session=session)
        if as_json:
            return error_response(AdminError(
                "policy-denied", "管理用ポリシーにより拒否されました。",
                "The admin policy denied this request.", 403,
                details={"reasons": _reasons(decision.reasons)}), lang)
        return error_page(403, english=lang == "en", reasons=decision.reasons)
    role = config.admin.role_of(session.groups)
    if role is None:
        record_decision(ctx, request, ("role-none",), status=403, started=started,
                        session=session)
        return _refuse(AdminError("role-none", "管理者の役割がありません。",
                                  "You hold no admin role.", 403), request, as_json, lang)
    return Actor(name=session.username, role=Role(role), via="session",
                 source_ip=request.client_ip, session=session.short_id)


def _reasons(codes: Iterable[str]) -> list[dict[str, str]]:
    return [{"code": c, "ja": explain_reason(c, "ja"), "en": explain_reason(c, "en")}
            for c in codes]


def _refuse(error: AdminError, request: Request, as_json: bool, lang: str) -> Response:
    if as_json:
        return error_response(error, lang)
    return error_page(error.status, english=lang == "en")


def record_decision(ctx: AdminContext, request: Request, reasons: tuple[str, ...], *,
                    status: int, started: float, session: SessionInfo | None = None,
                    allow: bool = False, user: str = "", bytes_out: int = 0,
                    short: str = "") -> None:
    """An access decision on the admin route, in the same log as the gateway's (group
    commit); AuditUnavailable propagates: the caller answers 503."""
    ctx.identity.audit.record(AccessDecision(
        route=ADMIN_ROUTE_ID, user=session.username if session else user,
        decision="allow" if allow else "deny", reasons=reasons, source_ip=request.client_ip,
        method=request.method, path=request.path, status=status, bytes_in=len(request.body),
        bytes_out=bytes_out, duration_ms=round((time.perf_counter() - started) * 1000, 3),
        session=session.short_id if session else short))


# -- tokens -----------------------------------------------------------------------------------

def bearer(request: Request) -> str | None:
    """The bearer credential, "" for a malformed Authorization header, None without one."""
    header = request.header("authorization")
    if header is None:
        return None
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() != "bearer" or len(header) > _MAX_AUTHORIZATION:
        return ""
    return credential.strip()


async def token_actor(ctx: AdminContext, request: Request) -> Actor | AdminError:
    """The token's actor, or the refusal to answer (401 token-invalid, 429, 503)."""
    try:
        return await _check_token(ctx, request)
    except (StorageError, AuditUnavailable):
        log.warning("admin token check: storage or audit unavailable, denying (fail closed)")
        return unavailable()


async def _check_token(ctx: AdminContext, request: Request) -> Actor | AdminError:
    started = time.perf_counter()
    identity = ctx.identity
    settings = identity.current_config().throttle
    key = [f"api-ip:{request.client_ip[:64]}"]  # an address key: `throttle.ip_max_failures`
    verdict = await asyncio.to_thread(identity.throttle.check_keys, key, settings)
    if not verdict.allowed:
        record_decision(ctx, request, ("throttled",), status=429, started=started)
        return AdminError("throttled", "失敗が多すぎます。しばらく待ってから再度お試しください。",
                          "Too many failed attempts; try again later.", 429,
                          details={"retry_after": max(1, round(verdict.retry_after))})
    parsed = api_tokens.parse(bearer(request) or "")
    record = await asyncio.to_thread(api_tokens.get, identity.engine, parsed[0]) \
        if parsed else None
    presented = api_tokens.hash_secret(parsed[1] if parsed else "")
    # Constant time: the comparison does not reveal how much of the secret was right.
    matches = hmac.compare_digest(presented.encode(),
                                  (record.secret_hash if record else _DUMMY_HASH).encode())
    now = identity.clock()
    if record is None or not matches or not record.live(now) or \
            record.role not in _ROLE_NAMES:
        locked = await asyncio.to_thread(identity.throttle.record_failure_keys, key,
                                         request.client_ip, settings)
        for event in locked:
            await identity.audit.append(event)
        record_decision(ctx, request, ("token-invalid",), status=401, started=started,
                        short=record.id if record else "")
        return token_invalid()
    if record.last_used_at is None or now - record.last_used_at >= api_tokens.TOUCH_INTERVAL:
        await asyncio.to_thread(api_tokens.touch, identity.engine, record.id, now)
    return Actor(name=f"token:{record.name}", role=Role(record.role), via="token",
                 source_ip=request.client_ip, session=record.id)


def describe(actor: Actor) -> dict[str, Any]:
    return {"name": actor.name, "role": str(actor.role), "via": actor.via}
