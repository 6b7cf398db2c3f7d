"""The second-factor pages: choose a factor, enter a TOTP or recovery code, step up.

All of them act on a *pending flow* (`identity.flow`): without the browser's flow cookie
they do nothing. Second-factor guessing is throttled per account and per source address
(`mfa-account:` / `mfa-ip:` keys, apart from the password counters) and, independently,
each flow dies after `FLOW_MAX_FAILURES` wrong codes, so a stolen password buys at most a
handful of TOTP guesses (about 3·5 / 10^6) before the password must be entered again.
Every POST carries a CSRF token; every failure is audited (`mfa.failure`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from sqlalchemy import Engine

from sekisho.audit.events import MfaFailed, RecoveryCodeUsed
from sekisho.config.model import Config
from sekisho.errors import SekishoError
from sekisho.identity.flow import (
    MFA_PATH,
    STEPUP_PATH,
    TOTP_ENROL_PATH,
    FactorChoice,
    FlowEnded,
    PendingFlow,
    SignInFlows,
)
from sekisho.identity.mfa import TotpFactors
from sekisho.identity.pages import (
    MSG_CSRF,
    MSG_METHOD,
    MSG_TOO_LARGE,
    MSG_UNAVAILABLE,
    N_,
    PREFIX,
    TITLE_ERROR,
    PageKit,
)
from sekisho.identity.principal import SessionInfo
from sekisho.identity.throttle import Throttle, mfa_account_key, mfa_ip_key
from sekisho.services import AuditSink
from sekisho.web import Handler, Request, Response, redirect

TOTP_PATH, RECOVERY_PATH = MFA_PATH + "/totp", MFA_PATH + "/recovery"
SIGNIN_PATH = PREFIX + "/signin"

TITLE_MFA = N_("Second factor")
TITLE_RECOVERY = N_("Use a recovery code")
TITLE_STEPUP = N_("Confirm it is you")
LABEL_TOTP = N_("Enter the code from your authenticator app")
MSG_BAD_CODE = N_("The code is not valid. Check the time on your phone and try again.")
MSG_THROTTLED = N_("Too many attempts. Wait a while before trying again.")
MSG_FLOW_ENDED = N_("This sign-in has expired or was already completed. Please sign in again.")
MSG_TOO_MANY = N_("Too many wrong codes. Please sign in again.")
# `need=` from the gateway (gateway.pep.step_up_location): the one kind of factor that cures
# the denial, mapped to the choice it keeps. A hint for what to offer, not a permission.
NEEDS = {"totp": "totp", "passkey": "webauthn"}
PASSKEYS_PATH = PREFIX + "/passkeys"


def need_of(value: str | None) -> str:
    """A known `need` value, or "" (anything else is ignored, never echoed)."""
    return value if value in NEEDS else ""


def offered(choices: list[FactorChoice], need: str) -> list[FactorChoice]:
    """The enrolled factors worth offering: all of them, or only the one kind that cures."""
    return [c for c in choices if not need or c.method == NEEDS[need]]


@dataclass(slots=True)
class MfaContext:
    current_config: Callable[[], Config]
    engine: Engine
    audit: AuditSink
    clock: Callable[[], datetime]
    pages: PageKit
    flows: SignInFlows
    throttle: Throttle
    factors: TotpFactors


class MfaPages:
    def __init__(self, ctx: MfaContext) -> None:
        self.ctx = ctx
        self.pages = ctx.pages
        self.totp_choice = FactorChoice(method="totp", url=TOTP_PATH, label=LABEL_TOTP,
                                        enrolled=ctx.factors.enrolled)

    # -- shared -----------------------------------------------------------------------------

    def _guard(self, request: Request) -> Response | None:
        """Method and size checks common to every page."""
        if request.method not in ("GET", "HEAD", "POST"):
            return self.pages.message(request, TITLE_ERROR, MSG_METHOD, 405,
                                      [("Allow", "GET, POST")])
        if len(request.body) > self.ctx.current_config().limits.max_form_bytes:
            return self.pages.message(request, TITLE_ERROR, MSG_TOO_LARGE, 413)
        return None

    def ended(self, request: Request, text: str = MSG_FLOW_ENDED, status: int = 400) -> Response:
        return self.pages.message(request, TITLE_ERROR, text, status,
                                  [("Set-Cookie", self.ctx.flows.flow_cookie(request, "", 0))])

    async def audit_failure(self, request: Request, user: str, method: str,
                            reason: str) -> None:
        await self.ctx.audit.append(MfaFailed(user=user, method=method, reason=reason,
                                              source_ip=request.client_ip))

    async def choose_page(self, request: Request, flow: PendingFlow, *, status: int = 200,
                          error: str = "") -> Response:
        need = need_of(request.query_params().get("need"))
        choices = offered(
            await asyncio.to_thread(self.ctx.flows.enrolled_choices, flow.user.id), need)
        # A recovery code proves "a second factor", never a passkey or TOTP in particular.
        recovery = not need and await asyncio.to_thread(self.ctx.factors.has_recovery_codes,
                                                        flow.user.id)
        token, headers = self.pages.issue_csrf(request)
        others = [(c.url, self.pages.gettext(request, c.label)) for c in choices
                  if c.method != "totp"]
        return self.pages.render(
            request, "mfa.html", TITLE_MFA, status=status, error=error, headers=headers,
            csrf=token, username=flow.user.username, stepup=flow.mode == "stepup",
            totp=any(c.method == "totp" for c in choices), others=others, recovery=recovery,
            totp_path=TOTP_PATH, recovery_path=RECOVERY_PATH)

    async def _throttled(self, request: Request, flow: PendingFlow, method: str) -> bool:
        keys = [mfa_account_key(flow.user.username), mfa_ip_key(request.client_ip)]
        verdict = await asyncio.to_thread(self.ctx.throttle.check_keys, keys,
                                          self.ctx.current_config().throttle)
        if verdict.allowed:
            return False
        await self.audit_failure(request, flow.user.username, method, "throttled")
        return True

    async def _wrong(self, request: Request, flow: PendingFlow, method: str) -> bool:
        """Count a wrong code everywhere; True when the flow has ended."""
        keys = [mfa_account_key(flow.user.username), mfa_ip_key(request.client_ip)]
        locks = await asyncio.to_thread(self.ctx.throttle.record_failure_keys, keys,
                                        request.client_ip, self.ctx.current_config().throttle)
        await self.audit_failure(request, flow.user.username, method, "invalid-code")
        for event in locks:
            await self.ctx.audit.append(event)
        return await self.ctx.flows.record_failure(flow)

    async def _finish(self, request: Request, flow: PendingFlow, method: str) -> Response:
        await asyncio.to_thread(self.ctx.throttle.reset_key,
                                mfa_account_key(flow.user.username))
        try:
            return await self.ctx.flows.complete(request, flow, method)
        except FlowEnded:
            await self.audit_failure(request, flow.user.username, method, "flow-ended")
            return self.ended(request)

    def _safe(self, handler: Callable[[Request], Awaitable[Response]]) -> Handler:
        async def run(request: Request) -> Response:
            refused = self._guard(request)
            if refused is not None:
                return refused
            try:
                return await handler(request)
            except SekishoError:
                # Storage or audit unavailable: no session without its record (fail closed).
                return self.pages.message(request, TITLE_ERROR, MSG_UNAVAILABLE, 503)
        return run

    # -- handlers ---------------------------------------------------------------------------

    async def choose(self, request: Request) -> Response:
        flow = await self.ctx.flows.pending(request)
        if flow is None:
            return self.ended(request)
        choices = await asyncio.to_thread(self.ctx.flows.enrolled_choices, flow.user.id)
        if not choices:
            if flow.mode == "signin":
                return redirect(TOTP_ENROL_PATH)  # required but nothing enrolled: enrol now
            return redirect(SIGNIN_PATH + "?" + urlencode({"rd": flow.rd}))
        return await self.choose_page(request, flow)

    async def totp_code(self, request: Request) -> Response:
        if request.method != "POST":
            return redirect(MFA_PATH)
        flow = await self.ctx.flows.pending(request)
        if flow is None:
            return self.ended(request)
        form = request.form()
        if not self.pages.csrf_ok(request, form):
            await self.audit_failure(request, flow.user.username, "totp", "csrf-invalid")
            return await self.choose_page(request, flow, status=403, error=MSG_CSRF)
        if await self._throttled(request, flow, "totp"):
            return await self.choose_page(request, flow, status=429, error=MSG_THROTTLED)
        code = form.get("code", "")[:32]
        ok = await asyncio.to_thread(self.ctx.factors.verify, flow.user.id, code)
        if not ok:
            if await self._wrong(request, flow, "totp"):
                return self.ended(request, MSG_TOO_MANY, 401)
            return await self.choose_page(request, flow, status=401, error=MSG_BAD_CODE)
        return await self._finish(request, flow, "totp")

    async def recovery(self, request: Request) -> Response:
        flow = await self.ctx.flows.pending(request)
        if flow is None:
            return self.ended(request)
        if request.method != "POST":
            return self._recovery_page(request)
        form = request.form()
        if not self.pages.csrf_ok(request, form):
            await self.audit_failure(request, flow.user.username, "recovery", "csrf-invalid")
            return self._recovery_page(request, status=403, error=MSG_CSRF)
        if await self._throttled(request, flow, "recovery"):
            return self._recovery_page(request, status=429, error=MSG_THROTTLED)
        ok, remaining = await asyncio.to_thread(
            self.ctx.factors.use_recovery_code, flow.user.id, form.get("code", "")[:64])
        if not ok:
            if await self._wrong(request, flow, "recovery"):
                return self.ended(request, MSG_TOO_MANY, 401)
            return self._recovery_page(request, status=401, error=MSG_BAD_CODE)
        await self.ctx.audit.append(RecoveryCodeUsed(
            user=flow.user.username, source_ip=request.client_ip, remaining=remaining))
        return await self._finish(request, flow, "recovery")

    def _recovery_page(self, request: Request, *, status: int = 200,
                       error: str = "") -> Response:
        token, headers = self.pages.issue_csrf(request)
        return self.pages.render(request, "recovery.html", TITLE_RECOVERY, status=status,
                                 error=error, headers=headers, csrf=token,
                                 action=RECOVERY_PATH, mfa_path=MFA_PATH)

    async def stepup(self, request: Request) -> Response:
        """An existing session that is too old or too weak proves a factor again."""
        session = request.session if isinstance(request.session, SessionInfo) else None
        params = request.query_params() if request.method != "POST" else request.form()
        rd, need = params.get("rd", "")[:4096], need_of(params.get("need"))
        if session is None:
            return redirect(SIGNIN_PATH + "?" + urlencode({"rd": rd}))
        choices = offered(
            await asyncio.to_thread(self.ctx.flows.enrolled_choices, session.user_id), need)
        # No factor yet: a recent sign-in may enrol one (then prove it); an old one signs in
        # again first. Sending it straight back to sign-in would loop on an MFA-only route.
        # Only a passkey cures: the user registers one on the passkeys page (which asks for
        # a recent proof of an existing factor first), then opens the app again.
        enrol_url = ""
        if not choices:
            if need == "passkey":
                enrol_url = PASSKEYS_PATH
            elif await self.ctx.flows.may_change_factors(session):
                enrol_url = TOTP_ENROL_PATH
        signin_url = SIGNIN_PATH + "?" + urlencode({"rd": rd})
        if request.method == "POST" and not self.pages.csrf_ok(request, request.form()):
            status, error = 403, MSG_CSRF
        elif request.method == "POST":
            if not choices:
                return redirect(enrol_url or signin_url)
            return await self.ctx.flows.begin_step_up(request, session, rd, need=need)
        else:
            status, error = 200, ""
        token, headers = self.pages.issue_csrf(request)
        return self.pages.render(
            request, "stepup.html", TITLE_STEPUP, status=status, error=error, headers=headers,
            csrf=token, rd=rd, need=need, action=STEPUP_PATH, has_factor=bool(choices),
            enrol_url=enrol_url, signin_url=signin_url)

    def handlers(self) -> dict[str, Handler]:
        return {MFA_PATH: self._safe(self.choose), TOTP_PATH: self._safe(self.totp_code),
                RECOVERY_PATH: self._safe(self.recovery), STEPUP_PATH: self._safe(self.stepup)}
