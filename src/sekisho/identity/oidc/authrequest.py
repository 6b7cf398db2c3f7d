"""The authorization request (OpenID Connect Core §3.1.2.1) with PKCE (RFC 7636, S256).

Pure: randomness is a parameter. Three fresh secrets per request, each against one attack:
`state` (bound to the browser's cookie) stops login CSRF — an attacker's code arriving in
the victim's browser; `nonce` (echoed in the ID token) stops token replay and injection;
the PKCE `code_verifier` (kept server-side, only its hash travels) makes an intercepted
authorization code useless to anybody but Sekisho.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from sekisho.config.model import IdentityProvider
from sekisho.identity.oidc.discovery import ProviderMetadata

CALLBACK_PATH = "/.sekisho/oidc/callback"

Random = Callable[[int], str]  # n bytes of entropy -> URL-safe text (secrets.token_urlsafe)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    url: str
    state: str
    nonce: str
    code_verifier: str
    redirect_uri: str


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def build_request(metadata: ProviderMetadata, idp: IdentityProvider, origin: str, *,
                  random: Random = secrets.token_urlsafe) -> AuthRequest:
    """`origin` is `https://host[:port]` of the route the browser is on."""
    state, nonce, verifier = random(32), random(32), random(48)
    redirect_uri = origin + CALLBACK_PATH
    params = {
        "response_type": "code",
        "client_id": idp.client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(dict.fromkeys(("openid", *idp.scopes))),
        "state": state,
        "nonce": nonce,
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
    }
    if idp.acr_values:
        params["acr_values"] = " ".join(idp.acr_values)
    endpoint = metadata.authorization_endpoint
    url = endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)
    return AuthRequest(url=url, state=state, nonce=nonce, code_verifier=verifier,
                       redirect_uri=redirect_uri)
