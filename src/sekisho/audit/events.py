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


# An AccessDecision's fields in declaration order, as a plain tuple: what the gateway hands
# a sink's `record_access` on every request (building the frozen event costs more than the
# rest of recording it; `AccessDecision(*fields)` is the same event).
AccessFields = tuple[str, str, str, tuple[str, ...], str, str, str, int, int, int, float, str]


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

    key: str  # "account:<name>" | "ip:<address>" | "mfa-…" | "enrol-ip:<ip>" | "edr-ip:<ip>"
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


@dataclass(frozen=True, slots=True)
class FactorChanged(AuditEvent):
    """A second factor (TOTP, passkey, …) was enrolled or removed, or recovery codes renewed."""

    event_type: ClassVar[str] = "mfa.factor.changed"

    user: str
    kind: str  # "totp" | "webauthn" | "recovery"
    action: str  # "enrol" | "remove" | "renew" | "rename" (passkeys)
    factor: str = ""  # the factor's id or name
    source_ip: str = ""
    admin: str = ""  # set when an administrator made the change


@dataclass(frozen=True, slots=True)
class FactorsReset(AuditEvent):
    """An administrator removed every second factor and recovery code of a user."""

    event_type: ClassVar[str] = "mfa.factors.reset"

    admin: str
    user: str
    factors: int
    recovery_codes: int

    @property
    def actor(self) -> str:
        return self.admin


@dataclass(frozen=True, slots=True)
class RecoveryCodeUsed(AuditEvent):
    """A single-use recovery code replaced the second factor at sign-in or step-up."""

    event_type: ClassVar[str] = "mfa.recovery.used"

    user: str
    source_ip: str
    remaining: int


@dataclass(frozen=True, slots=True)
class MfaFailed(AuditEvent):
    """A second-factor attempt failed (wrong or replayed code, throttled, expired flow)."""

    event_type: ClassVar[str] = "mfa.failure"

    user: str
    method: str  # "totp" | "recovery" | "webauthn" …
    reason: str  # "invalid-code" | "throttled" | "flow-ended" | "csrf-invalid" …
    source_ip: str


@dataclass(frozen=True, slots=True)
class PasskeySignCountRegressed(AuditEvent):
    """A passkey's signature counter did not grow (a cloned authenticator?); it was refused."""

    event_type: ClassVar[str] = "webauthn.sign_count_regressed"

    user: str
    credential: str  # the credential's row id and name
    stored: int  # the counter Sekisho had recorded
    received: int  # the counter in the refused assertion
    source_ip: str


@dataclass(frozen=True, slots=True)
class PasskeySignInFailed(AuditEvent):
    """A sign-in with a passkey alone (passwordless) was refused; no session was issued."""

    event_type: ClassVar[str] = "webauthn.signin_failed"

    reason: str  # "unknown-credential" | "invalid-assertion" | "challenge-invalid" | …
    source_ip: str
    user: str = ""  # the account concerned, when the credential is known


@dataclass(frozen=True, slots=True)
class SessionSteppedUp(AuditEvent):
    """A session proved a factor again; it was replaced by a new session id (rotation)."""

    event_type: ClassVar[str] = "session.stepup"

    user: str
    method: str
    session: str  # the new session's short id
    previous: str  # the replaced session's short id
    source_ip: str


@dataclass(frozen=True, slots=True)
class OidcSignIn(AuditEvent):
    """An identity provider proved a user's identity (a verified ID token was accepted)."""

    event_type: ClassVar[str] = "oidc.signin"

    user: str
    idp: str
    source_ip: str
    idp_mfa: bool  # the ID token asserted MFA (amr / acr)
    next_step: str  # "session" | "second-factor"


@dataclass(frozen=True, slots=True)
class OidcRejected(AuditEvent):
    """A federated sign-in or a back-channel logout was refused; no session was issued."""

    event_type: ClassVar[str] = "oidc.rejected"

    idp: str
    reason: str  # a code from sekisho.identity.oidc.errors.REASONS
    source_ip: str
    user: str = ""  # the account concerned, when known


@dataclass(frozen=True, slots=True)
class BackchannelLogout(AuditEvent):
    """An identity provider signed a user out (Back-Channel Logout); their sessions ended."""

    event_type: ClassVar[str] = "oidc.backchannel_logout"

    idp: str
    user: str  # "" when no Sekisho session matched
    sessions: int  # how many Sekisho sessions (and pending sign-ins) were ended
    source_ip: str


@dataclass(frozen=True, slots=True)
class DeviceEnrolmentCodeCreated(AuditEvent):
    """An administrator created a one-time code with which a user's device can enrol."""

    event_type: ClassVar[str] = "device.code_created"

    admin: str
    user: str  # the user the code (and the device) will belong to
    code: str  # first 8 hex digits of the code's SHA-256 (never the code)
    expires_at: str  # ISO 8601 UTC


@dataclass(frozen=True, slots=True)
class DeviceEnrolled(AuditEvent):
    """A device spent an enrolment code and received a certificate from the internal CA."""

    event_type: ClassVar[str] = "device.enrolled"

    user: str
    device: str  # the device id (server-generated)
    name: str
    inventory_id: str
    serial: str  # certificate serial number, hex
    code: str  # first 8 hex digits of the spent code's SHA-256
    source_ip: str


@dataclass(frozen=True, slots=True)
class DeviceStatusChanged(AuditEvent):
    """A device was renamed, suspended or revoked (its certificate then appears in the CRL)."""

    event_type: ClassVar[str] = "device.changed"

    admin: str
    device: str
    user: str  # the device's owner
    action: str  # "rename" | "suspend" | "revoke"
    details: str = ""  # the new name, or the reason

    @property
    def actor(self) -> str:
        return self.admin


@dataclass(frozen=True, slots=True)
class DeviceCompromised(AuditEvent):
    """An EDR product reported a device compromised: it was suspended and its user signed out."""

    event_type: ClassVar[str] = "device.compromised"

    device: str
    user: str  # the device's owner, whose sessions were all revoked
    reason: str  # "edr:<reason given by the EDR product>"
    event_id: str  # the EDR product's event id (single use)
    sessions_revoked: int
    source_ip: str


@dataclass(frozen=True, slots=True)
class EdrHookRefused(AuditEvent):
    """A call to the EDR webhook was refused before any action (signature, time, request)."""

    event_type: ClassVar[str] = "device.edr_refused"

    reason: str  # "signature-invalid" | "timestamp-stale" | "request-invalid" | "throttled" | ...
    source_ip: str


@dataclass(frozen=True, slots=True)
class PostureReported(AuditEvent):
    """A device sent a signed posture report; it was verified, stored and classified."""

    event_type: ClassVar[str] = "device.posture"

    device: str
    user: str  # the device's owner
    profile: str  # the profile the report earns ("quarantine" when none passes)
    failed: str  # failed checks of the best profile, comma-separated ("" when it passed)
    os: str  # OS name and version from the report
    source_ip: str


@dataclass(frozen=True, slots=True)
class WebSocketClosed(AuditEvent):
    """An open WebSocket was closed because re-deciding its access no longer allowed it."""

    event_type: ClassVar[str] = "websocket.closed"
    durable: ClassVar[bool] = False

    route: str
    user: str  # "" when it was opened without a session
    session: str  # short id of the session that opened it
    trigger: str  # "open" | "session" | "user" | "device" | "reload" | "timer" | "storage" | "gap"
    reasons: tuple[str, ...]
    source_ip: str
    duration_s: float  # how long it was open
    bytes_in: int  # client to upstream
    bytes_out: int  # upstream to client


@dataclass(frozen=True, slots=True)
class ConfigEdited(AuditEvent):
    """An administrator changed the configuration file from the admin console or API.

    Appended before the file is written (no audit, no change); the reload that follows is
    recorded by `config.reloaded` or `config.rejected`."""

    event_type: ClassVar[str] = "config.edited"

    admin: str
    source: str  # the configuration file
    before_sha256: str
    after_sha256: str
    diff: str  # unified diff, current → new, inline secrets redacted, capped
    comment: str
    via: str  # "session" | "token"
    source_ip: str


@dataclass(frozen=True, slots=True)
class ConfigEditFailed(AuditEvent):
    """An audited configuration edit could not be written; the file is unchanged."""

    event_type: ClassVar[str] = "config.edit_failed"

    admin: str
    source: str
    after_sha256: str
    error: str  # the operating system's reason (no file content)
    source_ip: str


@dataclass(frozen=True, slots=True)
class ApiTokenChanged(AuditEvent):
    """A superadmin (or a superadmin's token) created or revoked an admin API token."""

    event_type: ClassVar[str] = "admin.api_token"

    admin: str  # who did it: a user name, or "token:<name>"
    action: str  # "created" | "revoked"
    token: str  # the token's public id (never its secret)
    name: str
    role: str
    expires_at: str  # ISO 8601, UTC
    source_ip: str


@dataclass(frozen=True, slots=True)
class AuditVerified(AuditEvent):
    """An administrator verified the audit hash chain from the admin console or API."""

    event_type: ClassVar[str] = "audit.verified"

    admin: str
    ok: bool
    checked: int  # records found intact (before the first broken one)
    head_seq: int  # the chain head when the verification ran
    first_bad_seq: int  # 0 when the chain is intact
    problem: str  # what is wrong at first_bad_seq ("" when intact)
    source_ip: str


@dataclass(frozen=True, slots=True)
class ConnectorTokenCreated(AuditEvent):
    """An administrator created a one-time token with which a connector of a site can enrol."""

    event_type: ClassVar[str] = "connector.token_created"

    admin: str
    site: str
    token: str  # first 8 hex digits of the token's SHA-256 (never the token)
    expires_at: str  # ISO 8601 UTC


@dataclass(frozen=True, slots=True)
class ConnectorEnrolled(AuditEvent):
    """A connector spent an enrolment token and received a certificate from the internal CA."""

    event_type: ClassVar[str] = "connector.enrolled"

    connector: str  # the connector id (server-generated)
    site: str
    name: str
    serial: str  # certificate serial number, hex
    token: str  # first 8 hex digits of the spent token's SHA-256
    source_ip: str


@dataclass(frozen=True, slots=True)
class ConnectorRevoked(AuditEvent):
    """An administrator revoked a connector: its tunnels are cut and its certificate refused."""

    event_type: ClassVar[str] = "connector.revoked"

    admin: str
    connector: str
    site: str


@dataclass(frozen=True, slots=True)
class ConnectorConnected(AuditEvent):
    """A connector's tunnel handshake was accepted, or refused by the registry."""

    event_type: ClassVar[str] = "connector.connected"
    durable: ClassVar[bool] = False

    connector: str  # "" when the certificate matches no connector
    site: str
    accepted: bool
    reason: str  # "" when accepted; "revoked", "unknown-certificate", "protocol"
    source_ip: str


@dataclass(frozen=True, slots=True)
class ConnectorDisconnected(AuditEvent):
    """A connector's tunnel ended (closed, lost, timed out, or cut on revocation)."""

    event_type: ClassVar[str] = "connector.disconnected"
    durable: ClassVar[bool] = False

    connector: str
    site: str
    reason: str
    streams: int  # streams carried during the tunnel's life
    source_ip: str


@dataclass(frozen=True, slots=True)
class ConnectorStreamRefused(AuditEvent):
    """A stream through a connector failed to open: the agent refused the destination (not
    allow-listed), could not reach it, or no connector of the site was connected."""

    event_type: ClassVar[str] = "connector.stream_refused"
    durable: ClassVar[bool] = False

    connector: str  # "" when no connector of the site was available
    site: str
    destination: str  # host:port
    code: str  # "refused", "connect-failed", "no-connector", …


@dataclass(frozen=True, slots=True)
class TcpOpened(AuditEvent):
    """A `sekisho tcp` connection was allowed and its destination connected: the splice
    starts (the decision itself is the `access.decision` before it)."""

    event_type: ClassVar[str] = "tcp.opened"
    durable: ClassVar[bool] = False

    route: str
    user: str
    session: str  # short id of the session behind the CLI credential
    destination: str  # host:port as the route names it
    via: str  # "direct" or "connector:<site>"
    source_ip: str


@dataclass(frozen=True, slots=True)
class TcpClosed(AuditEvent):
    """A `sekisho tcp` connection ended: who ended it, bytes each way and how long it lasted.

    `ended` is "client" or "destination" (a side closed), "cut" (re-deciding its access no
    longer allowed it: `trigger` and `reasons` say why), or "shutdown" (the gateway stopped)."""

    event_type: ClassVar[str] = "tcp.closed"
    durable: ClassVar[bool] = False

    route: str
    user: str
    session: str
    destination: str
    source_ip: str
    ended: str
    trigger: str  # "" unless cut: as websocket.closed
    reasons: tuple[str, ...]  # () unless cut
    bytes_in: int  # client to destination
    bytes_out: int  # destination to client
    duration_s: float


@dataclass(frozen=True, slots=True)
class CliAuthorized(AuditEvent):
    """A signed-in user confirmed, in the browser, that the command line (`sekisho login`)
    may act for their session; a one-time code went to the CLI's loopback port."""

    event_type: ClassVar[str] = "cli.authorized"

    user: str
    session: str
    port: int  # the CLI's loopback callback port
    source_ip: str


@dataclass(frozen=True, slots=True)
class CliCredentialIssued(AuditEvent):
    """The CLI exchanged its one-time code (with the PKCE verifier) for a credential bound
    to the session; revoking the session revokes it."""

    event_type: ClassVar[str] = "cli.credential_issued"

    user: str
    session: str
    expires_at: str  # ISO 8601 UTC: never after the session's own expiry
    source_ip: str


@dataclass(frozen=True, slots=True)
class ScreenSessionStarted(AuditEvent):
    """A screen-transfer session (画面転送) began: the gateway connected the browser's
    WebSocket to the route's VNC server, behind its RFB filter. Durable: no record, no
    session (the start is the recording metadata the municipal requirements ask for)."""

    event_type: ClassVar[str] = "screen.started"

    route: str
    user: str
    session: str  # short id of the sign-in session
    source_ip: str
    target: str  # the route's `to` (vnc://host:port or connector:site/host:port)
    clipboard: bool  # whether the filter lets ClientCutText/ServerCutText through


@dataclass(frozen=True, slots=True)
class ScreenSessionEnded(AuditEvent):
    """A screen-transfer session ended, with why and what the RFB filter removed."""

    event_type: ClassVar[str] = "screen.ended"

    route: str
    user: str
    session: str
    source_ip: str
    reason: str  # "closed" | "idle" | "revoked" | "filter" | "server" | "error" | "shutdown"
    detail: str  # the filter's violation code, "" otherwise
    duration_s: float
    bytes_in: int  # browser to VNC server (after the filter)
    bytes_out: int  # VNC server to browser (after the filter)
    client_cut_dropped: int  # clipboard transfers removed, browser to server
    server_cut_dropped: int  # clipboard transfers removed, server to browser
    encodings_removed: int  # encodings and pseudo-encodings struck from SetEncodings
