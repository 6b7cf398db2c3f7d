"""The sign-in transaction: from a first proof to a session, through a second factor if needed.

Every way in (password, OIDC, passwordless passkey) ends in `SignInFlows.after_primary`, so
the rule "who needs a second factor" lives in exactly one place: a user who has a factor
enrolled, or whom `mfa:` requires one (remote source address, admin group), gets no session
until the second factor is proven. In between, a *pending flow* is stored server-side and
bound to the browser by the random `__Host-sekisho-flow` cookie (only its SHA-256 is stored)
and by the User-Agent; it lives `mfa.flow_lifetime` seconds, allows `FLOW_MAX_FAILURES` wrong
codes, and is consumed by one conditional UPDATE, so a finished flow cannot be replayed and
two workers cannot both complete it. A required user with no factor at all is sent to enrol
TOTP inside the flow (first-use enrolment), never let in with the password alone; so is a
primary proof that itself demands a second factor (`require_second_factor`: an IdP that must
assert MFA and did not). When a flow becomes a session, `on_session_issued` callbacks learn
exactly which (OIDC uses it so that a back-channel logout ends that session and no other).

Every session issued here is new (session fixation: the session the browser brought is
revoked), and a step-up also replaces the session id, keeping the old absolute expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy import Engine

from sekisho.audit.events import AuditEvent, SessionSteppedUp, SignInSucceeded
from sekisho.config.model import Config, MfaSettings
from sekisho.identity.pages import PREFIX, PageKit
from sekisho.identity.principal import SessionInfo, proofs_at
from sekisho.identity.redirects import safe_redirect
from sekisho.identity.sessions import SessionManager
from sekisho.observability import metrics
from sekisho.services import AuditSink
from sekisho.storage import login_flows as store
from sekisho.storage.users import UserRecord, get_user_by_id, groups_of_user
from sekisho.web import Request, Response

FLOW_COOKIE = "__Host-sekisho-flow"
MFA_PATH = PREFIX + "/mfa"
TOTP_ENROL_PATH = PREFIX + "/mfa/totp/enrol"
STEPUP_PATH = PREFIX + "/stepup"
FLOW_MAX_FAILURES = 5
PRIMARY_METHODS = frozenset({"pwd", "oidc", "webauthn"})
# Methods that prove a second factor; as `extra_methods` of a primary proof only the last two
# count (the IdP asserted MFA; a passkey with user verification is possession + PIN/biometric).
SECOND_FACTORS = frozenset({"totp", "recovery", "webauthn", "webauthn_uv", "idp_mfa"})
PRIMARY_SATISFIES = frozenset({"idp_mfa", "webauthn_uv"})
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")

SessionIssued = Callable[[str, str], Awaitable[None]]
"""A `SignInFlows.on_session_issued` callback: (flow id, new session id)."""


@dataclass(frozen=True, slots=True)
class PrimaryProof:
    user: UserRecord
    method: str  # "pwd" | "oidc" | "webauthn" (passwordless passkey)
    idp: str = ""  # IdP id for "oidc"
    extra_methods: tuple[str, ...] = ()  # e.g. ("idp_mfa",) or ("webauthn_uv",)
    groups_from_idp: tuple[str, ...] = ()  # informational
    # The method itself demands a second factor (an IdP that must assert MFA did not): the
    # flow then treats the sign-in like a required one (enrol TOTP first if there is none).
    require_second_factor: bool = False


@dataclass(frozen=True, slots=True)
class PendingFlow:
    id: str  # sha256 hex of the cookie value
    user: UserRecord
    primary_method: str
    rd: str
    created_at: datetime
    expires_at: datetime
    methods_so_far: tuple[str, ...]
    mode: str  # "signin" | "stepup"
    auth_time: datetime  # when the primary proof was made
    idp: str = ""
    session_id: str = ""  # step-up: the session being stepped up
    failures: int = 0


@dataclass(frozen=True, slots=True)
class FactorChoice:
    """A second factor offered on the `/.sekisho/mfa` page (TOTP here; passkeys by W).

    `label` is an English message id translated through the identity catalogs; `enrolled`
    answers (synchronously, run in a thread) whether the user has this factor.
    """

    method: str
    url: str
    label: str
    enrolled: Callable[[Engine, int], bool]


def with_implied(methods: Iterable[str]) -> tuple[str, ...]:
    """The methods plus those they imply ("webauthn_uv" is also "webauthn"), in order."""
    found = list(dict.fromkeys(methods))
    if "webauthn_uv" in found and "webauthn" not in found:
        found.append("webauthn")
    return tuple(found)


def from_office(settings: MfaSettings, source_ip: str) -> bool:
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        return False  # unknown origin counts as remote (fail closed)
    return any(address in network for network in settings.office_networks)


def mfa_required(settings: MfaSettings, source_ip: str, groups: Iterable[str]) -> bool:
    """Does configuration demand a second factor for this sign-in? Pure."""
    if settings.require_remote and not from_office(settings, source_ip):
        return True
    return bool(set(groups) & set(settings.require_groups))


def mfa_mandatory(settings: MfaSettings, groups: Iterable[str]) -> bool:
    """Must this user keep a second factor? Yes if any sign-in of theirs can require one:
    from outside the office (`require_remote`) or by group (`require_groups`). Pure."""
    return settings.require_remote or bool(set(groups) & set(settings.require_groups))


def agent_hash(request: Request) -> str:
    return hashlib.sha256((request.header("user-agent") or "").encode()).hexdigest()


class SignInFlows:
    """Issues sessions after a first proof, or holds the sign-in until a second factor."""

    def __init__(self, *, engine: Engine, sessions: SessionManager, audit: AuditSink,
                 current_config: Callable[[], Config], clock: Callable[[], datetime],
                 pages: PageKit | None = None) -> None:
        self.engine, self.sessions, self.audit = engine, sessions, audit
        self.config, self.clock = current_config, clock
        self.pages = pages
        self.choices: list[FactorChoice] = []
        # Called when a pending sign-in flow becomes a session, so a method can link exactly
        # that session to what it knows about the flow (OIDC: the IdP session for logout).
        self.on_session_issued: list[SessionIssued] = []

    def add_choice(self, choice: FactorChoice) -> None:
        """Offer another second factor (the extension point for passkeys and others)."""
        self.choices = [c for c in self.choices if c.method != choice.method] + [choice]

    def enrolled_choices(self, user_id: int) -> list[FactorChoice]:
        """Synchronous: the factors this user has (call from a thread)."""
        return [c for c in self.choices if c.enrolled(self.engine, user_id)]

    def would_strand(self, user_id: int, removing: str, *, left_of_kind: int = 0) -> bool:
        """Synchronous: would removing one `removing` factor leave a user who must use MFA
        with none? (Their next sign-in could then only enrol a new factor — whoever holds
        the password would.) `left_of_kind`: how many of that kind would remain."""
        if not mfa_mandatory(self.config().mfa, groups_of_user(self.engine, user_id)):
            return False
        others = {c.method for c in self.enrolled_choices(user_id)} - {removing}
        return not others and left_of_kind == 0

    async def may_change_factors(self, session: SessionInfo) -> bool:
        """Adding or removing a factor needs a recent proof — of an existing factor, if any.

        Adding a factor is an account takeover's favourite persistence step; an old or
        password-only session must step up first (`mfa.enrol_max_age`).
        """
        choices = await asyncio.to_thread(self.enrolled_choices, session.user_id)
        proof = session.mfa_time if choices else session.last_proof
        max_age = self.config().mfa.enrol_max_age
        return proof is not None and (self.clock() - proof).total_seconds() <= max_age

    # -- decisions --------------------------------------------------------------------------

    async def after_primary(self, request: Request, proof: PrimaryProof, rd: str) -> Response:
        """Issue the session, or hold the sign-in for a second factor (or first enrolment)."""
        if proof.method not in PRIMARY_METHODS or proof.user.disabled:
            raise ValueError(f"not a usable primary proof: {proof.method}")
        config = self.config()
        methods = with_implied((proof.method, *proof.extra_methods))
        satisfied = bool(set(methods) & PRIMARY_SATISFIES)
        enrolled = await asyncio.to_thread(self.enrolled_choices, proof.user.id)
        groups = await asyncio.to_thread(groups_of_user, self.engine, proof.user.id)
        required = (bool(enrolled) or proof.require_second_factor
                    or mfa_required(config.mfa, request.client_ip, groups))
        now = self.clock()
        if satisfied or not required:
            return await self._issue(
                request, proof.user, methods, auth_time=now,
                mfa_time=now if satisfied else None, idp=proof.idp, rd=rd,
                proofs=proofs_at(methods, now))
        token = await self._start(request, proof.user, mode="signin", method=proof.method,
                                  methods=methods, rd=rd, auth_time=now, idp=proof.idp)
        target = MFA_PATH if enrolled else TOTP_ENROL_PATH
        return Response(303, [("Location", target), ("Cache-Control", "no-store"),
                              ("Set-Cookie", self.flow_cookie(request, token))])

    async def begin_step_up(self, request: Request, session: SessionInfo, rd: str, *,
                            need: str = "") -> Response:
        """Start a step-up flow for an existing session and send the browser to choose
        (only among the factors of kind `need`, when the gateway said which one cures)."""
        token = await self._start(
            request, _user_of(session), mode="stepup", method="", rd=rd,
            methods=tuple(sorted(session.auth_methods)), auth_time=session.auth_time,
            idp=session.idp, session_id=session.session_id)
        location = MFA_PATH + ("?" + urlencode({"need": need}) if need else "")
        return Response(303, [("Location", location), ("Cache-Control", "no-store"),
                              ("Set-Cookie", self.flow_cookie(request, token))])

    async def _start(self, request: Request, user: UserRecord, *, mode: str, method: str,
                     methods: tuple[str, ...], rd: str, auth_time: datetime, idp: str,
                     session_id: str = "") -> str:
        token = secrets.token_urlsafe(32)
        now = self.clock()
        lifetime = timedelta(seconds=self.config().mfa.flow_lifetime)
        await asyncio.to_thread(
            store.create_flow, self.engine, flow_id=_digest(token), user_id=user.id,
            mode=mode, primary_method=method, idp=idp, methods=methods, rd=rd,
            session_id=session_id, agent_hash=agent_hash(request),
            source_ip=request.client_ip, auth_time=auth_time, now=now,
            expires_at=now + lifetime)
        return token

    async def pending(self, request: Request) -> PendingFlow | None:
        """The live flow this browser holds, or None (absent, used, expired, other browser)."""
        token = request.cookies().get(FLOW_COOKIE, "")
        if not _TOKEN_RE.fullmatch(token):
            return None
        record = await asyncio.to_thread(store.load_flow, self.engine, _digest(token))
        if record is None or record.consumed_at is not None:
            return None
        if self.clock() >= record.expires_at:
            return None
        # A flow cookie copied into another browser (or stolen) does not carry the flow over.
        if record.agent_hash != agent_hash(request):
            return None
        if record.mode == "stepup" and not (
                isinstance(request.session, SessionInfo)
                and request.session.session_id == record.session_id):
            return None  # a step-up belongs to the session that started it
        user = await asyncio.to_thread(get_user_by_id, self.engine, record.user_id)
        if user is None or user.disabled:
            return None
        return PendingFlow(
            id=record.id, user=user, primary_method=record.primary_method, rd=record.rd,
            created_at=record.created_at, expires_at=record.expires_at,
            methods_so_far=record.methods, mode=record.mode, auth_time=record.auth_time,
            idp=record.idp, session_id=record.session_id, failures=record.failures)

    async def record_failure(self, flow: PendingFlow) -> bool:
        """Count a wrong second factor; True when the flow is now ended (too many)."""
        count = await asyncio.to_thread(store.record_failure, self.engine, flow.id,
                                        self.clock(), FLOW_MAX_FAILURES)
        return count >= FLOW_MAX_FAILURES

    async def complete(self, request: Request, flow: PendingFlow, method: str) -> Response:
        """The second factor is proven: consume the flow and issue (or rotate) the session."""
        if method not in SECOND_FACTORS:
            raise ValueError(f"not a second factor: {method}")
        consumed = await asyncio.to_thread(store.consume_flow, self.engine, flow.id,
                                           self.clock())
        if not consumed:
            raise FlowEnded("flow already used or expired")
        clear = ("Set-Cookie", self.flow_cookie(request, "", 0))
        if flow.mode == "stepup":
            session = request.session
            if not isinstance(session, SessionInfo) or session.session_id != flow.session_id:
                raise FlowEnded("step-up flow without its session")
            response = await self.step_up(request, session, method, flow.rd)
        else:
            issued: list[SessionInfo] = []
            now = self.clock()
            response = await self._issue(
                request, flow.user, with_implied((*flow.methods_so_far, method)),
                auth_time=flow.auth_time, mfa_time=now, idp=flow.idp, rd=flow.rd,
                issued=issued, proofs=proofs_at(with_implied((method,)), now,
                                                proofs_at(flow.methods_so_far, flow.auth_time)))
            try:
                for callback in self.on_session_issued:
                    await callback(flow.id, issued[0].session_id)
            except Exception:
                # A session whose link could not be recorded could outlive an IdP logout.
                await asyncio.to_thread(self.sessions.revoke_id, issued[0].session_id,
                                        "link-failed")
                raise
        response.headers.append(clear)
        return response

    async def step_up(self, request: Request, session: SessionInfo, method: str,
                      rd: str) -> Response:
        """A live session proved `method` again: replace it by a new id, same expiry.

        Only `method` (and what it implies) gets the new proof time; the others keep theirs,
        so a TOTP now does not make a passkey of hours ago look fresh."""
        now = self.clock()
        methods = with_implied((*sorted(session.auth_methods), method))
        primary = method in PRIMARY_METHODS and method != "webauthn"
        user = await asyncio.to_thread(get_user_by_id, self.engine, session.user_id)
        if user is None or user.disabled:
            raise FlowEnded("user gone or disabled")
        return await self._issue(
            request, user, methods, auth_time=now if primary else session.auth_time,
            mfa_time=session.mfa_time if primary else now, idp=session.idp, rd=rd,
            expires_at=session.expires_at, step_up_of=session, step_up_method=method,
            proofs=proofs_at(with_implied((method,)), now, session.proofs))

    # -- issuing ----------------------------------------------------------------------------

    async def _issue(self, request: Request, user: UserRecord, methods: tuple[str, ...], *,
                     auth_time: datetime, mfa_time: datetime | None, idp: str, rd: str,
                     expires_at: datetime | None = None, step_up_of: SessionInfo | None = None,
                     step_up_method: str = "", issued: list[SessionInfo] | None = None,
                     proofs: Mapping[str, datetime] | None = None) -> Response:
        config = self.config()
        agent = (request.header("user-agent") or "")[:200]
        # Session fixation: whatever session the browser brought is ended, never reused.
        old = request.session if isinstance(request.session, SessionInfo) else None
        brought = request.cookies().get(config.session.cookie_name, "")
        if old is None and brought:
            old = await self.sessions.lookup(brought)
        if old is not None:
            await asyncio.to_thread(self.sessions.revoke_id, old.session_id, "rotated")
        token, info = await asyncio.to_thread(
            lambda: self.sessions.create(user, methods, request.client_ip, agent,
                                         auth_time=auth_time, mfa_time=mfa_time, idp=idp,
                                         expires_at=expires_at, proofs=proofs))
        event: AuditEvent
        if step_up_of is not None:
            event = SessionSteppedUp(user=user.username, method=step_up_method,
                                     session=info.short_id, previous=step_up_of.short_id,
                                     source_ip=request.client_ip)
        else:
            event = SignInSucceeded(user=user.username, source_ip=request.client_ip,
                                    methods=tuple(sorted(methods)), session=info.short_id,
                                    user_agent=agent)
        try:
            await self.audit.append(event)
        except Exception:
            await asyncio.to_thread(self.sessions.revoke_id, info.session_id, "audit-failed")
            raise
        if step_up_of is None:
            metrics.SIGNINS.labels("success").inc()
        if issued is not None:
            issued.append(info)
        max_age = max(0, int((info.expires_at - self.clock()).total_seconds()))
        return Response(303, [
            ("Location", self.safe_target(rd)), ("Cache-Control", "no-store"),
            ("Set-Cookie", self._session_cookie(request, token, max_age)),
        ])

    def safe_target(self, rd: str) -> str:
        """Where to send the browser after sign-in: `rd` when it is a path or an absolute
        URL on a route host or the portal host (`portal.host`), else `/` (open redirect)."""
        config = self.config()
        hosts = {route.host for route in config.routes} | ({config.portal.host} - {""})
        scheme = "https" if config.tls.enabled else "http"
        return safe_redirect(rd, hosts, "/", scheme=scheme)

    def _session_cookie(self, request: Request, value: str, max_age: int) -> str:
        name = self.config().session.cookie_name
        secure = "; Secure" if request.scheme == "https" else ""
        return f"{name}={value}; Path=/; Max-Age={max_age}{secure}; HttpOnly; SameSite=Lax"

    def flow_cookie(self, request: Request, value: str, max_age: int | None = None) -> str:
        if max_age is None:
            max_age = int(self.config().mfa.flow_lifetime)
        secure = "; Secure" if request.scheme == "https" else ""
        return f"{FLOW_COOKIE}={value}; Path=/; Max-Age={max_age}{secure}; HttpOnly; SameSite=Lax"


class FlowEnded(Exception):
    """The pending flow can no longer be completed (used, expired, or its session ended)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _user_of(session: SessionInfo) -> UserRecord:
    """A minimal user value for a step-up flow (only the id is stored)."""
    return UserRecord(id=session.user_id, username=session.username,
                      display_name=session.display_name, email=session.email,
                      password_hash=None, disabled=False, created_at=session.created_at,
                      updated_at=session.created_at, password_changed_at=None)
