"""What every OIDC handler shares: the IdP list, caches, clock, randomness, and the pages.

A refusal is answered by one of a handful of generic pages (Japanese, then English) chosen
by the reason's family, and audited with the exact reason: the person learns what to do, an
attacker probing the callback learns nothing about which check failed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from sekisho.audit.events import OidcRejected
from sekisho.config.model import Config, IdentityProvider
from sekisho.errors import SekishoError
from sekisho.identity.oidc.authrequest import Random
from sekisho.identity.oidc.discovery import ProviderCache
from sekisho.identity.oidc.errors import OidcError
from sekisho.identity.oidc.http import IdpHttp
from sekisho.identity.pages import MSG_UNAVAILABLE, N_, TITLE_ERROR
from sekisho.observability import metrics
from sekisho.web import Request, Response

if TYPE_CHECKING:  # extensions.BUILDERS lists this package: no import cycle at run time
    from sekisho.identity.extensions import IdentityContext

BROWSER_COOKIE = "__Host-sekisho-oidc"

MSG_IDP_DOWN = N_("The identity provider cannot be reached right now. Please try again later.")
MSG_STATE = N_("This sign-in request has expired or was already used. Please start the "
               "sign-in again.")
MSG_TOKEN = N_("The identity provider's answer could not be verified, so you were not "
               "signed in. Please start the sign-in again.")
MSG_ACCOUNT = N_("Your account cannot sign in through this identity provider. Please "
                 "contact your administrator.")
MSG_RATE = N_("Too many sign-in requests from your network. Wait a minute and try again.")
MSG_CANCELLED = N_("The identity provider did not complete the sign-in.")
MSG_UNKNOWN_IDP = N_("This identity provider is not configured.")

_PAGES: dict[str, tuple[str, int]] = {
    "idp-unavailable": (MSG_IDP_DOWN, 502), "discovery-invalid": (MSG_IDP_DOWN, 502),
    "jwks-invalid": (MSG_IDP_DOWN, 502), "token-error": (MSG_IDP_DOWN, 502),
    "state-invalid": (MSG_STATE, 400), "state-mismatch": (MSG_STATE, 400),
    "idp-error": (MSG_CANCELLED, 400), "idp-unknown": (MSG_UNKNOWN_IDP, 404),
    **{code: (MSG_ACCOUNT, 403) for code in (
        "email-missing", "email-unverified", "email-invalid", "email-domain", "user-unknown",
        "user-disabled", "identity-conflict")},
}


def default_http(idp: IdentityProvider) -> IdpHttp:
    return IdpHttp(timeout=idp.timeout,
                   allow_loopback_http=idp.allow_insecure_http_for_loopback)


class FederationBase:
    def __init__(self, context: IdentityContext, cache: ProviderCache, *,
                 http_for: Callable[[IdentityProvider], IdpHttp] = default_http,
                 random: Random = secrets.token_urlsafe) -> None:
        self.context = context
        self.engine, self.audit, self.pages = context.engine, context.audit, context.pages
        self.flows, self.clock, self.sessions = context.flows, context.clock, context.sessions
        self.cache, self.http_for, self.random = cache, http_for, random

    def config(self) -> Config:
        return self.context.current_config()

    def idp(self, idp_id: str) -> IdentityProvider | None:
        for idp in self.config().identity_providers:
            if idp.id == idp_id:
                return idp
        return None

    @staticmethod
    def origin(request: Request) -> str:
        """`scheme://host[:port]` as the browser addressed us (the gateway checked Host)."""
        host = (request.header("host") or request.host).strip().lower()
        if host.partition(":")[0].strip("[]") != request.host.strip("[]"):
            host = request.host
        return f"{request.scheme}://{host}"

    async def refuse(self, request: Request, idp_id: str, error: OidcError,
                     user: str = "") -> Response:
        metrics.SIGNINS.labels("oidc-" + error.code).inc()
        text, status = _PAGES.get(error.code, (MSG_TOKEN, 400))
        try:
            await self.audit.append(OidcRejected(idp=idp_id, reason=error.code,
                                                 source_ip=request.client_ip, user=user))
        except SekishoError:
            return self.unavailable(request)
        return self.pages.message(request, TITLE_ERROR, text, status)

    def unavailable(self, request: Request) -> Response:
        return self.pages.message(request, TITLE_ERROR, MSG_UNAVAILABLE, 503)

