"""The signed-in principal as the gateway sees it: a plain value, safe to cache briefly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str  # sha256 hex of the cookie token (the storage key), never the token
    user_id: int
    username: str
    display_name: str
    email: str
    groups: frozenset[str]
    auth_methods: frozenset[str]  # e.g. {"pwd"}; later issues add "totp", "webauthn" …
    auth_time: datetime  # UTC, last primary proof
    created_at: datetime  # UTC
    expires_at: datetime  # UTC, absolute lifetime
    source_ip: str = ""
    mfa_time: datetime | None = None  # UTC, last second-factor proof ("totp", "webauthn" …)
    idp: str = ""  # the identity provider's id when the primary proof was "oidc"

    @property
    def last_proof(self) -> datetime:
        """The most recent proof of any kind (primary or second factor)."""
        if self.mfa_time is not None and self.mfa_time > self.auth_time:
            return self.mfa_time
        return self.auth_time

    @property
    def short_id(self) -> str:
        """First 12 hex digits: enough to name a session in logs, useless to hijack it."""
        return self.session_id[:12]
