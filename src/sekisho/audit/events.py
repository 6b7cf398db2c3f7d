"""Audit event types. Each is a frozen dataclass with a stable `event_type` and a docstring
that `docs/audit.md` is generated from (a test checks every event is documented).

Events carry plain values only (str, int, float, bool, tuples), so their canonical JSON is
well defined. Times are added by the log when the event is appended (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Base class; never appended itself."""

    event_type: ClassVar[str] = ""
    # Durable events are committed before the response that caused them is sent.
    durable: ClassVar[bool] = True

    @property
    def actor(self) -> str:
        return str(getattr(self, "user", "") or getattr(self, "admin", "") or "")


@dataclass(frozen=True, slots=True)
class AccessDecision(AuditEvent):
    """A request reached a route and the policy allowed or denied it."""

    event_type: ClassVar[str] = "access.decision"
    durable: ClassVar[bool] = False

    route: str
    user: str  # "" when unauthenticated
    decision: str  # "allow" | "deny"
    reasons: tuple[str, ...]
    source_ip: str
    method: str
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    duration_ms: float
    session: str = ""  # SessionInfo.short_id


@dataclass(frozen=True, slots=True)
class SignInSucceeded(AuditEvent):
    """A user proved their identity and a new session was issued."""

    event_type: ClassVar[str] = "signin.success"

    user: str
    source_ip: str
    methods: tuple[str, ...]
    session: str
    user_agent: str = ""


@dataclass(frozen=True, slots=True)
class SignInFailed(AuditEvent):
    """A sign-in attempt failed (unknown user and wrong password are recorded alike)."""

    event_type: ClassVar[str] = "signin.failure"

    user: str  # the name that was typed, truncated
    source_ip: str
    reason: str  # "invalid-credentials" | "account-disabled" | "throttled" | "csrf-invalid"
    user_agent: str = ""


@dataclass(frozen=True, slots=True)
class AccountLocked(AuditEvent):
    """Too many failures: an account or a source address is locked out for a while."""

    event_type: ClassVar[str] = "signin.lockout"

    key: str  # "account:<name>" | "ip:<address>"
    failures: int
    locked_until: str  # ISO 8601 UTC
    source_ip: str = ""


@dataclass(frozen=True, slots=True)
class SignedOut(AuditEvent):
    """A user signed out; the session was ended on the server and the cookie cleared."""

    event_type: ClassVar[str] = "signout"

    user: str
    session: str
    source_ip: str = ""


@dataclass(frozen=True, slots=True)
class SessionRevoked(AuditEvent):
    """An administrator (or the system) revoked a session before it expired."""

    event_type: ClassVar[str] = "session.revoked"

    admin: str
    session: str
    user: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ConfigReloaded(AuditEvent):
    """A new configuration snapshot was loaded and took effect."""

    event_type: ClassVar[str] = "config.reloaded"

    source: str
    sha256: str
    routes: int
    policies: int
    admin: str = "system"


@dataclass(frozen=True, slots=True)
class ConfigRejected(AuditEvent):
    """A configuration reload was refused; the previous snapshot stays in force."""

    event_type: ClassVar[str] = "config.rejected"

    source: str
    error: str
    admin: str = "system"


@dataclass(frozen=True, slots=True)
class UserChanged(AuditEvent):
    """A user account was created, changed, disabled, enabled or had its password set."""

    event_type: ClassVar[str] = "user.changed"

    admin: str
    user: str
    action: str  # "create" | "disable" | "enable" | "password" | "update"
    details: str = ""


@dataclass(frozen=True, slots=True)
class GroupChanged(AuditEvent):
    """A group was created or its membership changed."""

    event_type: ClassVar[str] = "group.changed"

    admin: str
    group: str
    action: str  # "create" | "add-member" | "remove-member"
    user: str = ""


@dataclass(frozen=True, slots=True)
class SigningKeyRotated(AuditEvent):
    """A new assertion signing key became active; older keys stay published until retired."""

    event_type: ClassVar[str] = "key.rotated"

    kid: str
    admin: str = "system"
