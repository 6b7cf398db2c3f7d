"""The token request (OpenID Connect Core §3.1.3): authorization code + PKCE verifier → ID token.

The client authenticates as configured (`client_secret_basic`, `client_secret_post`, or
`none` for a public client relying on PKCE alone). An error answer from the IdP is reported
as `token-error` with the OAuth error code only; the secret never appears in any message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sekisho.config.model import IdentityProvider
from sekisho.identity.oidc.discovery import ProviderMetadata
from sekisho.identity.oidc.errors import OidcError
from sekisho.identity.oidc.http import IdpHttp

_ERROR_CODE = re.compile(r"^[a-z_]{1,64}$")


@dataclass(frozen=True, slots=True)
class TokenResponse:
    id_token: str


async def exchange_code(http: IdpHttp, metadata: ProviderMetadata, idp: IdentityProvider, *,
                        code: str, redirect_uri: str, code_verifier: str) -> TokenResponse:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": code_verifier}
    auth = None
    secret = idp.client_secret.reveal() if idp.client_secret is not None else ""
    if idp.client_auth == "client_secret_basic":
        auth = (idp.client_id, secret)
    elif idp.client_auth == "client_secret_post":
        form |= {"client_id": idp.client_id, "client_secret": secret}
    else:
        form["client_id"] = idp.client_id
    status, body = await http.post_form(metadata.token_endpoint, form, auth=auth)
    if status != 200:
        error = body.get("error")
        shown = error if isinstance(error, str) and _ERROR_CODE.match(error) else "unknown"
        raise OidcError("token-error", f"token endpoint answered HTTP {status} ({shown})",
                        status=502)
    id_token = body.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise OidcError("token-error", "token response has no id_token", status=502)
    return TokenResponse(id_token=id_token)
