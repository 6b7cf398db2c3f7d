"""The validated configuration snapshot: frozen values, built once per load.

A snapshot is never mutated; SIGHUP builds a new one and swaps it whole (see `runtime`).
Durations are seconds (float). Secrets are `Secret` and never print their value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Segment = Literal["internet", "lgwan", "mynumber"]
RouteMode = Literal["http", "screen", "tcp"]
Profile = Literal["alpha", "alpha-prime", "beta", "beta-prime"]


class Secret:
    """A secret value resolved from `env:NAME` or `file:/path`; repr and str hide it."""

    __slots__ = ("_reference", "_value")

    def __init__(self, value: str, reference: str = "inline") -> None:
        self._value = value
        self._reference = reference

    def reveal(self) -> str:
        return self._value

    @property
    def reference(self) -> str:
        return self._reference

    def __repr__(self) -> str:
        return f"Secret({self._reference!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """TLS for the public listener. `self_signed` generates a certificate (demo mode only)."""

    enabled: bool = True
    cert_file: str | None = None
    key_file: str | None = None
    self_signed: bool = False
    # "optional": ask browsers for a certificate, verify it against the internal CA, and
    # connect those without one too (they simply carry no device facts).
    client_certificates: str = "off"
    client_ca_dir: str | None = None  # None: <server.data_dir>/ca


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: tuple[ListenAddress, ...] = (ListenAddress("127.0.0.1", 8443),)
    admin_listen: ListenAddress = ListenAddress("127.0.0.1", 9100)
    workers: int = 1
    data_dir: str = "./var"


@dataclass(frozen=True, slots=True)
class SessionSettings:
    cookie_name: str = "__Host-sekisho"
    idle_timeout: float = 30 * 60
    absolute_lifetime: float = 12 * 3600
    # How long a gateway process may trust a session it looked up before asking storage again.
    cache_ttl: float = 1.0
    # How often an open WebSocket is decided again (changes announced on the feed: at once).
    recheck_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class ThrottleSettings:
    account_max_failures: int = 5
    ip_max_failures: int = 20
    lockout: float = 15 * 60
    base_delay: float = 1.0
    max_delay: float = 60.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_count: int = 100
    max_header_bytes: int = 16 * 1024
    max_url_bytes: int = 8 * 1024
    max_form_bytes: int = 64 * 1024  # bodies of the gateway's own forms
    # bodies under /.sekisho/api/ and /.sekisho/admin/ (a configuration with 1,000 routes
    # is larger than any sign-in form)
    max_admin_body_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    read: float = 60.0  # upstream: time to the response head, and between body chunks
    idle: float = 75.0  # client keep-alive idle
    header: float = 15.0  # client: time to send a complete request head


@dataclass(frozen=True, slots=True)
class AuditSettings:
    flush_interval: float = 0.2
    batch_max: int = 1000


@dataclass(frozen=True, slots=True)
class AssertionSettings:
    issuer: str = "sekisho"
    lifetime: float = 60.0
    header: str = "X-Sekisho-Assertion"


@dataclass(frozen=True, slots=True)
class MfaSettings:
    """When a second factor is demanded (see docs/mfa.md)."""

    # Every sign-in from outside `office_networks` needs a second factor.
    require_remote: bool = True
    office_networks: tuple[IPNetwork, ...] = ()
    # Members of these groups always need a second factor, wherever they are.
    require_groups: tuple[str, ...] = ("admins",)
    totp_issuer: str = "Sekisho"
    # How long the user has between the password and the second factor.
    flow_lifetime: float = 5 * 60
    # Enrolling a new factor needs a proof (password or factor) at most this old.
    enrol_max_age: float = 10 * 60


@dataclass(frozen=True, slots=True)
class WebAuthnSettings:
    """Passkeys and security keys (see docs/passkeys.md)."""

    rp_id: str = ""  # "": the host of the route being visited
    rp_name: str = "Sekisho"
    origins: tuple[str, ...] = ()  # (): https://<route host>[:<listen port>] for every route
    user_verification: Literal["preferred", "required"] = "preferred"
    require_uv_groups: tuple[str, ...] = ("admins",)
    passwordless: bool = False  # "sign in with a passkey" (discoverable, always with UV)


@dataclass(frozen=True, slots=True)
class HookSettings:
    """Endpoints where other products notify Sekisho (see docs/devices.md)."""

    edr_secret: Secret | None = None  # None: POST /.sekisho/hooks/edr answers 404


@dataclass(frozen=True, slots=True)
class PortalSettings:
    """The staff portal (see docs/portal.md): served on every route host at /.sekisho/portal/."""

    host: str = ""  # "": no dedicated host; else `/` on it opens the portal (no route needed)
    contact: str = ""  # who staff call when the portal cannot help (shown on its pages)


@dataclass(frozen=True, slots=True)
class ConnectorSettings:
    """The connector broker (see docs/connector.md): where agents in closed networks dial in."""

    listen: ListenAddress | None = None  # None: no connector listener (off)
    token_max_days: int = 30  # longest life of a one-time enrolment token
    certificate_days: int = 365  # life of a connector certificate


ADMIN_ROLES = ("superadmin", "helpdesk", "auditor")  # widest first (console.admin.ops.Role)


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """The admin console and API (see docs/admin.md): which groups hold which admin role, the
    policy every admin request must pass, and the longest life an API token may have."""

    # role -> groups; a user holds the widest role any of their groups gives (none: no access)
    roles: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("superadmin", ("admins",)), ("helpdesk", ("helpdesk",)), ("auditor", ("auditors",)))
    policy: str = ""  # name in Config.policies; "" = the built-in default (role group + passkey
    #                   proven within 15 minutes), compiled as policy "admin:default"
    token_max_days: int = 365

    def groups_for(self, role: str) -> tuple[str, ...]:
        return next((groups for name, groups in self.roles if name == role), ())

    def role_of(self, groups: frozenset[str] | set[str]) -> str | None:
        """The widest role the groups give, or None."""
        for name in ADMIN_ROLES:
            if any(group in groups for group in self.groups_for(name)):
                return name
        return None

    @property
    def admin_groups(self) -> frozenset[str]:
        return frozenset(group for _, groups in self.roles for group in groups)


@dataclass(frozen=True, slots=True)
class IdentityProvider:
    """An OpenID Connect provider Sekisho trusts for sign-in (see docs/oidc.md)."""

    id: str
    issuer: str  # exactly as the IdP's discovery document spells it
    client_id: str
    client_secret: Secret | None = None  # None: a public client (PKCE only)
    title: str = ""
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    # Which claim carries group names or ids, and how they map onto Sekisho groups.
    group_claim: str = "groups"
    group_map: Mapping[str, str] = field(default_factory=dict)
    groups: tuple[str, ...] = ()  # Sekisho groups every user of this IdP gets
    email_domains: tuple[str, ...] = ()  # empty: any domain
    # The claim that says the IdP verified the e-mail (Entra ID: "xms_edov").
    email_verified_claim: str = "email_verified"
    jit: bool = False  # create unknown users at their first sign-in
    require_mfa: bool = False  # the ID token must assert MFA (amr / acr)
    mfa_amr: tuple[str, ...] = ("mfa", "otp", "hwk")
    mfa_acr: tuple[str, ...] = ()
    acr_values: tuple[str, ...] = ()  # requested from the IdP
    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256")
    client_auth: Literal["client_secret_basic", "client_secret_post", "none"] = (
        "client_secret_basic")
    # Plain http:// for a 127.0.0.1 / localhost issuer (tests and demos only).
    allow_insecure_http_for_loopback: bool = False
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class PostureProfile:
    """One posture profile (see docs/devices.md); a requirement left None/False is not checked."""

    name: str
    os_updated_within: float | None = None  # seconds since the last package update
    disk_encryption: bool = False
    firewall: bool = False
    screen_lock: bool = False
    edr: bool = False


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    """Device posture: how fresh a report must be, and the profiles, best first."""

    posture_max_age: float = 15 * 60
    profiles: tuple[PostureProfile, ...] = ()


@dataclass(frozen=True, slots=True)
class Networks:
    """Named networks the segment guardrails use (see docs/segments.md)."""

    office: tuple[IPNetwork, ...] = ()  # the office: LGWAN over HTTP, no MFA needed
    mynumber_terminals: tuple[IPNetwork, ...] = ()  # the only way into `mynumber`


SCREEN_IDLE_DEFAULT = 900.0  # ScreenOptions.idle_timeout: 15 minutes


@dataclass(frozen=True, slots=True)
class ScreenOptions:
    """What a screen-transfer route lets cross besides pixels; all off unless turned on."""

    clipboard: bool = False
    file_transfer: bool = False
    printing: bool = False
    drive: bool = False
    # seconds without keyboard or mouse input before the gateway ends the session
    idle_timeout: float = SCREEN_IDLE_DEFAULT


@dataclass(frozen=True, slots=True)
class Route:
    id: str
    host: str  # lower-case, no port
    path_prefix: str  # normalised, starts with "/"
    to: str  # upstream base URL, http:// or https://
    segment: Segment = "internet"
    policy: str = ""  # name in `Config.policies`; inline policies get the name "route:<id>"
    websocket: bool = False
    allow_ambiguous_paths: bool = False
    preserve_host: bool = False
    timeouts: Timeouts | None = None  # None: the global timeouts
    title: str = ""
    idp: str = ""  # identity provider id: sign-in goes straight there
    mode: RouteMode = "http"  # "screen": a screen-transfer product; "tcp": `sekisho tcp`
    screen: ScreenOptions = field(default_factory=ScreenOptions)


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # file path the snapshot came from ("<demo>" for the embedded default)
    server: ServerSettings = field(default_factory=ServerSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    trusted_proxies: tuple[IPNetwork, ...] = ()
    storage_url: Secret = field(default_factory=lambda: Secret("sqlite:///./var/sekisho.db"))
    session: SessionSettings = field(default_factory=SessionSettings)
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    audit: AuditSettings = field(default_factory=AuditSettings)
    assertion: AssertionSettings = field(default_factory=AssertionSettings)
    mfa: MfaSettings = field(default_factory=MfaSettings)
    webauthn: WebAuthnSettings = field(default_factory=WebAuthnSettings)
    devices: DeviceSettings = field(default_factory=DeviceSettings)
    hooks: HookSettings = field(default_factory=HookSettings)
    portal: PortalSettings = field(default_factory=PortalSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    connector: ConnectorSettings = field(default_factory=ConnectorSettings)
    # Policy name -> the raw policy document ({"allow": ..., "deny": ...}), compiled by policy/.
    policies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    identity_providers: tuple[IdentityProvider, ...] = ()
    default_language: Literal["ja", "en"] = "ja"
    timezone: str = "Asia/Tokyo"
    holidays: frozenset[date] = frozenset()  # local dates (the `time` criterion)
    # The segment guardrails' profile. Every configuration file has one (default beta-prime,
    # set by the loader); None — no guardrails — is only for configurations built in code.
    profile: Profile | None = None
    networks: Networks = field(default_factory=Networks)
    # Not errors, but worth an administrator's eyes (e.g. a segment closed for want of a
    # network): "file:line: field: ja / en" lines that check-config prints.
    warnings: tuple[str, ...] = ()
    # sha256 (hex) of the file the snapshot was loaded from, for the ConfigReloaded audit event.
    digest: str = ""
