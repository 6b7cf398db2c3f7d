"""CSRF tokens for the gateway's own forms: signed double-submit, bound to a browser secret.

Cross-site request forgery (a page elsewhere posting to `/.sekisho/signout`, or signing a
victim into the attacker's account — login CSRF) is refused because the form must carry
`token = issued.nonce.HMAC(key, binding|issued|nonce)`, where `binding` is a secret of this
browser that the attacker's page cannot read:
- the session id (the SHA-256 of the session cookie) when the browser has a session, else
- the value of the pre-session cookie `__Host-sekisho-csrf` (random, HttpOnly, Secure).

The HMAC key is the installation secret "csrf" (`storage.secrets_store`): one for all
workers. Tokens expire after `max_age` seconds. Comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable

PRE_SESSION_COOKIE = "__Host-sekisho-csrf"
FIELD = "csrf"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def session_binding(session_id: str) -> str:
    return "sid:" + session_id


def cookie_binding(cookie_value: str) -> str:
    return "pre:" + cookie_value


def new_pre_session_value() -> str:
    return secrets.token_urlsafe(32)


def pre_session_cookie(value: str, *, secure: bool = True) -> str:
    """Set-Cookie value for the pre-session binding (browser session lifetime)."""
    return (f"{PRE_SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax"
            + ("; Secure" if secure else ""))


class CsrfProtector:
    """Issues and verifies tokens; `key` is the installation secret."""

    max_age: float = 12 * 3600
    max_token_length: int = 200

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("CSRF key too short")
        self._key = key
        self._clock = clock

    def _mac(self, binding: str, issued: str, nonce: str) -> str:
        message = f"sekisho-csrf|{binding}|{issued}|{nonce}".encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def issue(self, binding: str) -> str:
        issued = str(int(self._clock()))
        nonce = secrets.token_urlsafe(16)
        return f"{issued}.{nonce}.{self._mac(binding, issued, nonce)}"

    def verify(self, token: str | None, bindings: Iterable[str]) -> bool:
        """True when the token was issued by us for one of `bindings` and has not expired."""
        if not token or len(token) > self.max_token_length:
            return False
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[0].isascii():
            return False
        issued, nonce, mac = parts
        age = self._clock() - int(issued)
        if age < -60 or age > self.max_age:
            return False
        ok = False
        for binding in bindings:
            if not binding or binding.endswith(":"):
                continue  # an empty binding must never match (no cookie, no session)
            # hmac.compare_digest: timing does not reveal how many characters matched.
            ok |= hmac.compare_digest(self._mac(binding, issued, nonce).encode(),
                                      mac.encode("ascii", "replace"))
        return ok
