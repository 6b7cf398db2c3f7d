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
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from sqlalchemy import Engine

from sekisho.audit.events import SignedOut, SignInFailed, SignInSucceeded
from sekisho.config.model import Config
from sekisho.errors import SekishoError
from sekisho.identity import csrf as csrf_mod
from sekisho.identity.csrf import CsrfProtector
from sekisho.identity.i18n import TRANSLATIONS, choose_language, language_cookie
from sekisho.identity.passwords import PasswordHasher
from sekisho.identity.principal import SessionInfo
from sekisho.identity.redirects import safe_redirect
from sekisho.identity.sessions import SessionManager
from sekisho.identity.throttle import Throttle
from sekisho.observability import metrics
from sekisho.services import AuditSink
from sekisho.storage import users
from sekisho.storage.secrets_store import get_or_create_secret
from sekisho.web import Handler, Request, Response, html

PREFIX = "/.sekisho"
SIGNIN, SIGNOUT, CSS = PREFIX + "/signin", PREFIX + "/signout", PREFIX + "/static/sekisho.css"
_CSS = (Path(__file__).parent / "static" / "sekisho.css").read_bytes()
CSS_URL = f"{CSS}?v={hashlib.sha256(_CSS).hexdigest()[:10]}"
_MAX_NAME = 128


def N_(message: str) -> str:  # the gettext marker that message extractors know
    return message


MSG_FAILED = N_("Sign-in failed. Check your user name and password. After repeated failures, "
                "wait a while before trying again.")
MSG_CSRF = N_("The form has expired. Please try again.")
MSG_UNAVAILABLE = N_("Sign-in is temporarily unavailable. Please try again later.")
MSG_TOO_LARGE = N_("The request is too large.")
MSG_METHOD = N_("This method is not allowed here.")
MSG_SIGNED_OUT = N_("You have signed out. Close the browser if you are on a shared computer.")
TITLE_SIGNIN, TITLE_SIGNOUT = N_("Sign in"), N_("Sign out")
TITLE_SIGNED_OUT, TITLE_ERROR = N_("Signed out"), N_("Error")


def _environments() -> dict[str, jinja2.Environment]:
    envs = {}
    for lang, translations in TRANSLATIONS.items():
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("sekisho.identity", "templates"),
            autoescape=True, extensions=["jinja2.ext.i18n"], undefined=jinja2.StrictUndefined)
        env.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]
        envs[lang] = env
    return envs


_ENVS = _environments()


class _Pages:
    """Everything the handlers share; built once by `build_signin_handlers`."""

    def __init__(self, *, current_config: Callable[[], Config], engine: Engine,
                 sessions: SessionManager, audit: AuditSink, clock: Callable[[], datetime],
                 hasher: PasswordHasher, csrf: CsrfProtector) -> None:
        self.config, self.engine, self.sessions = current_config, engine, sessions
        self.audit, self.clock, self.hasher, self.csrf = audit, clock, hasher, csrf
        self.throttle = Throttle(engine, clock)

    # -- rendering --------------------------------------------------------------------------

    def render(self, request: Request, template: str, title: str, *, status: int = 200,
               error: str = "", headers: list[tuple[str, str]] | None = None,
               **context: Any) -> Response:
        lang, explicit = choose_language(request, self.config().default_language)
        env = _ENVS[lang]
        gettext = TRANSLATIONS[lang].ugettext
        params = {"lang": "en" if lang == "ja" else "ja"}
        if context.get("rd"):
            params["rd"] = context["rd"]
        extra = list(headers or [])
        if explicit:
            extra.append(("Set-Cookie", language_cookie(lang, secure=self._secure(request))))
        body = env.get_template(template).render(
            lang=lang, title=gettext(title), error=gettext(error) if error else "",
            css_url=CSS_URL, switch_url=request.path + "?" + urlencode(params), **context)
        return html(body, status, extra)

    @staticmethod
    def _secure(request: Request) -> bool:
        return request.scheme == "https"

    def bindings(self, request: Request) -> list[str]:
        found = []
        if isinstance(request.session, SessionInfo):
            found.append(csrf_mod.session_binding(request.session.session_id))
        pre = request.cookies().get(csrf_mod.PRE_SESSION_COOKIE, "")
        if pre:
            found.append(csrf_mod.cookie_binding(pre))
        return found

    def issue_csrf(self, request: Request) -> tuple[str, list[tuple[str, str]]]:
        """A token for this browser; sets the pre-session cookie when there is none."""
        if isinstance(request.session, SessionInfo):
            return self.csrf.issue(csrf_mod.session_binding(request.session.session_id)), []
        pre = request.cookies().get(csrf_mod.PRE_SESSION_COOKIE, "")
        headers = []
        if not pre or len(pre) > 64:
            pre = csrf_mod.new_pre_session_value()
            headers.append(("Set-Cookie", csrf_mod.pre_session_cookie(
                pre, secure=self._secure(request))))
        return self.csrf.issue(csrf_mod.cookie_binding(pre)), headers

    def signin_page(self, request: Request, *, status: int = 200, error: str = "",
                    username: str = "", rd: str = "") -> Response:
        token, headers = self.issue_csrf(request)
        signed_in = request.session.username if isinstance(request.session, SessionInfo) else ""
        return self.render(request, "signin.html", TITLE_SIGNIN, status=status, error=error,
                           headers=headers, csrf=token, rd=rd, username=username,
                           signed_in_as=signed_in)

    def message(self, request: Request, title: str, text: str, status: int,
                headers: list[tuple[str, str]] | None = None) -> Response:
        lang, _ = choose_language(request, self.config().default_language)
        return self.render(request, "message.html", title, status=status, headers=headers,
                           message=TRANSLATIONS[lang].ugettext(text))

    def session_cookie(self, request: Request, value: str, max_age: int) -> str:
        name = self.config().session.cookie_name
        secure = "; Secure" if self._secure(request) else ""
        return f"{name}={value}; Path=/; Max-Age={max_age}{secure}; HttpOnly; SameSite=Lax"

    # -- handlers ---------------------------------------------------------------------------

    async def signin(self, request: Request) -> Response:
        if request.method in ("GET", "HEAD"):
            rd = request.query_params().get("rd", "")
            return self.signin_page(request, rd=rd[:4096])
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
        agent = (request.header("user-agent") or "")[:200]
        if user.password_hash and self.hasher.needs_rehash(user.password_hash):
            new_hash = await asyncio.to_thread(self.hasher.hash, password)
            await asyncio.to_thread(users.set_password_hash, self.engine, user.username,
                                    new_hash)
        await asyncio.to_thread(self.throttle.reset_account, user.username)
        # Session fixation: whatever session cookie came in is never reused; a valid one is
        # ended, and the browser gets a fresh random token.
        old = request.session if isinstance(request.session, SessionInfo) else None
        brought = request.cookies().get(config.session.cookie_name, "")
        if old is None and brought:
            old = await self.sessions.lookup(brought)
        if old is not None:
            await asyncio.to_thread(self.sessions.revoke_id, old.session_id, "rotated")
        token, info = await asyncio.to_thread(
            self.sessions.create, user, ("pwd",), request.client_ip, agent)
        try:
            await self.audit.append(SignInSucceeded(
                user=user.username, source_ip=request.client_ip, methods=("pwd",),
                session=info.short_id, user_agent=agent))
        except Exception:
            await asyncio.to_thread(self.sessions.revoke_id, info.session_id, "audit-failed")
            raise
        metrics.SIGNINS.labels("success").inc()
        hosts = {route.host for route in config.routes}
        scheme = "https" if config.tls.enabled else "http"
        target = safe_redirect(rd, hosts, "/", scheme=scheme)
        max_age = int(config.session.absolute_lifetime)
        return Response(303, [
            ("Location", target), ("Cache-Control", "no-store"),
            ("Set-Cookie", self.session_cookie(request, token, max_age)),
        ])

    async def signout(self, request: Request) -> Response:
        session = request.session if isinstance(request.session, SessionInfo) else None
        if request.method in ("GET", "HEAD"):
            token, headers = self.issue_csrf(request)
            return self.render(request, "signout.html", TITLE_SIGNOUT, headers=headers,
                               csrf=token, signed_in_as=session.username if session else "")
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
        ], b"" if request.method == "HEAD" else _CSS)


def build_signin_handlers(
    *, current_config: Callable[[], Config], engine: Engine, sessions: SessionManager,
    audit: AuditSink, clock: Callable[[], datetime] | None = None,
    hasher: PasswordHasher | None = None, csrf: CsrfProtector | None = None,
) -> dict[str, Handler]:
    """Handlers keyed by exact path; each dispatches on the method (405 for others).

    The CSRF key is the installation secret "csrf" from the database unless given.
    """
    pages = _Pages(
        current_config=current_config, engine=engine, sessions=sessions, audit=audit,
        clock=clock or (lambda: datetime.now(UTC)), hasher=hasher or PasswordHasher(),
        csrf=csrf or CsrfProtector(get_or_create_secret(engine, "csrf")))
    return {SIGNIN: pages.signin, SIGNOUT: pages.signout, CSS: pages.stylesheet}
