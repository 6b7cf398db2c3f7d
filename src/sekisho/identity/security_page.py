"""The user's own "my security" page `/.sekisho/security`: factors at a glance, TOTP removal
and recovery-code renewal, my devices and their posture, my sessions (sign out the others)
and my recent sign-ins.

It lists the passkeys (managed on `/.sekisho/passkeys`), whether TOTP is set up, and how many
unused recovery codes remain. Removing TOTP or renewing the recovery codes changes how the
account can be entered, so both need the same *recent* proof as enrolment
(`SignInFlows.may_change_factors`); an old or stolen session is sent to step up first and
cannot quietly strip the owner's factor or mint itself fresh recovery codes (persistence
after account takeover). Renewing replaces every previous code at once, so a leaked sheet
stops working immediately. A user whom configuration requires to use MFA (`mfa.require_remote`,
`mfa.require_groups`) cannot remove their last factor — otherwise their next sign-in would
force first-use enrolment right after the password, which a password thief could complete
with their own phone. Every POST carries a CSRF token; every change is audited
(`FactorChanged`, actions "remove" and "renew"; `SessionRevoked` for sessions ended here).

Signing out other sessions needs no recent proof (it only reduces access: `my_sessions`).
The devices (`my_devices`) and sign-ins (`my_signins`) sections only read; a storage or
audit failure anywhere answers 503 (fail closed), never a page with a section missing.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from sekisho.audit.events import FactorChanged
from sekisho.identity.flow import STEPUP_PATH, TOTP_ENROL_PATH, mfa_mandatory
from sekisho.identity.i18n import choose_language
from sekisho.identity.mfa_pages import SIGNIN_PATH, MfaContext, MfaPages
from sekisho.identity.my_devices import STATUS, STATUS_HELP, my_devices
from sekisho.identity.my_sessions import my_sessions, sign_out_one, sign_out_others
from sekisho.identity.my_signins import METHODS, recent_signins
from sekisho.identity.pages import MSG_CSRF, N_, PREFIX
from sekisho.identity.principal import SessionInfo
from sekisho.identity.security_notices import recent_notices
from sekisho.storage import webauthn as passkey_store
from sekisho.storage.users import groups_of_user
from sekisho.web import Handler, Request, Response, redirect

SECURITY_PATH = PREFIX + "/security"
REMOVE_TOTP_PATH = SECURITY_PATH + "/totp/remove"
RENEW_CODES_PATH = SECURITY_PATH + "/recovery/renew"
SIGNOUT_OTHERS_PATH = SECURITY_PATH + "/sessions/others"
SIGNOUT_ONE_PATH = SECURITY_PATH + "/sessions/one"
PASSKEYS_PATH = PREFIX + "/passkeys"

TITLE_SECURITY = N_("My security")
TITLE_CODES = N_("Your recovery codes")
NOTICES = {"totp-removed": N_("The authenticator app was removed."),
           "signed-out-others": N_("Your other sessions were signed out."),
           "signed-out-one": N_("The session was signed out."),
           "no-others": N_("You had no other sessions.")}
MSG_NO_SESSION = N_("You have no such session. It may have ended already.")
MSG_CURRENT = N_("This is the session you are using now. Use \"Sign out\" to end it.")
MSG_LAST_FACTOR = N_("You must keep at least one second factor, because your sign-ins require "
                     "multi-factor authentication. Register a passkey first, then remove "
                     "the authenticator app.")
MSG_NO_TOTP = N_("No authenticator app is set up.")
MSG_NO_FACTOR = N_("Recovery codes need a second factor. Set up an authenticator app or a "
                   "passkey first.")


class SecurityPage:
    def __init__(self, ctx: MfaContext, mfa: MfaPages) -> None:
        self.ctx, self.mfa, self.pages = ctx, mfa, ctx.pages

    @staticmethod
    def _session(request: Request) -> SessionInfo | None:
        return request.session if isinstance(request.session, SessionInfo) else None

    @staticmethod
    def _stepup_url() -> str:
        return STEPUP_PATH + "?" + urlencode({"rd": SECURITY_PATH})

    def _facts(self, user_id: int) -> dict[str, object]:
        """Synchronous: what the page shows and the rules decide on (call from a thread)."""
        enrolled = {c.method for c in self.ctx.flows.enrolled_choices(user_id)}
        groups = groups_of_user(self.ctx.engine, user_id)
        return {
            "totp": "totp" in enrolled,
            "others": enrolled - {"totp"},
            "passkeys": [r.name for r in passkey_store.list_credentials(self.ctx.engine,
                                                                         user_id)],
            "codes_left": self.ctx.factors.unused_recovery_codes(user_id),
            "mandatory": mfa_mandatory(self.ctx.current_config().mfa, groups),
        }

    def _account(self, session: SessionInfo) -> dict[str, Any]:
        """Synchronous: the devices, sessions and sign-ins sections (call from a thread)."""
        config, now = self.ctx.current_config(), self.ctx.clock()
        return {"devices": my_devices(self.ctx.engine, session.user_id, config.devices, now),
                "sessions": my_sessions(self.ctx.flows.sessions, session),
                "signins": recent_signins(self.ctx.engine, session.username, now),
                "changes": recent_notices(self.ctx.engine, session.username, now)}

    async def _page(self, request: Request, session: SessionInfo, *, status: int = 200,
                    error: str = "", notice: str = "") -> Response:
        facts = await asyncio.to_thread(self._facts, session.user_id)
        account = await asyncio.to_thread(self._account, session)
        changes = account["changes"]
        gettext = self.pages.gettext
        config = self.ctx.current_config()
        lang, _ = choose_language(request, config.default_language)
        zone = config.timezone
        recent = await self.ctx.flows.may_change_factors(session)
        token, headers = self.pages.issue_csrf(request)
        return self.pages.render(
            request, "security.html", TITLE_SECURITY, status=status, error=error,
            headers=headers, csrf=token, username=session.username,
            notice=self.pages.gettext(request, notice) if notice else "",
            totp=facts["totp"], passkeys=facts["passkeys"], codes_left=facts["codes_left"],
            has_factor=bool(facts["totp"] or facts["others"]),
            last_factor=bool(facts["mandatory"] and facts["totp"] and not facts["others"]),
            changes=[(c.local_time(), gettext(request, c.what),
                      gettext(request, c.detail) if c.detail else "") for c in changes],
            recent=recent, stepup_url=self._stepup_url(), passkeys_url=PASSKEYS_PATH,
            enrol_url=TOTP_ENROL_PATH, remove_action=REMOVE_TOTP_PATH,
            renew_action=RENEW_CODES_PATH, devices=account["devices"],
            status_labels=STATUS, status_help=STATUS_HELP, sessions=account["sessions"],
            signins=account["signins"], methods=METHODS,
            when=lambda moment: _local(moment, zone, lang),
            # Message ids chosen at run time, translated as plain text so autoescaping
            # still applies (Jinja's `_` marks its result safe).
            t=lambda message: gettext(request, message) if message else "",
            others_action=SIGNOUT_OTHERS_PATH, one_action=SIGNOUT_ONE_PATH)

    async def show(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return redirect(SIGNIN_PATH + "?" + urlencode({"rd": SECURITY_PATH}))
        notice = NOTICES.get(request.query_params().get("done", ""), "")
        return await self._page(request, session, notice=notice)

    async def _posted(self, request: Request) -> SessionInfo | Response:
        """The session behind a genuine POST from this page, or the answer to give instead."""
        session = self._session(request)
        if session is None:
            return redirect(SIGNIN_PATH + "?" + urlencode({"rd": SECURITY_PATH}))
        if request.method != "POST":
            return redirect(SECURITY_PATH)
        if not self.pages.csrf_ok(request, request.form()):
            # A forged POST from another site (CSRF) must not end or change anything.
            await self.mfa.audit_failure(request, session.username, "security",
                                         "csrf-invalid")
            return await self._page(request, session, status=403, error=MSG_CSRF)
        return session

    async def _checked(self, request: Request) -> SessionInfo | Response:
        """The session allowed to change its factors now, or the answer to give instead."""
        session = await self._posted(request)
        if isinstance(session, Response):
            return session
        if not await self.ctx.flows.may_change_factors(session):
            # Too old: prove a factor again, then come back (the POST is not replayed).
            return redirect(self._stepup_url())
        return session

    async def remove_totp(self, request: Request) -> Response:
        checked = await self._checked(request)
        if isinstance(checked, Response):
            return checked
        session = checked
        facts = await asyncio.to_thread(self._facts, session.user_id)
        if not facts["totp"]:
            return await self._page(request, session, status=404, error=MSG_NO_TOTP)
        if await asyncio.to_thread(self.ctx.flows.would_strand, session.user_id, "totp"):
            return await self._page(request, session, status=409, error=MSG_LAST_FACTOR)
        removed = await asyncio.to_thread(self.ctx.factors.remove_totp, session.user_id)
        if not facts["others"]:
            await asyncio.to_thread(self.ctx.factors.clear_recovery_codes, session.user_id)
        await self.ctx.audit.append(FactorChanged(
            user=session.username, kind="totp", action="remove",
            factor=",".join(str(i) for i in removed), source_ip=request.client_ip))
        return redirect(SECURITY_PATH + "?done=totp-removed")

    async def renew_codes(self, request: Request) -> Response:
        checked = await self._checked(request)
        if isinstance(checked, Response):
            return checked
        session = checked
        choices = await asyncio.to_thread(self.ctx.flows.enrolled_choices, session.user_id)
        if not choices:
            return await self._page(request, session, status=409, error=MSG_NO_FACTOR)
        codes = await asyncio.to_thread(self.ctx.factors.new_recovery_codes, session.user_id)
        await self.ctx.audit.append(FactorChanged(
            user=session.username, kind="recovery", action="renew",
            factor=str(len(codes)), source_ip=request.client_ip))
        return self.pages.render(request, "recovery_codes.html", TITLE_CODES, codes=codes,
                                 next_url=SECURITY_PATH, renewed=True)

    async def end_others(self, request: Request) -> Response:
        session = await self._posted(request)
        if isinstance(session, Response):
            return session
        events = await asyncio.to_thread(sign_out_others, self.ctx.flows.sessions, session)
        for event in events:
            await self.ctx.audit.append(event)
        return redirect(SECURITY_PATH + "?done=" + ("signed-out-others" if events
                                                     else "no-others"))

    async def end_one(self, request: Request) -> Response:
        session = await self._posted(request)
        if isinstance(session, Response):
            return session
        short_id = request.form().get("session", "")[:64]
        if short_id == session.short_id:
            return await self._page(request, session, status=409, error=MSG_CURRENT)
        event = await asyncio.to_thread(sign_out_one, self.ctx.flows.sessions, session,
                                        short_id)
        if event is None:
            return await self._page(request, session, status=404, error=MSG_NO_SESSION)
        await self.ctx.audit.append(event)
        return redirect(SECURITY_PATH + "?done=signed-out-one")

    def handlers(self) -> dict[str, Handler]:
        return {SECURITY_PATH: self.mfa._safe(self.show),
                REMOVE_TOTP_PATH: self.mfa._safe(self.remove_totp),
                RENEW_CODES_PATH: self.mfa._safe(self.renew_codes),
                SIGNOUT_OTHERS_PATH: self.mfa._safe(self.end_others),
                SIGNOUT_ONE_PATH: self.mfa._safe(self.end_one)}


def _local(moment: datetime | None, zone: str, lang: str) -> str:
    """A UTC time as staff read it: the configured zone (Asia/Tokyo), Japanese date order."""
    if moment is None:
        return ""
    local = moment.astimezone(ZoneInfo(zone))
    if lang == "ja":
        return f"{local.year}年{local.month}月{local.day}日 {local:%H:%M}"
    return local.strftime("%Y-%m-%d %H:%M")
