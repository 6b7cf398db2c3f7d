"""The OIDC error vocabulary: one class, a reason code from a closed list, a status hint.

The reason goes to the audit log (`OidcRejected.reason`) and to tests; the person at the
browser only ever sees a generic page in Japanese and English, so an attacker probing the
callback learns nothing about which check failed.
"""

from __future__ import annotations

from sekisho.errors import SekishoError

# Every reason a federated sign-in or a back-channel logout can be refused for.
REASONS = frozenset({
    # the identity provider could not be used
    "idp-unavailable", "idp-unknown", "discovery-invalid", "jwks-invalid", "token-error",
    # the browser side of the transaction
    "state-invalid", "state-mismatch", "idp-error",
    # the ID token or logout token
    "token-malformed", "alg-not-allowed", "key-unknown", "bad-signature", "wrong-issuer",
    "wrong-audience", "wrong-azp", "expired", "issued-in-future", "too-old", "nonce-mismatch",
    "nonce-replay", "claim-missing", "wrong-type", "events-invalid", "nonce-present",
    "jti-replay",
    # mapping the claims to a Sekisho user
    "email-missing", "email-unverified", "email-invalid", "email-domain", "user-unknown",
    "user-disabled", "identity-conflict",
})


class OidcError(SekishoError):
    """A federated sign-in or logout was refused; `code` is one of `REASONS`."""

    code = "idp-unavailable"
    status = 400

    def __init__(self, code: str, description: str = "", *, status: int = 400) -> None:
        assert code in REASONS, code
        super().__init__(description or code, code=code)
        self.status = status


def unavailable(description: str) -> OidcError:
    return OidcError("idp-unavailable", description, status=502)
