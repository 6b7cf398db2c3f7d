"""The staff portal pages: the app launcher `/.sekisho/portal/` and `/.sekisho/portal/why`.

The thin I/O shell around `console.launcher`: it builds this request's facts exactly as the
gateway would (`gateway.pep.request_facts`: the session, the source address after trusted
proxies, the connection's device certificate and its registry standing), takes each route's
policy from the live snapshot (`Runtime.policy_for`, guardrails included) and renders.

The "why" page explains only an app the launcher lists for this user. An unknown route id
and the id of a route this user can never open get the very same 404 page: otherwise the
page would be an oracle that tells any signed-in user which routes exist, what they are
called and which segment they sit in (reconnaissance of the city's internal systems). Staff
who hit a 403 at an app already see its reason codes on the gateway's own 403 page.
It shows the decision's reasons, not the policy's trace, for the same reason: the trace
names groups, address ranges and devices that are the administrators' business.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import threading
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from cryptography import x509

from sekisho.config.model import Config
from sekisho.console.launcher import Assessment, DeviceCure, Plan, grouped, launch, plan
from sekisho.devices.ca import ca_directory
from sekisho.devices.trust import NOT_ENROLLED
from sekisho.errors import SekishoError
from sekisho.gateway.mtls import ClientCertificate
from sekisho.gateway.pep import request_facts
from sekisho.identity.flow import STEPUP_PATH
from sekisho.identity.i18n import choose_language
from sekisho.identity.pages import MSG_METHOD, N_, TITLE_ERROR, package_catalog
from sekisho.identity.principal import SessionInfo
from sekisho.policy import explain_reason
from sekisho.runtime import Runtime
from sekisho.web import PORTAL_PATH, Handler, Request, Response, redirect

if TYPE_CHECKING:  # extensions.BUILDERS lists this module: no import cycle at run time
    from sekisho.identity.extensions import IdentityContext

WHY_PATH = PORTAL_PATH + "why"
BARE_PATH = PORTAL_PATH.rstrip("/")
CSS_PATH = "/.sekisho/static/portal.css"
CSS_BYTES = (Path(__file__).parent / "static" / "portal.css").read_bytes()
PORTAL_CSS_URL = f"{CSS_PATH}?v={hashlib.sha256(CSS_BYTES).hexdigest()[:10]}"
SIGNIN_PATH, SIGNOUT_PATH, SECURITY_PATH = "/.sekisho/signin", "/.sekisho/signout", \
    "/.sekisho/security"
CATALOG = package_catalog("sekisho.console", Path(__file__).with_name("locale"))
_MAX_ROUTE_ID = 200

TITLE_APPS = N_("Your apps")
TITLE_WHY = N_("Why can't I open this?")
TITLE_MISSING = N_("App not found")
MSG_UNAVAILABLE = N_("The portal is temporarily unavailable. Please try again later.")
SEGMENT_LABELS = {
    "internet": N_("Internet-connected segment"),
    "lgwan": N_("LGWAN-connected segment"),
    "mynumber": N_("My Number business segment"),
}
STATUS = {
    "open": N_("Available"),
    "step-up": N_("Needs a second factor"),
    "device": N_("Needs an enrolled device"),
}
HINTS = {
    "step-up": N_("Opening it asks you to prove your identity again."),
    "device": N_("Open it from a computer enrolled with the city."),
}


class _CaIssuer:
    """The internal CA's issuer name (what an enrolled device's certificate carries), read
    from the public intermediate certificate and reloaded when that file changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stamp: tuple[str, int, int] | None = None
        self._issuer = ""

    def get(self, config: Config) -> str:
        path = ca_directory(config) / "intermediate.pem"
        try:
            stat = path.stat()
            stamp = (str(path), stat.st_mtime_ns, stat.st_size)
            with self._lock:
                if stamp != self._stamp:
                    cert = x509.load_pem_x509_certificate(path.read_bytes())
                    self._issuer, self._stamp = cert.subject.rfc4514_string(), stamp
                return self._issuer
        except (OSError, ValueError):
            return ""  # no CA: a certificate-gated route is then simply not listed


class Portal:
    def __init__(self, context: IdentityContext, current_runtime: Callable[[], Runtime]) -> None:
        self.ctx, self.runtime = context, current_runtime
        self.pages = context.pages.with_catalog(CATALOG)
        self._issuer = _CaIssuer()
        self._planned: tuple[Runtime, Plan] | None = None

    # -- deciding -----------------------------------------------------------------------------

    async def _assess(self, request: Request, session: SessionInfo,
                      runtime: Runtime) -> list[Assessment]:
        config = runtime.config
        client_ip = ipaddress.ip_address(request.client_ip)
        now = self.ctx.clock().timestamp()
        certificate = request.certificate if isinstance(request.certificate,
                                                        ClientCertificate) else None
        standing = NOT_ENROLLED
        trust = self.ctx.device_trust
        if certificate is not None and certificate.device is not None and trust is not None:
            # StorageError propagates: the page answers 503 rather than guess (fail closed).
            standing = await trust.standing(certificate.device, config.session.cache_ttl,
                                            config.devices)

        routes = config.routes
        if not routes:
            return []
        # The facts for the first route; `launch` aims them at each route that needs it.
        facts = request_facts(session, routes[0], client_ip=client_ip, method="GET",
                              path=routes[0].path_prefix, host=routes[0].host, now=now,
                              holidays=config.holidays, certificate=certificate,
                              standing=standing)
        device = None
        if config.tls.enabled and config.tls.client_certificates == "optional":
            profiles = config.devices.profiles
            issuer = await asyncio.to_thread(self._issuer.get, config)
            device = DeviceCure(profiles[0].name if profiles else "quarantine", issuer)
        return launch(self._plan(runtime), facts, device)

    def _plan(self, runtime: Runtime) -> Plan:
        """The launcher's plan of this snapshot, worked out on its first page (a reload
        brings a new snapshot, hence a new plan; the old one is dropped with it)."""
        cached = self._planned
        if cached is not None and cached[0] is runtime:
            return cached[1]
        made = plan(runtime.config.routes, runtime.policy_for)
        self._planned = (runtime, made)
        return made

    # -- presenting ---------------------------------------------------------------------------

    @staticmethod
    def _origin(request: Request, host: str) -> str:
        """`scheme://host[:port]` with the port this browser used to reach the gateway."""
        port = ""
        _, sep, tail = (request.header("host") or "").rpartition(":")
        if sep and tail.isdigit() and not tail.startswith("0") and int(tail) < 65536 and \
                (request.scheme, tail) not in (("https", "443"), ("http", "80")):
            port = ":" + tail
        return f"{request.scheme}://{host}{port}"

    def _app(self, request: Request, assessment: Assessment) -> dict[str, object]:
        route = assessment.route
        url = self._origin(request, route.host) + route.path_prefix
        access = assessment.access or ""
        text = self.pages.gettext
        return {
            "id": route.id, "title": route.title or route.id, "url": url, "host": route.host,
            "segment": route.segment,
            "segment_label": text(request, SEGMENT_LABELS.get(route.segment, route.segment)),
            "access": access, "status": text(request, STATUS[access]) if access else "",
            "hint": text(request, HINTS[access]) if access in HINTS else "",
            "why_url": WHY_PATH + "?" + urlencode({"route": route.id}),
            "stepup_url": self._origin(request, route.host) + STEPUP_PATH + "?"
            + urlencode({"rd": url}),
        }

    def _common(self, request: Request, runtime: Runtime, page: str) -> dict[str, Any]:
        return {"portal_css_url": PORTAL_CSS_URL, "home_url": PORTAL_PATH,
                "security_url": SECURITY_PATH, "signout_url": SIGNOUT_PATH,
                "contact": runtime.config.portal.contact, "page": page}

    @staticmethod
    def _local_time(moment: datetime, config: Config, lang: str) -> str:
        local = moment.astimezone(ZoneInfo(config.timezone))
        if lang == "ja":
            return local.strftime("%Y年%-m月%-d日 %H:%M")
        return local.strftime("%Y-%m-%d %H:%M")

    # -- handlers -----------------------------------------------------------------------------

    def _refusal(self, request: Request) -> Response | None:
        if request.method in ("GET", "HEAD"):
            return None
        return self.pages.message(request, TITLE_ERROR, MSG_METHOD, 405,
                                  [("Allow", "GET, HEAD")])

    @staticmethod
    def _signin(request: Request) -> Response:
        """Sign in first, then back here (a relative target: always accepted, never off-site)."""
        back = request.path + ("?" + request.query if request.query else "")
        return redirect(SIGNIN_PATH + "?" + urlencode({"rd": back}))

    async def home(self, request: Request) -> Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        session = request.session if isinstance(request.session, SessionInfo) else None
        if session is None:
            return self._signin(request)
        runtime = self.runtime()
        assessments = await self._assess(request, session, runtime)
        lang, _ = choose_language(request, runtime.config.default_language)
        groups = [{"segment": group.segment,
                   "label": self.pages.gettext(request, SEGMENT_LABELS[group.segment]),
                   "apps": [self._app(request, a) for a in group.apps]}
                  for group in grouped(assessments)]
        name = f"{session.display_name} ({session.username})" if session.display_name \
            else session.username
        return self.pages.render(
            request, "portal_home.html", TITLE_APPS, groups=groups, user_label=name,
            last_proof=self._local_time(session.last_proof, runtime.config, lang),
            timezone=runtime.config.timezone, **self._common(request, runtime, "home"))

    async def why(self, request: Request) -> Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        session = request.session if isinstance(request.session, SessionInfo) else None
        if session is None:
            return self._signin(request)
        runtime = self.runtime()
        wanted = request.query_params().get("route", "")[:_MAX_ROUTE_ID]
        # Every route is assessed whichever id was asked: the answer for an id that does not
        # exist costs the same as for one that is not shown (no timing oracle either).
        listed = {a.route.id: a for a in await self._assess(request, session, runtime)
                  if a.access is not None}
        found = listed.get(wanted)
        common = self._common(request, runtime, "why")
        if found is None:
            return self.pages.render(request, "portal_missing.html", TITLE_MISSING,
                                     status=404, **common)
        lang, _ = choose_language(request, runtime.config.default_language)
        reasons = [] if found.decision.allow else [
            (_reason_text(code, lang), code) for code in found.decision.reasons]
        return self.pages.render(
            request, "portal_why.html", TITLE_WHY, keep={"route": found.route.id},
            app=self._app(request, found), reasons=reasons,
            needs_stepup=found.needs_step_up, **common)

    async def stylesheet(self, request: Request) -> Response:
        return Response(200, [
            ("Content-Type", "text/css; charset=utf-8"),
            ("Cache-Control", "public, max-age=31536000, immutable"),
            ("X-Content-Type-Options", "nosniff"),
        ], b"" if request.method == "HEAD" else CSS_BYTES)

    async def bare(self, request: Request) -> Response:
        return redirect(PORTAL_PATH, 302)

    def safe(self, handler: Callable[[Request], Awaitable[Response]]) -> Handler:
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except SekishoError:
                # Storage unavailable (device registry): no guess about what is open.
                return self.pages.message(request, TITLE_ERROR, MSG_UNAVAILABLE, 503)
        return run


def _reason_text(code: str, lang: str) -> str:
    try:
        return explain_reason(code, lang)
    except (KeyError, ValueError):
        return code


def build_handlers(context: IdentityContext) -> Mapping[str, Handler]:
    """The portal's handlers keyed by exact path (an `extensions.BUILDERS` entry); none
    without a live runtime (the portal cannot decide without the policies in force)."""
    if context.current_runtime is None:
        return {}
    portal = Portal(context, context.current_runtime)
    return {PORTAL_PATH: portal.safe(portal.home), BARE_PATH: portal.bare,
            WHY_PATH: portal.safe(portal.why), CSS_PATH: portal.stylesheet}
