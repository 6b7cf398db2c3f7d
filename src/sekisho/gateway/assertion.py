"""The identity assertion: a short-lived ES256 JWT telling an upstream who is calling.

`claims()` is pure (clock passed in). `AssertionSigner` signs with the KeyRing's active key
and keeps a per-process cache keyed by (session, route, kid): a token is reused while more
than half of its lifetime remains, so the ~30 µs ECDSA signature is paid about once per
session, route and half-lifetime instead of on every request. The audience is the route, so
a token captured by one upstream is useless at another (token replay across services).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from joserfc import jwt

from sekisho.config.model import AssertionSettings
from sekisho.gateway.keys import KeyRing
from sekisho.identity.principal import SessionInfo

MAX_LIFETIME = 60
_CACHE_MAX = 50_000


def claims(
    settings: AssertionSettings, route_id: str, session: SessionInfo, now: float,
    jti: str | None = None,
) -> dict[str, Any]:
    """The assertion's claims; `exp - iat` never exceeds 60 s whatever the config says."""
    lifetime = max(1, min(int(settings.lifetime), MAX_LIFETIME))
    iat = int(now)
    return {
        "iss": settings.issuer,
        "aud": route_id,
        "sub": session.username,
        "email": session.email,
        "name": session.display_name,
        "groups": sorted(session.groups),
        "amr": sorted(session.auth_methods),
        "sid": session.short_id,
        "iat": iat,
        "exp": iat + lifetime,
        "jti": jti or secrets.token_urlsafe(12),
    }


class AssertionSigner:
    """Signs assertions with the active key; caches them per (session, route, kid)."""

    def __init__(self, keyring: KeyRing, clock: Callable[[], float]) -> None:
        self._keyring = keyring
        self._clock = clock
        self._cache: dict[tuple[str, str, str], tuple[str, float, bytes]] = {}
        self.hits = 0
        self.misses = 0

    def token(self, settings: AssertionSettings, route_id: str, session: SessionInfo) -> str:
        return self._entry(settings, route_id, session)[0]

    def token_bytes(self, settings: AssertionSettings, route_id: str,
                    session: SessionInfo) -> bytes:
        """`token()` as the header value (encoded once per token, not per request)."""
        return self._entry(settings, route_id, session)[2]

    def _entry(self, settings: AssertionSettings, route_id: str,
               session: SessionInfo) -> tuple[str, float, bytes]:
        active = self._keyring.active
        now = self._clock()
        key = (session.session_id, route_id, active.kid)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            self.hits += 1
            return cached
        self.misses += 1
        body = claims(settings, route_id, session, now)
        token = jwt.encode({"alg": "ES256", "kid": active.kid, "typ": "JWT"}, body, active.key,
                           algorithms=["ES256"])
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()  # bounded memory; a cold cache only costs signatures
        # Reuse while more than half the lifetime remains.
        entry = self._cache[key] = (token, body["iat"] + (body["exp"] - body["iat"]) / 2,
                                    token.encode("ascii"))
        return entry

    def forget(self, session_id: str) -> None:
        for key in [k for k in self._cache if k[0] == session_id]:
            del self._cache[key]
