"""The signed-in principal as the gateway sees it: a plain value, safe to cache briefly."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

NO_PROOFS: Mapping[str, datetime] = MappingProxyType({})
PRIMARY_METHODS = frozenset({"pwd", "oidc"})


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
    # method → UTC time of its last proof, read-only: what "a passkey within 15 minutes"
    # is decided on (`mfa: {methods, within}`); a method absent here has no known time.
    proofs: Mapping[str, datetime] = field(default_factory=lambda: NO_PROOFS, hash=False)

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


def proofs_at(methods: Iterable[str], when: datetime,
              earlier: Mapping[str, datetime] = NO_PROOFS) -> Mapping[str, datetime]:
    """`earlier` with each of `methods` proven at `when` (read-only)."""
    return MappingProxyType({**earlier, **dict.fromkeys(methods, when)})


def proofs_from(methods: Iterable[str], auth_time: datetime,
                mfa_time: datetime | None) -> Mapping[str, datetime]:
    """Proof times for a caller that knows only the two old times: the primary methods at
    `auth_time`, the second factors at `mfa_time` (or `auth_time` when there is none)."""
    second = auth_time if mfa_time is None else mfa_time
    return MappingProxyType({name: auth_time if name in PRIMARY_METHODS else second
                             for name in methods})
