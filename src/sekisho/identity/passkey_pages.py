"""Passkey pages: the second factor on `/.sekisho/mfa`, passwordless sign-in, and the script.

- `/.sekisho/passkeys/verify` proves a passkey inside a pending flow (sign-in or step-up)
  and hands over to `SignInFlows.complete` with "webauthn" or "webauthn_uv".
- `/.sekisho/passkeys/signin` (only with `webauthn.passwordless: true`) signs in with a
  discoverable passkey alone; user verification is then always required, so the passkey is
  possession *and* PIN/biometrics, and `SignInFlows.after_primary` sees "webauthn_uv".
Failed assertions are throttled with the TOTP counters (`mfa-account:` / `mfa-ip:`), end the
flow after `FLOW_MAX_FAILURES`, and are audited. These pages run one script,
`/.sekisho/static/webauthn.js`, so they alone get `script-src 'self'` in their CSP; every
other page keeps the global `default-src 'none'` policy (an injected script runs nowhere).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sekisho.audit.events import MfaFailed, PasskeySignCountRegressed, PasskeySignInFailed
from sekisho.config.model import Config
from sekisho.errors import SekishoError
from sekisho.identity import csrf as csrf_mod
from sekisho.identity.extensions import IdentityContext
from sekisho.identity.flow import MFA_PATH, FactorChoice, FlowEnded, PendingFlow, PrimaryProof
from sekisho.identity.pages import (
    MSG_CSRF,
    MSG_METHOD,
    MSG_TOO_LARGE,
    MSG_UNAVAILABLE,
    N_,
    PREFIX,
    TITLE_ERROR,
)
from sekisho.identity.passkeys import Outcome, Passkeys, RelyingParty, binding_of, relying_party
from sekisho.identity.throttle import mfa_account_key, mfa_ip_key
from sekisho.storage.secrets_store import get_or_create_secret
from sekisho.storage.users import get_user_by_id, groups_of_user
from sekisho.web import SECURITY_HEADERS, Handler, Request, Response, redirect

VERIFY_PATH = PREFIX + "/passkeys/verify"
PASSWORDLESS_PATH = PREFIX + "/passkeys/signin"
SCRIPT = PREFIX + "/static/webauthn.js"
SCRIPT_BYTES = (Path(__file__).parent / "static" / "webauthn.js").read_bytes()
SCRIPT_URL = f"{SCRIPT}?v={hashlib.sha256(SCRIPT_BYTES).hexdigest()[:10]}"
# The global policy plus this origin's own scripts: no inline script, no eval, no fetch.
PAGE_CSP = next(v for k, v in SECURITY_HEADERS if k == "Content-Security-Policy").replace(
    "default-src 'none';", "default-src 'none'; script-src 'self';")

LABEL_CHOICE = N_("Use a passkey or security key")
TITLE_VERIFY = N_("Confirm with your passkey")
TITLE_PASSWORDLESS = N_("Sign in with a passkey")
BUTTON_USE = N_("Use my passkey")
MSG_INTRO_VERIFY = N_("Signing in as %(name)s. Use the passkey or security key you registered.")
MSG_INTRO_PASSWORDLESS = N_("Use a passkey registered for your account. Your device will ask "
                            "for its PIN, fingerprint or face.")
MSG_FAILED = N_("The passkey could not be verified. Try again, or choose another way.")
MSG_THROTTLED = N_("Too many attempts. Wait a while before trying again.")
MSG_NOT_HERE = N_("Passkeys cannot be used at this address.")
MSG_PASSWORDLESS_OFF = N_("Sign-in with a passkey alone is not enabled.")
MSG_FLOW_ENDED = N_("This sign-in has expired or was already completed. Please sign in again.")
MSG_TOO_MANY = N_("Too many failed attempts. Please sign in again.")
BACK_OTHER = N_("Choose another way")
BACK_PASSWORD = N_("Sign in with a password instead")


class PasskeyBase:
    """Shared plumbing of the passkey pages (guards, CSP, RP, UV rule, ceremony page)."""

    def __init__(self, context: IdentityContext, passkeys: Passkeys) -> None:
        self.ctx, self.pages, self.passkeys = context, context.pages, passkeys

    def safe(self, handler: Callable[[Request], Awaitable[Response]]) -> Handler:
        async def run(request: Request) -> Response:
            if request.method not in ("GET", "HEAD", "POST"):
                return self.pages.message(request, TITLE_ERROR, MSG_METHOD, 405,
                                          [("Allow", "GET, POST")])
            if len(request.body) > self.ctx.current_config().limits.max_form_bytes:
                return self.pages.message(request, TITLE_ERROR, MSG_TOO_LARGE, 413)
            try:
                return await handler(request)
            except SekishoError:
                # Storage or audit unavailable: no session, no change (fail closed).
                return self.pages.message(request, TITLE_ERROR, MSG_UNAVAILABLE, 503)
        return run

    def rp(self, request: Request) -> RelyingParty | None:
        return relying_party(self.ctx.current_config(), request.host)

    def uv_required(self, user_id: int) -> bool:
        """Synchronous: `user_verification: required`, or a member of `require_uv_groups`."""
        settings = self.ctx.current_config().webauthn
        if settings.user_verification == "required":
            return True
        return bool(set(groups_of_user(self.ctx.engine, user_id))
                    & set(settings.require_uv_groups))

    def ceremony(self, request: Request, template: str, title: str, *, csrf: str,
                 headers: list[tuple[str, str]], status: int = 200, error: str = "",
                 **context: Any) -> Response:
        response = self.pages.render(request, template, title, status=status, error=error,
                                     headers=headers, csrf=csrf, script_url=SCRIPT_URL,
                                     **context)
        response.set_header("Content-Security-Policy", PAGE_CSP)
        return response

    async def script(self, request: Request) -> Response:
        return Response(200, [
            ("Content-Type", "text/javascript; charset=utf-8"),
            ("Cache-Control", "public, max-age=31536000, immutable"),
            ("X-Content-Type-Options", "nosniff"),
        ], b"" if request.method == "HEAD" else SCRIPT_BYTES)


class PasskeySignIn(PasskeyBase):
    """The second-factor page and the passwordless page."""

    def choice(self) -> FactorChoice:
        return FactorChoice(method="webauthn", url=VERIFY_PATH, label=LABEL_CHOICE,
                            enrolled=self.passkeys.enrolled)

    def _ended(self, request: Request, text: str = MSG_FLOW_ENDED,
               status: int = 400) -> Response:
        return self.pages.message(request, TITLE_ERROR, text, status,
                                  [("Set-Cookie", self.ctx.flows.flow_cookie(request, "", 0))])

    async def _verify_page(self, request: Request, flow: PendingFlow, rp: RelyingParty,
                           uv: bool, *, status: int = 200, error: str = "") -> Response:
        options = await asyncio.to_thread(
            self.passkeys.authentication_options, rp, user_id=flow.user.id, purpose="mfa",
            binding=binding_of("flow", flow.id), uv_required=uv)
        token, headers = self.pages.issue_csrf(request)
        intro = self.pages.gettext(request, MSG_INTRO_VERIFY) % {"name": flow.user.username}
        return self.ceremony(
            request, "passkey.html", TITLE_VERIFY, csrf=token, headers=headers, status=status,
            error=error, intro=intro, stepup=flow.mode == "stepup", mode="get",
            options=options, action=VERIFY_PATH, button=self.pages.gettext(request, BUTTON_USE),
            back_url=MFA_PATH, back_label=self.pages.gettext(request, BACK_OTHER))

    async def _keys_blocked(self, keys: list[str]) -> bool:
        verdict = await asyncio.to_thread(self.ctx.throttle.check_keys, keys,
                                          self.ctx.current_config().throttle)
        return not verdict.allowed

    async def _count_failure(self, request: Request, keys: list[str]) -> None:
        locks = await asyncio.to_thread(self.ctx.throttle.record_failure_keys, keys,
                                        request.client_ip, self.ctx.current_config().throttle)
        for event in locks:
            await self.ctx.audit.append(event)

    async def _regression(self, request: Request, username: str, outcome: Outcome) -> None:
        record = outcome.credential
        if outcome.reason == "sign-count" and record is not None:
            await self.ctx.audit.append(PasskeySignCountRegressed(
                user=username, credential=f"{record.id}:{record.name}",
                stored=record.sign_count, received=outcome.received_count,
                source_ip=request.client_ip))

    async def verify(self, request: Request) -> Response:
        flow = await self.ctx.flows.pending(request)
        if flow is None:
            return self._ended(request)
        rp = self.rp(request)
        if rp is None:
            return self.pages.message(request, TITLE_ERROR, MSG_NOT_HERE, 400)
        if not await asyncio.to_thread(self.passkeys.enrolled, self.ctx.engine, flow.user.id):
            return redirect(MFA_PATH)
        uv = await asyncio.to_thread(self.uv_required, flow.user.id)
        if request.method != "POST":
            return await self._verify_page(request, flow, rp, uv)
        name = flow.user.username

        async def failed(reason: str, status: int, error: str = MSG_FAILED) -> Response:
            await self.ctx.audit.append(MfaFailed(user=name, method="webauthn", reason=reason,
                                                  source_ip=request.client_ip))
            return await self._verify_page(request, flow, rp, uv, status=status, error=error)

        form = request.form()
        if not self.pages.csrf_ok(request, form):
            return await failed("csrf-invalid", 403, MSG_CSRF)
        keys = [mfa_account_key(name), mfa_ip_key(request.client_ip)]
        if await self._keys_blocked(keys):
            return await failed("throttled", 429, MSG_THROTTLED)
        outcome = await asyncio.to_thread(
            self.passkeys.verify_assertion, rp, credential_json=form.get("credential", ""),
            purpose="mfa", binding=binding_of("flow", flow.id), uv_required=uv,
            user_id=flow.user.id)
        if not outcome.ok:
            await self._regression(request, name, outcome)
            await self._count_failure(request, keys)
            if await self.ctx.flows.record_failure(flow):
                await self.ctx.audit.append(MfaFailed(
                    user=name, method="webauthn", reason=outcome.reason,
                    source_ip=request.client_ip))
                return self._ended(request, MSG_TOO_MANY, 401)
            return await failed(outcome.reason, 401)
        await asyncio.to_thread(self.ctx.throttle.reset_key, mfa_account_key(name))
        method = "webauthn_uv" if outcome.user_verified else "webauthn"
        try:
            return await self.ctx.flows.complete(request, flow, method)
        except FlowEnded:
            await self.ctx.audit.append(MfaFailed(user=name, method="webauthn",
                                                  reason="flow-ended",
                                                  source_ip=request.client_ip))
            return self._ended(request)

    # -- passwordless -----------------------------------------------------------------------

    def _browser(self, request: Request) -> tuple[str, list[tuple[str, str]]]:
        """The pre-session cookie value this browser holds, set now if it had none."""
        value = request.cookies().get(csrf_mod.PRE_SESSION_COOKIE, "")
        if value and len(value) <= 64:
            return value, []
        value = csrf_mod.new_pre_session_value()
        return value, [("Set-Cookie", csrf_mod.pre_session_cookie(
            value, secure=self.pages.secure(request)))]

    @staticmethod
    def _browser_binding(request: Request, value: str) -> str:
        return binding_of("browser", value + "|" + (request.header("user-agent") or "")[:200])

    async def _passwordless_page(self, request: Request, rp: RelyingParty, rd: str, *,
                                 status: int = 200, error: str = "") -> Response:
        value, headers = self._browser(request)
        options = await asyncio.to_thread(
            self.passkeys.authentication_options, rp, user_id=None, purpose="passwordless",
            binding=self._browser_binding(request, value), uv_required=True)
        token = self.pages.csrf.issue(csrf_mod.cookie_binding(value))
        return self.ceremony(
            request, "passkey.html", TITLE_PASSWORDLESS, csrf=token, headers=headers,
            status=status, error=error,
            intro=self.pages.gettext(request, MSG_INTRO_PASSWORDLESS), mode="get",
            options=options, action=PASSWORDLESS_PATH, rd=rd,
            button=self.pages.gettext(request, BUTTON_USE),
            back_url=PREFIX + "/signin", back_label=self.pages.gettext(request, BACK_PASSWORD))

    async def passwordless(self, request: Request) -> Response:
        if not self.ctx.current_config().webauthn.passwordless:
            return self.pages.message(request, TITLE_ERROR, MSG_PASSWORDLESS_OFF, 404)
        rp = self.rp(request)
        if rp is None:
            return self.pages.message(request, TITLE_ERROR, MSG_NOT_HERE, 400)
        if request.method != "POST":
            rd = request.query_params().get("rd", "")[:4096]
            return await self._passwordless_page(request, rp, rd)
        form = request.form()
        rd = form.get("rd", "")[:4096]
        ip_keys = [mfa_ip_key(request.client_ip)]

        async def failed(reason: str, status: int, user: str = "",
                         error: str = MSG_FAILED) -> Response:
            await self.ctx.audit.append(PasskeySignInFailed(
                reason=reason, source_ip=request.client_ip, user=user))
            return await self._passwordless_page(request, rp, rd, status=status, error=error)

        if not self.pages.csrf_ok(request, form):
            return await failed("csrf-invalid", 403, error=MSG_CSRF)
        if await self._keys_blocked(ip_keys):
            return await failed("throttled", 429, error=MSG_THROTTLED)
        value = request.cookies().get(csrf_mod.PRE_SESSION_COOKIE, "")
        outcome = await asyncio.to_thread(
            self.passkeys.verify_assertion, rp, credential_json=form.get("credential", ""),
            purpose="passwordless", binding=self._browser_binding(request, value),
            uv_required=True)
        record = outcome.credential
        user = None if record is None else await asyncio.to_thread(
            get_user_by_id, self.ctx.engine, record.user_id)
        name = user.username if user is not None else ""
        account_keys = [mfa_account_key(name)] if name else []
        if account_keys and await self._keys_blocked(account_keys):
            return await failed("throttled", 429, name, MSG_THROTTLED)
        if not outcome.ok or user is None or user.disabled:
            await self._regression(request, name, outcome)
            await self._count_failure(request, ip_keys + account_keys)
            reason = outcome.reason or "disabled"
            return await failed(reason, 401, name)
        await asyncio.to_thread(self.ctx.throttle.reset_key, mfa_account_key(name))
        proof = PrimaryProof(user, "webauthn", extra_methods=("webauthn_uv",))
        return await self.ctx.flows.after_primary(request, proof, rd)


def build_handlers(context: IdentityContext) -> Mapping[str, Handler]:
    """Every passkey handler (an `extensions.BUILDERS` entry); offers the MFA choice."""
    from sekisho.identity.passkey_manage import PasskeyManagement

    passkeys = Passkeys(context.engine, get_or_create_secret(context.engine, "webauthn"),
                        context.clock)
    signin = PasskeySignIn(context, passkeys)
    context.flows.add_choice(signin.choice())
    manage = PasskeyManagement(context, passkeys)
    return {VERIFY_PATH: signin.safe(signin.verify),
            PASSWORDLESS_PATH: signin.safe(signin.passwordless),
            SCRIPT: signin.script, **manage.handlers()}


def signin_link(config: Config, rd: str = "") -> str:
    """The sign-in page's "sign in with a passkey" link, or "" when passwordless is off."""
    if not config.webauthn.passwordless:
        return ""
    return PASSWORDLESS_PATH + ("?" + urlencode({"rd": rd}) if rd else "")
