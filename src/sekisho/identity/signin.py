"""The sign-in and sign-out pages under `/.sekisho/`, as plain `Request -> Response` handlers.

One rule shapes this module: a failed sign-in looks the same whatever the cause. Unknown
user, wrong password, disabled account and a throttled key all get the same status and the
same page (only the fresh CSRF token differs), and the first three do the same argon2 work,
so neither the body nor the timing tells an attacker which accounts exist. Each success
issues a brand-new session and revokes any session the browser brought (session fixation).
Every state-changing form carries a CSRF token. Durable audit events are committed before
the response; if that fails the sign-in fails (fail closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from sekisho.audit.events import SignedOut, SignInFailed
from sekisho.config.model import Config
from sekisho.errors import SekishoError
from sekisho.identity import csrf as csrf_mod
from sekisho.identity import extensions, oidc, passkey_pages
from sekisho.identity.csrf import CsrfProtector
from sekisho.identity.enrolment import Enrolment
from sekisho.identity.extensions import HandlerBuilder, IdentityContext
from sekisho.identity.flow import PrimaryProof, SignInFlows
from sekisho.identity.mfa import TotpFactors
from sekisho.identity.mfa_pages import MfaContext, MfaPages
from sekisho.identity.pages import (
    CSS,
    CSS_BYTES,
    MSG_CSRF,
    MSG_METHOD,
    MSG_TOO_LARGE,
    MSG_UNAVAILABLE,
    N_,
    PREFIX,
    TITLE_ERROR,
    PageKit,
)
from sekisho.identity.passwords import PasswordHasher
from sekisho.identity.principal import SessionInfo
from sekisho.identity.security_page import SecurityPage
from sekisho.identity.sessions import SessionManager
from sekisho.identity.throttle import Throttle
from sekisho.observability import metrics
from sekisho.services import AuditSink
from sekisho.storage import users
from sekisho.storage.secrets_store import get_or_create_secret
from sekisho.web import Handler, Request, Response

if TYPE_CHECKING:
    from sekisho.devices.trust import DeviceTrust
    from sekisho.runtime import Runtime

SIGNIN, SIGNOUT = PREFIX + "/signin", PREFIX + "/signout"
_MAX_NAME = 128


MSG_FAILED = N_("Sign-in failed. Check your user name and password. After repeated failures, "
                "wait a while before trying again.")
MSG_SIGNED_OUT = N_("You have signed out. Close the browser if you are on a shared computer.")
TITLE_SIGNIN, TITLE_SIGNOUT = N_("Sign in"), N_("Sign out")
TITLE_SIGNED_OUT = N_("Signed out")


class _Pages(PageKit):
    """Everything the handlers share; built once by `build_signin_handlers`."""

    def __init__(self, *, current_config: Callable[[], Config], engine: Engine,
                 sessions: SessionManager, audit: AuditSink, clock: Callable[[], datetime],
                 hasher: PasswordHasher, csrf: CsrfProtector, flows: SignInFlows) -> None:
        super().__init__(current_config=current_config, csrf=csrf)
        self.engine, self.sessions = engine, sessions
        self.audit, self.clock, self.hasher, self.flows = audit, clock, hasher, flows
        self.throttle = Throttle(engine, clock)

    def signin_page(self, request: Request, *, status: int = 200, error: str = "",
                    username: str = "", rd: str = "") -> Response:
        token, headers = self.issue_csrf(request)
        signed_in = request.session.username if isinstance(request.session, SessionInfo) else ""
        return self.render(request, "signin.html", TITLE_SIGNIN, status=status, error=error,
                           headers=headers, csrf=token, rd=rd, username=username,
                           signed_in_as=signed_in,
                           idp_buttons=oidc.signin_buttons(self.config(), rd),
                           passkey_url=passkey_pages.signin_link(self.config(), rd))

    # -- handlers ---------------------------------------------------------------------------

    async def signin(self, request: Request) -> Response:
        if request.method in ("GET", "HEAD"):
            rd = request.query_params().get("rd", "")[:4096]
            # A route that names its IdP (`routes[].idp`) signs in there directly.
            direct = oidc.direct_signin_location(self.config(), rd)
            if direct is not None:
                return Response(303, [("Location", direct), ("Cache-Control", "no-store")])
            return self.signin_page(request, rd=rd)
        if request.method != "POST":
            return self.message(request, TITLE_ERROR, MSG_METHOD, 405, [("Allow", "GET, POST")])
        config = self.config()
        if len(request.body) > config.limits.max_form_bytes:
            return self.message(request, TITLE_ERROR, MSG_TOO_LARGE, 413)
        form = request.form()
        username = form.get("username", "").strip()[:_MAX_NAME]
        rd = form.get("rd", "")[:4096]
        try:
            return await self._signin_post(request, config, form, username, rd)
        except SekishoError:
            # Storage or audit unavailable: no session without its audit record (fail closed).
            return self.message(request, TITLE_ERROR, MSG_UNAVAILABLE, 503)

    async def _signin_post(self, request: Request, config: Config, form: dict[str, str],
                           username: str, rd: str) -> Response:
        agent = (request.header("user-agent") or "")[:200]
        ip = request.client_ip

        async def fail(reason: str, status: int = 401, error: str = MSG_FAILED) -> Response:
            metrics.SIGNINS.labels(reason).inc()
            await self.audit.append(SignInFailed(user=username[:64], source_ip=ip,
                                                 reason=reason, user_agent=agent))
            return self.signin_page(request, status=status, error=error, username=username,
                                    rd=rd)

        if not self.csrf.verify(form.get(csrf_mod.FIELD), self.bindings(request)):
            return await fail("csrf-invalid", 403, MSG_CSRF)
        settings = config.throttle
        verdict = await asyncio.to_thread(self.throttle.check, username, ip, settings)
        if not verdict.allowed:
            return await fail("throttled")  # the password is not even checked
        user = await asyncio.to_thread(users.get_user_by_name, self.engine, username) \
            if username else None
        password = form.get("password", "")[:4096]
        stored = user.password_hash if user is not None else None
        ok = await asyncio.to_thread(self.hasher.verify, stored, password)
        if user is None or not ok or user.disabled:
            locks = await asyncio.to_thread(self.throttle.record_failure, username, ip, settings)
            reason = "account-disabled" if (user is not None and ok) else "invalid-credentials"
            response = await fail(reason)
            for event in locks:
                await self.audit.append(event)
            return response
        return await self._succeed(request, config, user, password=password, rd=rd)

    async def _succeed(self, request: Request, config: Config, user: users.UserRecord, *,
                       password: str, rd: str) -> Response:
        if user.password_hash and self.hasher.needs_rehash(user.password_hash):
            new_hash = await asyncio.to_thread(self.hasher.hash, password)
            await asyncio.to_thread(users.set_password_hash, self.engine, user.username,
                                    new_hash)
        await asyncio.to_thread(self.throttle.reset_account, user.username)
        # The session (or the second-factor step) is decided in one place for every method.
        return await self.flows.after_primary(request, PrimaryProof(user, "pwd"), rd)

    async def signout(self, request: Request) -> Response:
        session = request.session if isinstance(request.session, SessionInfo) else None
        if request.method in ("GET", "HEAD"):
            token, headers = self.issue_csrf(request)
            # A federated session signs out at its IdP too (RP-initiated logout).
            action = oidc.SIGNOUT_PATH if session is not None and session.idp else SIGNOUT
            return self.render(request, "signout.html", TITLE_SIGNOUT, headers=headers,
                               csrf=token, signed_in_as=session.username if session else "",
                               signout_action=action)
        if request.method != "POST":
            return self.message(request, TITLE_ERROR, MSG_METHOD, 405, [("Allow", "GET, POST")])
        if len(request.body) > self.config().limits.max_form_bytes:
            return self.message(request, TITLE_ERROR, MSG_TOO_LARGE, 413)
        if not self.csrf.verify(request.form().get(csrf_mod.FIELD), self.bindings(request)):
            # Forged sign-out (CSRF) would be a nuisance attack; refuse it.
            token, headers = self.issue_csrf(request)
            return self.render(request, "signout.html", TITLE_SIGNOUT, status=403,
                               error=MSG_CSRF, headers=headers, csrf=token,
                               signed_in_as=session.username if session else "")
        if session is not None:
            try:
                await asyncio.to_thread(self.sessions.revoke_id, session.session_id, "signout")
                await self.audit.append(SignedOut(user=session.username,
                                                  session=session.short_id,
                                                  source_ip=request.client_ip))
            except SekishoError:
                return self.message(request, TITLE_ERROR, MSG_UNAVAILABLE, 503)
        clear = ("Set-Cookie", self.session_cookie(request, "", 0))
        return self.message(request, TITLE_SIGNED_OUT, MSG_SIGNED_OUT, 200, [clear])

    async def stylesheet(self, request: Request) -> Response:
        return Response(200, [
            ("Content-Type", "text/css; charset=utf-8"),
            ("Cache-Control", "public, max-age=31536000, immutable"),
            ("X-Content-Type-Options", "nosniff"),
        ], b"" if request.method == "HEAD" else CSS_BYTES)


def build_signin_handlers(
    *, current_config: Callable[[], Config], engine: Engine, sessions: SessionManager,
    audit: AuditSink, clock: Callable[[], datetime] | None = None,
    hasher: PasswordHasher | None = None, csrf: CsrfProtector | None = None,
    builders: Iterable[HandlerBuilder] | None = None, device_trust: DeviceTrust | None = None,
    current_runtime: Callable[[], Runtime] | None = None,
) -> dict[str, Handler]:
    """Every identity handler keyed by exact path (password, MFA, and `extensions.BUILDERS`).

    Each dispatches on the method (405 for others). The CSRF key is the installation secret
    "csrf" and the TOTP key derives from the installation secret "mfa", unless given.
    """
    clock = clock or (lambda: datetime.now(UTC))
    kit = PageKit(current_config=current_config,
                  csrf=csrf or CsrfProtector(get_or_create_secret(engine, "csrf")))
    flows = SignInFlows(engine=engine, sessions=sessions, audit=audit,
                        current_config=current_config, clock=clock, pages=kit)
    pages = _Pages(
        current_config=current_config, engine=engine, sessions=sessions, audit=audit,
        clock=clock, hasher=hasher or PasswordHasher(), csrf=kit.csrf, flows=flows)
    factors = TotpFactors(engine, get_or_create_secret(engine, "mfa"), clock)
    mfa_ctx = MfaContext(current_config=current_config, engine=engine, audit=audit,
                         clock=clock, pages=kit, flows=flows, throttle=pages.throttle,
                         factors=factors)
    mfa = MfaPages(mfa_ctx)
    flows.add_choice(mfa.totp_choice)
    handlers: dict[str, Handler] = {
        SIGNIN: pages.signin, SIGNOUT: pages.signout, CSS: pages.stylesheet,
        **mfa.handlers(), **Enrolment(mfa_ctx, mfa).handlers(),
        **SecurityPage(mfa_ctx, mfa).handlers()}
    context = IdentityContext(current_config=current_config, engine=engine,
                              sessions=sessions, audit=audit, clock=clock, pages=kit,
                              flows=flows, throttle=pages.throttle,
                              device_trust=device_trust, current_runtime=current_runtime)
    for build in (extensions.BUILDERS if builders is None else builders):
        for path, handler in build(context).items():
            if path in handlers:
                raise ValueError(f"two identity handlers for {path}")
            handlers[path] = handler
    return handlers
