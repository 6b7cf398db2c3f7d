"""The user's passkey page `/.sekisho/passkeys`: list, register, rename, remove.

Registering or removing a passkey changes how the account can be entered, so both need a
*recent* proof, by the same rule as TOTP enrolment: the session's last second-factor proof
(or, for a user with no factor yet, its last proof of any kind) at most `mfa.enrol_max_age`
old; otherwise the user is sent to step up first (an attacker holding an old or stolen
session cannot add their own passkey for persistence, nor remove the owner's). Renaming is
harmless but audited like every change. Each row is addressed by (user, id), so one user
can never touch another's credential (IDOR). Every POST carries a CSRF token.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from sekisho.audit.events import FactorChanged
from sekisho.identity.flow import STEPUP_PATH
from sekisho.identity.pages import MSG_CSRF, N_, PREFIX
from sekisho.identity.passkey_pages import PasskeyBase
from sekisho.identity.passkeys import binding_of
from sekisho.identity.principal import SessionInfo
from sekisho.identity.security_page import MSG_LAST_FACTOR
from sekisho.storage import webauthn as store
from sekisho.web import Handler, Request, Response, redirect

MANAGE_PATH = PREFIX + "/passkeys"
REGISTER_PATH, RENAME_PATH, REMOVE_PATH = (MANAGE_PATH + "/register", MANAGE_PATH + "/rename",
                                           MANAGE_PATH + "/remove")
SIGNIN_PATH = PREFIX + "/signin"

TITLE_MANAGE = N_("Passkeys and security keys")
BUTTON_REGISTER = N_("Register a passkey")
DEFAULT_NAME = N_("My passkey")
NOTICES = {
    "registered": N_("The passkey was registered."),
    "renamed": N_("The passkey was renamed."),
    "removed": N_("The passkey was removed."),
}
MSG_REGISTER_FAILED = N_("The passkey could not be registered. Please try again.")
MSG_DUPLICATE = N_("This passkey is already registered.")
MSG_NOT_FOUND = N_("That passkey does not exist.")


class PasskeyManagement(PasskeyBase):

    def _session(self, request: Request) -> SessionInfo | None:
        return request.session if isinstance(request.session, SessionInfo) else None

    async def _recent(self, session: SessionInfo) -> bool:
        return await self.ctx.flows.may_change_factors(session)

    @staticmethod
    def _stepup_url() -> str:
        return STEPUP_PATH + "?" + urlencode({"rd": MANAGE_PATH})

    async def _page(self, request: Request, session: SessionInfo, *, status: int = 200,
                    error: str = "", notice: str = "") -> Response:
        config = self.ctx.current_config()
        rp = self.rp(request)
        options = ""
        if rp is not None and await self._recent(session):
            uv = await asyncio.to_thread(self.uv_required, session.user_id)
            options = await asyncio.to_thread(
                self.passkeys.registration_options, rp, user_id=session.user_id,
                username=session.username, display_name=session.display_name,
                binding=binding_of("session", session.session_id), uv_required=uv)
        records = await asyncio.to_thread(store.list_credentials, self.ctx.engine,
                                          session.user_id)
        zone = ZoneInfo(config.timezone)
        credentials = [{
            "id": r.id, "name": r.name, "backed_up": r.backed_up,
            "created": r.created_at.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
            "last_used": "" if r.last_used_at is None
            else r.last_used_at.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
        } for r in records]
        token, headers = self.pages.issue_csrf(request)
        return self.ceremony(
            request, "passkeys_manage.html", TITLE_MANAGE, csrf=token, headers=headers,
            status=status, error=error, notice=self.pages.gettext(request, notice) if notice
            else "", username=session.username, credentials=credentials, options=options,
            mode="create", action=REGISTER_PATH, rename_url=RENAME_PATH,
            remove_url=REMOVE_PATH, button=self.pages.gettext(request, BUTTON_REGISTER),
            default_name=self.pages.gettext(request, DEFAULT_NAME),
            stepup_url=self._stepup_url())

    async def manage(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return redirect(SIGNIN_PATH + "?" + urlencode({"rd": MANAGE_PATH}))
        notice = NOTICES.get(request.query_params().get("done", ""), "")
        return await self._page(request, session, notice=notice)

    async def _post(self, request: Request) -> tuple[SessionInfo, dict[str, str]] | Response:
        session = self._session(request)
        if session is None:
            return redirect(SIGNIN_PATH + "?" + urlencode({"rd": MANAGE_PATH}))
        if request.method != "POST":
            return redirect(MANAGE_PATH)
        form = request.form()
        if not self.pages.csrf_ok(request, form):
            return await self._page(request, session, status=403, error=MSG_CSRF)
        return session, form

    async def _changed(self, request: Request, session: SessionInfo, action: str,
                       factor: str) -> None:
        await self.ctx.audit.append(FactorChanged(
            user=session.username, kind="webauthn", action=action, factor=factor,
            source_ip=request.client_ip))

    async def register(self, request: Request) -> Response:
        checked = await self._post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        rp = self.rp(request)
        if rp is None or not await self._recent(session):
            return redirect(self._stepup_url())
        uv = await asyncio.to_thread(self.uv_required, session.user_id)
        name = " ".join(form.get("name", "").split())[:64] or self.pages.gettext(
            request, DEFAULT_NAME)
        outcome = await asyncio.to_thread(
            self.passkeys.verify_registration, rp, user_id=session.user_id,
            binding=binding_of("session", session.session_id),
            credential_json=form.get("credential", ""), uv_required=uv, name=name)
        if not outcome.ok or outcome.credential is None:
            error = MSG_DUPLICATE if outcome.reason == "duplicate" else MSG_REGISTER_FAILED
            return await self._page(request, session, status=400, error=error)
        record = outcome.credential
        await self._changed(request, session, "enrol", f"{record.id}:{record.name}")
        return redirect(MANAGE_PATH + "?done=registered")

    @staticmethod
    def _row_id(form: dict[str, str]) -> int:
        value = form.get("id", "")[:12]
        return int(value) if value.isdigit() else 0

    async def rename(self, request: Request) -> Response:
        checked = await self._post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        name = " ".join(form.get("name", "").split())[:64]
        row_id = self._row_id(form)
        if not name or not await asyncio.to_thread(
                store.rename_credential, self.ctx.engine, session.user_id, row_id, name):
            return await self._page(request, session, status=404, error=MSG_NOT_FOUND)
        await self._changed(request, session, "rename", f"{row_id}:{name}")
        return redirect(MANAGE_PATH + "?done=renamed")

    async def remove(self, request: Request) -> Response:
        checked = await self._post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        if not await self._recent(session):
            return redirect(self._stepup_url())
        row_id = self._row_id(form)
        records = await asyncio.to_thread(store.list_credentials, self.ctx.engine,
                                          session.user_id)
        record = next((r for r in records if r.id == row_id), None)
        if record is not None and await asyncio.to_thread(
                self.ctx.flows.would_strand, session.user_id, "webauthn",
                left_of_kind=len(records) - 1):
            return await self._page(request, session, status=409, error=MSG_LAST_FACTOR)
        if record is None or not await asyncio.to_thread(
                store.remove_credential, self.ctx.engine, session.user_id, row_id):
            return await self._page(request, session, status=404, error=MSG_NOT_FOUND)
        await self._changed(request, session, "remove", f"{record.id}:{record.name}")
        return redirect(MANAGE_PATH + "?done=removed")

    def handlers(self) -> dict[str, Handler]:
        return {MANAGE_PATH: self.safe(self.manage), REGISTER_PATH: self.safe(self.register),
                RENAME_PATH: self.safe(self.rename), REMOVE_PATH: self.safe(self.remove)}
