"""OIDC federation: Sekisho as an OpenID Connect relying party of one or more IdPs.

Public surface (see docs/oidc.md):
- `build_handlers(context)`: the `/.sekisho/oidc/*` handlers, an `extensions.BUILDERS` entry.
- `signin_buttons(config, rd)`: the IdP buttons for the sign-in page (`idp_buttons`).
- `direct_signin_location(config, rd)`: where `/.sekisho/signin` should go at once when the
  route behind `rd` names an IdP (`routes[].idp`), else None.
Modules: `discovery` (metadata + JWKS cache), `authrequest` (PKCE, state, nonce), `tokens`
(code exchange), `idtoken` (ID / logout token validation), `claims` (mapping, JIT),
`signin` (start, callback), `logout` (back-channel, RP-initiated), `ratelimit` (start).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

from sekisho.config.model import Config, IdentityProvider
from sekisho.identity.oidc.authrequest import CALLBACK_PATH, Random
from sekisho.identity.oidc.base import default_http
from sekisho.identity.oidc.discovery import ProviderCache
from sekisho.identity.oidc.http import IdpHttp
from sekisho.identity.oidc.logout import SIGNED_OUT_PATH, SIGNOUT_PATH, Logout
from sekisho.identity.oidc.ratelimit import StartLimiter
from sekisho.identity.oidc.signin import FederatedSignIn
from sekisho.web import Handler

if TYPE_CHECKING:  # extensions.BUILDERS lists this package: no import cycle at run time
    from sekisho.identity.extensions import IdentityContext

START_PATH = "/.sekisho/oidc/start"
BACKCHANNEL_PATH = "/.sekisho/oidc/backchannel-logout"

__all__ = ["BACKCHANNEL_PATH", "CALLBACK_PATH", "SIGNED_OUT_PATH", "SIGNOUT_PATH",
           "START_PATH", "IdpButton", "build_handlers", "direct_signin_location",
           "signin_buttons"]


@dataclass(frozen=True, slots=True)
class IdpButton:
    id: str
    title: str
    url: str


def start_url(idp: IdentityProvider, rd: str) -> str:
    query = {"idp": idp.id, **({"rd": rd} if rd else {})}
    return START_PATH + "?" + urlencode(query)


def signin_buttons(config: Config, rd: str = "") -> list[IdpButton]:
    return [IdpButton(idp.id, idp.title or idp.id, start_url(idp, rd))
            for idp in config.identity_providers]


def direct_signin_location(config: Config, rd: str) -> str | None:
    """`/.sekisho/oidc/start?…` when the route `rd` points into names an IdP."""
    try:
        parts = urlsplit(rd)
    except ValueError:
        return None
    host, path = (parts.hostname or "").lower(), parts.path or "/"
    best = None
    for route in config.routes:
        if route.host != host:
            continue
        prefix = route.path_prefix
        if (prefix in (path, "/") or path.startswith(prefix.rstrip("/") + "/")) \
                and (best is None or len(prefix) > len(best.path_prefix)):
            best = route
    if best is None or not best.idp:
        return None
    idp = next((i for i in config.identity_providers if i.id == best.idp), None)
    return start_url(idp, rd) if idp is not None else None


def build_handlers(context: IdentityContext, *,
                   http_for: Callable[[IdentityProvider], IdpHttp] = default_http,
                   random: Random = secrets.token_urlsafe,
                   monotonic: Callable[[], float] = time.monotonic,
                   cache: ProviderCache | None = None,
                   limiter: StartLimiter | None = None) -> Mapping[str, Handler]:
    """The OIDC handlers keyed by exact path (an `extensions.BUILDERS` entry)."""
    cache = cache or ProviderCache(http_for, monotonic)
    signin = FederatedSignIn(context, cache, http_for=http_for, random=random,
                             limiter=limiter or StartLimiter(monotonic=monotonic))
    # Exact link of a pending sign-in to the session it becomes (back-channel logout).
    context.flows.on_session_issued.append(signin.session_issued)
    logout = Logout(context, cache, http_for=http_for, random=random)
    return {START_PATH: signin.start, CALLBACK_PATH: signin.callback,
            BACKCHANNEL_PATH: logout.backchannel, SIGNOUT_PATH: logout.signout,
            SIGNED_OUT_PATH: logout.signed_out}
