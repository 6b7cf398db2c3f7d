"""Validate ID tokens (OpenID Connect Core 1.0 §3.1.3.7) and logout tokens (Back-Channel
Logout 1.0 §2.6). Pure: the key comes from a callback, the time is a parameter.

The order matters. The header's algorithm is checked against the IdP's allow-list *before*
any key is chosen: `alg: none` would skip the signature, and `HS256` would make a verifier
use the IdP's public RSA key as an HMAC secret that anyone can compute (algorithm
confusion, CVE-2015-9235 and kin). Only then is the key found by `kid` and the signature
checked, and only a verified payload is read for claims. Every refusal names a reason from
`errors.REASONS`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import Key

from sekisho.identity.oidc.errors import OidcError

MAX_TOKEN_BYTES = 16 * 1024
CLOCK_SKEW = 60.0  # seconds of disagreement tolerated between Sekisho and the IdP clocks
MAX_TOKEN_AGE = 600.0  # an ID / logout token issued longer ago than this is refused
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
_KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}

KeyLookup = Callable[[str, str], Awaitable[Key]]  # (kid, kty) -> key


@dataclass(frozen=True, slots=True)
class IdTokenClaims:
    sub: str
    claims: dict[str, Any]  # every claim of the verified token

    @property
    def sid(self) -> str:
        value = self.claims.get("sid")
        return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class LogoutClaims:
    sub: str
    sid: str
    jti: str
    iat: float
    exp: float | None


def _fail(code: str, description: str = "") -> OidcError:
    return OidcError(code, description or code)


async def verify_signature(token: str, *, algorithms: Collection[str],
                           key_for: KeyLookup) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a compact JWS whose signature verified under an allowed alg."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise _fail("token-malformed")
    try:
        unverified = jws.extract_compact(token.encode("ascii"))
    except (JoseError, ValueError, UnicodeError):
        raise _fail("token-malformed") from None
    header = dict(unverified.headers())
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms or alg == "none" or \
            alg.startswith("HS"):
        raise _fail("alg-not-allowed", f"algorithm {str(alg)[:16]!r} is not allowed")
    if header.get("crit") is not None or "jku" in header or "x5u" in header or "jwk" in header:
        # Keys named by the token itself (jku/x5u/jwk) would let a forger supply their own.
        raise _fail("token-malformed", "unsupported JOSE header")
    kid = header.get("kid", "")
    if not isinstance(kid, str):
        raise _fail("token-malformed")
    key = await key_for(kid, _KEY_TYPE.get(alg[:2], "?"))
    try:
        verified = jws.deserialize_compact(token, key, algorithms=[alg])
    except BadSignatureError:
        raise _fail("bad-signature") from None
    except (JoseError, ValueError):
        raise _fail("bad-signature") from None
    try:
        payload = json.loads(verified.payload)
    except (ValueError, UnicodeDecodeError):
        raise _fail("token-malformed") from None
    if not isinstance(payload, dict):
        raise _fail("token-malformed")
    return header, payload


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail("claim-missing", f"{name} is missing")
    return float(value)


def _check_common(claims: dict[str, Any], *, issuer: str, client_id: str,
                  now: datetime) -> float:
    """iss, aud, azp and iat; returns iat."""
    if claims.get("iss") != issuer:
        raise _fail("wrong-issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if client_id not in audiences:
        raise _fail("wrong-audience")
    azp = claims.get("azp")
    # Several audiences: the token was issued to someone (azp) and we must be that one,
    # else a token minted for another client of the same IdP could sign us in.
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise _fail("wrong-azp")
    iat = _number(claims, "iat")
    stamp = now.timestamp()
    if iat > stamp + CLOCK_SKEW:
        raise _fail("issued-in-future")
    if iat < stamp - MAX_TOKEN_AGE - CLOCK_SKEW:
        raise _fail("too-old")
    return iat


async def validate_id_token(token: str, *, issuer: str, client_id: str, nonce: str,
                            algorithms: Collection[str], key_for: KeyLookup,
                            now: datetime) -> IdTokenClaims:
    header, claims = await verify_signature(token, algorithms=algorithms, key_for=key_for)
    if header.get("typ") not in (None, "JWT", "jwt"):
        raise _fail("wrong-type")  # a logout token (typ logout+jwt) is no ID token
    _check_common(claims, issuer=issuer, client_id=client_id, now=now)
    if _number(claims, "exp") <= now.timestamp() - CLOCK_SKEW:
        raise _fail("expired")
    # The nonce binds the token to this browser's request: a token stolen from another
    # sign-in (or replayed) carries another nonce.
    if not nonce or claims.get("nonce") != nonce:
        raise _fail("nonce-mismatch")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise _fail("claim-missing", "sub is missing")
    return IdTokenClaims(sub=sub, claims=claims)


async def validate_logout_token(token: str, *, issuer: str, client_id: str,
                                algorithms: Collection[str], key_for: KeyLookup,
                                now: datetime) -> LogoutClaims:
    header, claims = await verify_signature(token, algorithms=algorithms, key_for=key_for)
    if header.get("typ") not in (None, "logout+jwt", "application/logout+jwt"):
        raise _fail("wrong-type")  # an ID token replayed as a logout token
    iat = _check_common(claims, issuer=issuer, client_id=client_id, now=now)
    exp = claims.get("exp")
    if exp is not None and _number(claims, "exp") <= now.timestamp() - CLOCK_SKEW:
        raise _fail("expired")
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(LOGOUT_EVENT), dict):
        raise _fail("events-invalid")
    if "nonce" in claims:
        raise _fail("nonce-present")  # §2.6: prevents an ID token being used as logout token
    jti = claims.get("jti")
    sub, sid = claims.get("sub", ""), claims.get("sid", "")
    if not isinstance(jti, str) or not jti or not isinstance(sub, str) \
            or not isinstance(sid, str) or not (sub or sid):
        raise _fail("claim-missing", "jti, and sub or sid, are required")
    return LogoutClaims(sub=sub[:255], sid=sid[:255], jti=jti[:255], iat=iat,
                        exp=float(exp) if isinstance(exp, int | float) else None)
