"""Tables. Every schema change here comes with an Alembic migration under `migrations/`.

Times are stored as timezone-aware UTC. Session ids and API secrets are stored as SHA-256
digests, so a copy of the database does not hand out live sessions.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


UTC = DateTime(timezone=True)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    display_name: Mapped[str] = mapped_column(String(256), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTC)
    updated_at: Mapped[datetime] = mapped_column(UTC)
    password_changed_at: Mapped[datetime | None] = mapped_column(UTC, nullable=True)


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[datetime] = mapped_column(UTC)


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class Session(Base):
    __tablename__ = "sessions"

    # sha256 hex of the opaque token in the cookie; the token itself is never stored.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTC)
    last_seen_at: Mapped[datetime] = mapped_column(UTC)
    expires_at: Mapped[datetime] = mapped_column(UTC)  # absolute lifetime
    auth_time: Mapped[datetime] = mapped_column(UTC)
    auth_methods: Mapped[str] = mapped_column(String(256), default="pwd")  # comma-separated
    source_ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(512), default="")
    revoked_at: Mapped[datetime | None] = mapped_column(UTC, nullable=True)
    revoked_reason: Mapped[str] = mapped_column(String(128), default="")
    mfa_time: Mapped[datetime | None] = mapped_column(UTC, nullable=True)  # last 2nd factor
    idp: Mapped[str] = mapped_column(String(128), default="")  # IdP id for "oidc" sessions
    # When each method was last proven: JSON {"webauthn_uv": "2026-…+00:00", …} (0013).
    proofs: Mapped[str] = mapped_column(Text, default="{}")


class ThrottleState(Base):
    """Failed sign-in counters per key ("account:<name>" or "ip:<address>")."""

    __tablename__ = "throttle_state"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime | None] = mapped_column(UTC, nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(UTC, nullable=True)


# The conditions of the partial audit indexes; a query must repeat them word for word (as
# literals, not bound parameters) for SQLite's planner to use those indexes.
RARE = "event_type <> 'access.decision'"
DENIED = "decision = 'deny'"


class AuditRecord(Base):
    """One link of the hash chain: hash = sha256(prev_hash || canonical JSON of the event)."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UTC)
    event_type: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(128), default="")
    body: Mapped[str] = mapped_column(Text)  # canonical JSON of the event, exactly as hashed
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # Search columns (migration 0011): derived from the body by `audit.columns`, not hashed.
    route: Mapped[str] = mapped_column(String(128), default="")
    decision: Mapped[str] = mapped_column(String(8), default="")

    # Newest first is seq descending; each filter has an index that yields its records in seq
    # order, and the dashboard's counts have time indexes (docs/audit.md). Those of rare
    # records are partial: an allowed access decision (most of the log) enters three indexes,
    # as before migration 0011 (the route index took the place of the event-type index).
    __table_args__ = (
        Index("ix_audit_events_time_seq", "occurred_at", "seq"),
        Index("ix_audit_events_actor_seq", "actor", "seq"),
        Index("ix_audit_events_route_seq", "route", "seq"),
        Index("ix_audit_events_type_seq", "event_type", "seq",
              sqlite_where=text(RARE), postgresql_where=text(RARE)),
        Index("ix_audit_events_type_time", "event_type", "occurred_at",
              sqlite_where=text(RARE), postgresql_where=text(RARE)),
        Index("ix_audit_events_deny_seq", "seq",
              sqlite_where=text(DENIED), postgresql_where=text(DENIED)),
        Index("ix_audit_events_deny_time", "occurred_at", "decision",  # covering for counts
              sqlite_where=text(DENIED), postgresql_where=text(DENIED)),
    )


class AuditReason(Base):
    """The searchable reasons of one audit record (migration 0011; see `audit.columns`):
    one row per reason code of a denial or failure, for the reason filter and the dashboard."""

    __tablename__ = "audit_reasons"

    reason: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                     primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UTC)
    event_type: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_reasons_time", "occurred_at", "event_type"),
        {"sqlite_with_rowid": False},
    )


class AuditHead(Base):
    """The single row every writer locks to append: the last sequence number and hash."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))


class SigningKey(Base):
    """Assertion signing keys (ES256). The newest active key signs; all unexpired are published."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16), default="ES256")
    private_pem: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTC)
    retired_at: Mapped[datetime | None] = mapped_column(UTC, nullable=True)


class InstallationSecret(Base):
    """Random per-installation secrets (e.g. the CSRF HMAC key), shared by every worker."""

    __tablename__ = "installation_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))  # base64url of the random bytes
    created_at: Mapped[datetime] = mapped_column(UTC)


class LoginFlow(Base):
    """A sign-in (or step-up) between the first proof and the second factor (migration 0003).

    Keyed by the SHA-256 of the random `__Host-sekisho-flow` cookie; single use (`consumed_at`)
    and short-lived (`expires_at`).
    """

    __tablename__ = "login_flows"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    mode: Mapped[str] = mapped_column(String(16))  # "signin" | "stepup"
    primary_method: Mapped[str] = mapped_column(String(32))
    idp: Mapped[str] = mapped_column(String(128), default="")
    methods: Mapped[str] = mapped_column(String(256), default="")  # comma-separated so far
    rd: Mapped[str] = mapped_column(Text, default="")
    session_id: Mapped[str] = mapped_column(String(64), default="")  # step-up: the old session
    agent_hash: Mapped[str] = mapped_column(String(64), default="")
    source_ip: Mapped[str] = mapped_column(String(64), default="")
    auth_time: Mapped[datetime] = mapped_column(UTC)  # the primary proof
    created_at: Mapped[datetime] = mapped_column(UTC)
    expires_at: Mapped[datetime] = mapped_column(UTC)
    consumed_at: Mapped[datetime | None] = mapped_column(UTC, nullable=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)


class Factor(Base):
    """A second factor of a user (migration 0003). Sekisho's own kind is "totp".

    `secret` holds the AES-GCM-encrypted TOTP key; `last_step` is the last accepted time step
    (replay store: a code is accepted only if its step is greater, in one UPDATE).
    """

    __tablename__ = "factors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(128), default="")
    secret: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[str] = mapped_column(Text, default="{}")  # JSON: algorithm, digits, period
    confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    last_step: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTC)
    last_used_at: Mapped[datetime | None] = mapped_column(UTC, nullable=True)


class RecoveryCode(Base):
    """A single-use recovery code, stored as HMAC-SHA256 under an installation key (0003)."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTC)
    used_at: Mapped[datetime | None] = mapped_column(UTC, nullable=True)


class Device(Base):
    """An enrolled device and the certificate Sekisho issued to it (migration 0006).

    `status` is "active", "suspended" or "revoked"; a certificate whose device is not active
    is listed in the CRL. `cert_serial` is the serial number in lower-case hex.
    """

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), unique=True)
    inventory_id: Mapped[str] = mapped_column(String(64), default="")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTC)
    cert_serial: Mapped[str] = mapped_column(String(64), index=True)
    cert_not_after: Mapped[datetime] = mapped_column(UTC)
    revoked_at: Mapped[datetime | None] = mapped_column(UTC, nullable=True)
    revoked_reason: Mapped[str] = mapped_column(String(128), default="")


class EnrolmentCode(Base):
    """A one-time device enrolment code, stored as the SHA-256 of the code (migration 0006).

    Consumed by one conditional UPDATE (`used_at IS NULL AND expires_at > now`).
    """

    __tablename__ = "enrolment_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTC)
    expires_at: Mapped[datetime] = mapped_column(UTC)
    used_at: Mapped[datetime | None] = mapped_column(UTC, nullable=True)
    device_id: Mapped[str] = mapped_column(String(64), default="")


class EdrEvent(Base):
    """An EDR webhook event already acted on, by the sender's event id (migration 0007).

    The primary key makes each `event_id` single use: a replayed or re-delivered
    notification finds its row and causes no second action.
    """

    __tablename__ = "edr_events"

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTC)


class DevicePosture(Base):
    """The latest verified posture report of each device (migration 0008).

    `report` is the signed report's canonical JSON; `reported_at` is the time inside it,
    which only ever moves forward (an older report cannot replace a newer one).
    """

    __tablename__ = "device_posture"

    # No foreign key: device ids are random and never reused, and the device tables'
    # migration (0006) must stay reversible on its own.
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reported_at: Mapped[datetime] = mapped_column(UTC)
    received_at: Mapped[datetime] = mapped_column(UTC)
    report: Mapped[str] = mapped_column(Text)
    profile: Mapped[str] = mapped_column(String(64), default="")  # at receipt, for listings


class PostureNonce(Base):
    """Nonces of accepted posture reports, kept until the report could no longer be fresh
    (migration 0008); the primary key makes each nonce single use (report replay)."""

    __tablename__ = "posture_nonces"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTC, index=True)


class Change(Base):
    """One committed change running gateways must act on at once (migration 0009).

    Written in the same transaction as the revocation, disabling or suspension it announces,
    so it is never lost and never seen before that change is visible. `kind` is "session",
    "user" or "device"; `subject` the session id, user id or device id. Rows are pruned after
    an hour (`storage.changes`): a reader that fell further behind re-checks everything.
    """

    __tablename__ = "changes"
    # Ids only grow, never reused after pruning (SQLite AUTOINCREMENT; a sequence elsewhere):
    # readers remember the last id they saw.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(UTC, index=True)


class ConnectorToken(Base):
    """A one-time connector enrolment token, stored as its SHA-256 (migration 0013).

    Spent by one conditional UPDATE (`used_at IS NULL AND expires_at > now`), in the same
    transaction that records the connector it enrolled.
    """

    __tablename__ = "connector_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTC)
    expires_at: Mapped[datetime] = mapped_column(UTC)
    used_at: Mapped[datetime | None] = mapped_column(UTC, nullable=True)
    connector_id: Mapped[str] = mapped_column(String(64), default="")


class ConnectorRecord(Base):
    """An enrolled connector and the certificate the CA issued to it (migration 0013).

    `status` is "active" or "revoked"; the broker checks it on every tunnel handshake and
    cuts a tunnel whose connector is revoked. `cert_serial` is lower-case hex.
    """

    __tablename__ = "connectors"

    connector_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[str] = mapped_column(String(16), default="active")
    cert_serial: Mapped[str] = mapped_column(String(64), unique=True)
    cert_not_after: Mapped[datetime] = mapped_column(UTC)
    enrolled_at: Mapped[datetime] = mapped_column(UTC)
    last_seen: Mapped[datetime | None] = mapped_column(UTC, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTC, nullable=True)
