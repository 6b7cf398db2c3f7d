"""The PDP's input and output values: `Facts` about one request, the `Decision` about it.

The gateway (PEP) gathers facts from the session, the connection and the route and passes
them in as plain data; nothing here reads a socket, a database or a clock. Both types are
frozen so a decision can never be altered after the PDP returned it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from types import MappingProxyType

NO_PROOFS: Mapping[str, datetime] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything known about one request that a criterion may look at."""

    authenticated: bool
    user: str | None  # username; None when nobody is signed in
    email: str  # "" if unknown
    groups: frozenset[str]
    source_ip: ipaddress.IPv4Address | ipaddress.IPv6Address  # after trusted proxies
    method: str  # upper-case
    path: str  # already normalised by the gateway
    host: str
    route: str  # route id
    segment: str  # "internet" | "lgwan" | "mynumber"
    now: datetime  # UTC aware
    auth_methods: frozenset[str] = frozenset()  # "pwd", "totp", "webauthn_uv" …
    auth_time: datetime | None = None  # the last proof: sign-in or second factor (UTC)
    # When each method was last proven (method → UTC time), so "a passkey within 15 minutes"
    # means the passkey, not whichever factor came last (`mfa: {methods, within}`). Never
    # derived from `auth_methods` and `auth_time`: a method without a time here has no
    # known proof time, and the timed form does not accept it (fail closed).
    proofs: Mapping[str, datetime] = field(default_factory=lambda: NO_PROOFS, hash=False)
    idp: str = ""  # identity provider id; "" for Sekisho's own accounts
    # Public holidays as local calendar dates (the `time` criterion's timezone), supplied by
    # the gateway from the configured holiday list; empty means "no holiday is known".
    holidays: frozenset[date] = frozenset()
    # From a client certificate verified against the internal CA (mTLS) and the device
    # registry. The certificate facts are only filled while the registry lists the device
    # as active with that very certificate; a suspended or revoked one carries none.
    device_id: str = ""  # "" when no Sekisho device certificate was presented
    device_enrolled: bool = False  # active in the registry, serial matching
    device_user: str = ""  # the user the device is enrolled to (registry)
    # Posture profile from the device's latest fresh signed report ("quarantine" when it has
    # none, a stale one, or passes no profile); "" when the device is not enrolled.
    device_profile: str = ""
    client_certificate_issuer: str = ""  # RFC 4514 issuer name
    client_certificate_sans: frozenset[str] = frozenset()  # URI, DNS, e-mail, IP as text


@dataclass(frozen=True, slots=True)
class Decision:
    """The PDP's answer: allow or not, with reason codes from the closed list in `reasons`."""

    allow: bool
    reasons: tuple[str, ...]
