"""The admin console's server-rendered pages under /.sekisho/admin/, over the same operations as
the admin API.

This module is the console's shell: it routes a path to a view, asks `access.session_actor`
who is calling (sign-in, passkey step-up and the admin policy are decided there, exactly as
for the API), refuses a POST without the CSRF token of this browser, renders Japanese-first
pages (English on request) and serves the console's own assets. The views (`pages_people`,
`pages_config`) never touch storage: every read and change goes through
`ops.run(ctx, actor, operation, call)`, so a page cannot allow what the API refuses, and every
change is audited by the operation itself.

After a successful POST the browser is sent on with 303 and a fixed flash key (`?done=`):
a reload cannot post twice, and the flash text comes from the catalog, never from the URL
(no text injection into a trusted page). The exception are answers that show a secret once
(an enrolment code, an API token, a generated password): they are rendered in the POST's own
answer with `no-store`, because a redirect would put the secret into a URL, the history and
the logs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from sekisho.audit.log import AuditUnavailable
from sekisho.console.admin import access, load_operations
from sekisho.console.admin.ops import (
    REGISTRY,
    Actor,
    AdminContext,
    AdminError,
    Call,
    Operation,
    unwrap,
)
from sekisho.console.admin.ops import run as run_operation
from sekisho.errors import StorageError
from sekisho.identity.i18n import choose_language
from sekisho.identity.pages import MSG_CSRF, MSG_METHOD, N_, TITLE_ERROR, PageKit, package_catalog
from sekisho.web import Handler, Request, Response, redirect

if TYPE_CHECKING:  # extensions.BUILDERS lists this module: no import cycle at run time
    from sekisho.identity.extensions import IdentityContext

ADMIN_PATH = "/.sekisho/admin"
STATIC_PATH = "/.sekisho/static/"
_PACKAGE = Path(__file__).resolve().parents[1]  # sekisho/console
LOCALE_DIR = _PACKAGE / "locale"
STATIC_DIR = _PACKAGE / "static"
# The console's own scripts and styles only (no inline script or style, no CDN: the city's
# closed networks have none, and an injected inline script must not run). `data:` images are
# the chart library's canvas exports.
ADMIN_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
             "img-src 'self' data:; font-src 'self'; form-action 'self'; "
             "frame-ancestors 'none'; base-uri 'none'")
HSTS = "max-age=31536000"
# name under /.sekisho/static/ -> (file under console/static/, content type)
ASSETS = {
    "admin.css": ("admin.css", "text/css; charset=utf-8"),
    "admin.js": ("admin.js", "text/javascript; charset=utf-8"),
    "vendor/uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "vendor/uPlot.min.css": ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
    "vendor/uPlot.LICENSE.txt": ("vendor/uPlot.LICENSE.txt", "text/plain; charset=utf-8"),
}

TITLE_NOT_FOUND = N_("Page not found")
MSG_NOT_FOUND = N_("There is no such page in the admin console.")
MSG_UNAVAILABLE = N_("The admin console is temporarily unavailable (the database or the audit "
                     "log cannot be reached). Nothing was changed. Please try again later.")
FLASH = {
    "user-created": N_("The user was created."),
    "user-updated": N_("The user was updated."),
    "user-disabled": N_("The user was disabled and their sessions were ended."),
    "user-enabled": N_("The user was enabled."),
    "factors-reset": N_("The user's second factors were reset and their sessions ended."),
    "groups-saved": N_("The user's groups were saved."),
    "group-created": N_("The group was created."),
    "member-added": N_("The member was added."),
    "member-removed": N_("The member was removed."),
    "session-revoked": N_("The session was ended."),
    "sessions-revoked": N_("All sessions of the user were ended."),
    "device-suspended": N_("The device was suspended."),
    "device-resumed": N_("The device was resumed."),
    "device-revoked": N_("The device was revoked."),
    "config-applied": N_("The configuration was applied and recorded in the audit log."),
    "config-pending": N_("The configuration was saved; the reload is still in progress."),
    "config-unchanged": N_("Nothing to apply: the text is the same as the file."),
    "token-revoked": N_("The API token was revoked."),
}


ROLE_LABELS = {"superadmin": N_("Superadmin"), "helpdesk": N_("Help desk"),
               "auditor": N_("Auditor")}


@dataclass(frozen=True, slots=True)
class MenuItem:
    key: str
    label: str
    needs: tuple[str, str, str]  # the operation (id, method, API path) the page reads first

    @property
    def url(self) -> str:
        return ADMIN_PATH + "/" + ("" if self.key == "dashboard" else self.key)


MENU = (
    MenuItem("dashboard", N_("Dashboard"), ("dashboard.get", "GET", "/dashboard")),
    MenuItem("users", N_("Users"), ("users.list", "GET", "/users")),
    MenuItem("groups", N_("Groups"), ("groups.list", "GET", "/groups")),
    MenuItem("devices", N_("Devices"), ("devices.list", "GET", "/devices")),
    MenuItem("sessions", N_("Sessions"), ("sessions.list", "GET", "/sessions")),
    MenuItem("config", N_("Configuration"), ("config.get", "GET", "/config")),
    MenuItem("audit", N_("Audit log"), ("audit.search", "GET", "/audit/events")),
    MenuItem("tokens", N_("API tokens"), ("tokens.list", "GET", "/tokens")),
)


def operation(op_id: str, method: str = "", path: str = "") -> Operation | None:
    """The registered operation: by id, else by its (method, API path) — the same object the
    API runs, so the page and the API cannot differ."""
    found = REGISTRY.get(op_id)
    if found is None and method:
        found = next((op for op in REGISTRY.values()
                      if op.method == method and op.path == path), None)
    return found


def allowed(actor: Actor, op_id: str, method: str = "", path: str = "") -> bool:
    op = operation(op_id, method, path)
    return op is not None and actor.role in op.roles


def _typed_query(op: Operation, query: Mapping[str, Any]) -> dict[str, Any]:
    """Form fields arrive as text; convert those the schema types as integer or boolean, as
    the API shell does for URL query strings (an unconvertible value is left for the schema
    to refuse with its message)."""
    properties = (op.query or {}).get("properties", {})
    typed: dict[str, Any] = {}
    for name, value in query.items():
        kind = properties.get(name, {}).get("type") if isinstance(value, str) else None
        if kind == "integer" and re.fullmatch(r"-?\d{1,12}", value):
            typed[name] = int(value)
        elif kind == "boolean" and value in ("true", "false"):
            typed[name] = value == "true"
        else:
            typed[name] = value
    return typed


@dataclass(slots=True)
class Page:
    """One request to a view: who, what was asked, and the helpers a view needs."""

    request: Request
    actor: Actor
    match: re.Match[str]
    form: dict[str, str]
    console: Console

    @property
    def lang(self) -> str:
        return choose_language(self.request, self.console.kit.config().default_language)[0]

    def param(self, name: str) -> str:
        return self.match.group(name)

    def query(self) -> dict[str, str]:
        return self.request.query_params()

    def can(self, op_id: str, method: str = "", path: str = "") -> bool:
        return allowed(self.actor, op_id, method, path)

    async def call(self, op_id: str, method: str = "", path: str = "", *,
                   params: Mapping[str, str] | None = None,
                   query: Mapping[str, Any] | None = None, body: Any = None,
                   raw: bool = False) -> Any:
        """Run the operation for this actor: role check, schema validation and the handler's
        own audit, exactly as the API does. `raw`: the handler's `Answer` itself (a download
        with its media type and headers), not only its body."""
        op = operation(op_id, method, path)
        if op is None:
            raise AdminError("not-available", "この機能はこの環境では利用できません。",
                             "This function is not available in this installation.", 404)
        result = await run_operation(self.console.admin, self.actor, op, Call(
            path=dict(params or {}), query=_typed_query(op, query or {}), body=body,
            lang=self.lang))
        return result if raw else unwrap(result)

    def render(self, template: str, title: str, *, status: int = 200, **context: Any) -> Response:
        return self.console.render(self, template, title, status=status, **context)

    def done(self, url: str, flash: str) -> Response:
        """303 to `url` with a fixed flash key (Post/Redirect/Get)."""
        separator = "&" if "?" in url else "?"
        return redirect(url + separator + urlencode({"done": flash}))

    def text(self, message: str) -> str:
        return self.console.kit.gettext(self.request, message)


View = Callable[[Page], Awaitable[Response]]


class Console:
    """Routing, access, CSRF, rendering and the headers every console answer carries."""

    def __init__(self, context: IdentityContext) -> None:
        self.admin = AdminContext(context)
        self.catalog = package_catalog("sekisho.console", LOCALE_DIR)
        for lang, env in self.catalog.environments.items():
            env.filters["when"] = self._when_filter(lang)
            env.filters["listing"] = _listing
        self.kit: PageKit = context.pages.with_catalog(self.catalog)
        self.routes: list[tuple[str, re.Pattern[str], View]] = []
        self.assets = _load_assets()

    # -- registration ---------------------------------------------------------------------------

    def route(self, method: str, pattern: str, view: View) -> None:
        """`pattern` below ADMIN_PATH, with `{name}` for one path segment."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]{1,200})", pattern)
        self.routes.append((method, re.compile(re.escape(ADMIN_PATH) + regex + r"\Z"), view))

    def asset_url(self, name: str) -> str:
        body = self.assets.get(name, (b"", ""))[0]
        return f"{STATIC_PATH}{name}?v={hashlib.sha256(body).hexdigest()[:10]}"

    # -- serving --------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        try:
            response = await self._dispatch(request)
        except (StorageError, AuditUnavailable):
            # Fail closed: nothing is shown or changed without the database and the audit log.
            response = self.kit.message(request, TITLE_ERROR, MSG_UNAVAILABLE, 503)
        return self._secure(request, response)

    async def _dispatch(self, request: Request) -> Response:
        if request.path in (ADMIN_PATH, ADMIN_PATH + "/index.html"):
            return redirect(ADMIN_PATH + "/", 302)
        found = [(method, match, view) for method, regex, view in self.routes
                 if (match := regex.match(request.path))]
        actor = await access.session_actor(self.admin, request)
        if isinstance(actor, Response):
            return actor  # sign in, step up with a passkey, or refused (decided by access)
        if not found:
            return self.kit.message(request, TITLE_NOT_FOUND, MSG_NOT_FOUND, 404)
        method = "GET" if request.method == "HEAD" else request.method
        chosen = next(((match, view) for m, match, view in found if m == method), None)
        if chosen is None:
            allow = ", ".join(sorted({m for m, _, _ in found}))
            return self.kit.message(request, TITLE_ERROR, MSG_METHOD, 405, [("Allow", allow)])
        form: dict[str, str] = {}
        if method == "POST":
            form = request.form()
            # Cross-site request forgery: a page elsewhere cannot read this browser's token.
            if not self.kit.csrf_ok(request, form):
                return self.kit.message(request, TITLE_ERROR, MSG_CSRF, 403)
        page = Page(request, actor, chosen[0], form, self)
        try:
            return await chosen[1](page)
        except AdminError as error:
            return self.refusal(page, error)

    def refusal(self, page: Page, error: AdminError) -> Response:
        back = page.request.header("referer") or ""
        return page.render("admin_error.html", TITLE_ERROR, status=error.status,
                           refusal=error.message(page.lang), code=error.code,
                           details=error.details if isinstance(error.details, list) else [],
                           back=back if back.startswith(("/", f"{page.request.scheme}://"
                                                         f"{page.request.host}")) else "")

    @staticmethod
    def _secure(request: Request, response: Response) -> Response:
        response.set_header("Content-Security-Policy", ADMIN_CSP)
        response.set_header("X-Frame-Options", "DENY")
        response.set_header("X-Content-Type-Options", "nosniff")
        response.set_header("Referrer-Policy", "no-referrer")
        if request.scheme == "https":
            response.set_header("Strict-Transport-Security", HSTS)
        return response

    async def static(self, request: Request) -> Response:
        name = request.path[len(STATIC_PATH):]
        found = self.assets.get(name)
        if found is None or request.method not in ("GET", "HEAD"):
            return self._secure(request, self.kit.message(
                request, TITLE_NOT_FOUND, MSG_NOT_FOUND, 404))
        body, kind = found
        return self._secure(request, Response(200, [
            ("Content-Type", kind), ("Cache-Control", "public, max-age=31536000, immutable"),
        ], b"" if request.method == "HEAD" else body))

    # -- rendering ------------------------------------------------------------------------------

    def render(self, page: Page, template: str, title: str, *, status: int = 200,
               **context: Any) -> Response:
        request, actor = page.request, page.actor
        token, _ = self.kit.issue_csrf(request)
        current = context.pop("menu_key", "")
        menu = [{"key": item.key, "label": self.kit.gettext(request, item.label),
                 "url": item.url, "current": item.key == current}
                for item in MENU if allowed(actor, *item.needs)]
        flash = FLASH.get(request.query_params().get("done", ""))
        keep = {k: v for k, v in request.query_params().items() if k not in ("lang", "done")}
        response = self.kit.render(
            request, template, title, status=status, keep=keep, csrf=token, menu=menu,
            actor=actor, role_label=self.kit.gettext(request, ROLE_LABELS[str(actor.role)]),
            role_labels={k: self.kit.gettext(request, v) for k, v in ROLE_LABELS.items()},
            flash=self.kit.gettext(request, flash) if flash else "",
            admin_css_url=self.asset_url("admin.css"), admin_js_url=self.asset_url("admin.js"),
            chart_js_url=self.asset_url("vendor/uPlot.iife.min.js")
            if "vendor/uPlot.iife.min.js" in self.assets else "",
            chart_css_url=self.asset_url("vendor/uPlot.min.css")
            if "vendor/uPlot.min.css" in self.assets else "",
            admin_url=ADMIN_PATH, signout_url="/.sekisho/signout",
            timezone=self.kit.config().timezone, **context)
        return response

    def _when_filter(self, lang: str) -> Callable[[Any], str]:
        def when(value: Any) -> str:
            """A UTC time (datetime or ISO text) shown in the configured zone, Japanese style."""
            if isinstance(value, str):
                try:
                    value = datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    return str(value)
            if not isinstance(value, datetime):
                return "" if value is None else str(value)
            local = value.astimezone(ZoneInfo(self.kit.config().timezone))
            if lang == "ja":
                return local.strftime("%Y年%-m月%-d日 %H:%M:%S")
            return local.strftime("%Y-%m-%d %H:%M:%S")
        return when


def _listing(value: Any) -> str:
    """A list shown as "a, b"; anything else as its text (None as nothing)."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def _load_assets() -> dict[str, tuple[bytes, str]]:
    """The console's files, read once; vendored files missing (scripts/assets not run) are
    left out: the dashboard then shows its figures as tables only."""
    found = {}
    for name, (relative, kind) in ASSETS.items():
        path = STATIC_DIR / relative
        if path.is_file():
            found[name] = (path.read_bytes(), kind)
    return found


def items(result: Any, *keys: str) -> list[Any]:
    """The list in an operation's answer (`items`, or the first of `keys` holding a list)."""
    if isinstance(result, list):
        return result
    if isinstance(result, Mapping):
        for key in ("items", *keys):
            value = result.get(key)
            if isinstance(value, list):
                return value
    return []


def clean(form: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The named fields, trimmed; absent or blank ones left out (the schema says what is
    required and answers with its own message)."""
    return {name: form[name].strip() for name in names if form.get(name, "").strip()}


def build_handlers(context: IdentityContext) -> Mapping[str, Handler]:
    """The console's handlers (an `extensions.BUILDERS` entry): the subtree
    /.sekisho/admin/*, the bare /.sekisho/admin and the console's static files; none without
    a live runtime (the admin policy is part of it)."""
    if context.current_runtime is None:
        return {}
    load_operations()
    from sekisho.console.admin import pages_config, pages_people

    console = Console(context)
    pages_config.register(console)
    pages_people.register(console)
    handlers: dict[str, Handler] = {ADMIN_PATH: console.handle, ADMIN_PATH + "/*": console.handle}
    for name in console.assets:
        handlers[STATIC_PATH + name] = console.static
    return handlers
