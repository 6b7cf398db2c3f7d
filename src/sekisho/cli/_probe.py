"""A hypothetical request for `sekisho policy explain|test`, decided the way the gateway would.

The rule: the same route matching (lower-case host without port, then the path normalised by
`gateway.paths`) and the same facts as `gateway.pep.decide`, so a check made here describes
the request the gateway will see. A tool that matched `/allowed/../denied` against the
`/allowed` route would explain a decision the gateway never makes — the path-confusion
mistake the gateway itself refuses. The policy comes from `Runtime.policy_for`, so the route's
segment guardrail is decided and explained exactly as the gateway applies it.

A device is either looked up in the registry (`device: ID`: enrolled, user and posture profile
by the same rule the gateway applies to a presented certificate, `devices.trust.standing`, as
if the device presented its current certificate) or hypothetical (`device_profile: P`: an
enrolled device of that profile used by its own user; no database needed).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from sekisho.config.model import Route
from sekisho.gateway.paths import InvalidTarget, normalise, strip_port
from sekisho.policy import Decision, Explanation, Facts, explain
from sekisho.policy.criteria.mfa import SECOND_FACTORS
from sekisho.policy.guardrails import QUARANTINE
from sekisho.runtime import Runtime
from sekisho.web import RESERVED_PREFIX

FIELDS = ("url", "method", "user", "groups", "email", "ip", "at", "mfa", "auth_age", "idp",
          "device", "device_profile")
HYPOTHETICAL_DEVICE = "hypothetical"  # the device id a `device_profile` probe carries
DEFAULT_IP = "192.0.2.1"  # a documentation address: "somewhere on the internet"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 method token


class BadInput(ValueError):
    """A field of the request cannot be understood: `field` names it, ja/en say why."""

    def __init__(self, field: str, ja: str, en: str) -> None:
        super().__init__(f"{field}: {ja} / {en}")
        self.field, self.ja, self.en = field, ja, en


@dataclass(frozen=True, slots=True)
class Probe:
    """The request to decide, after checking every field."""

    url: str
    host: str
    target: bytes
    facts_user: str | None
    method: str
    groups: frozenset[str]
    email: str
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    at: datetime | None  # None: now
    # second factors with the seconds since each was proven (None: `auth_age`, like sign-in)
    mfa: tuple[tuple[str, int | None], ...]
    auth_age: int  # seconds since sign-in (the primary proof)
    idp: str
    device: str = ""  # a registry device id
    device_profile: str = ""  # a hypothetical enrolled device of this posture profile


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """The device part of the facts, as the gateway would fill it."""

    device_id: str = ""
    enrolled: bool = False
    user: str = ""
    profile: str = ""
    issuer: str = ""
    sans: frozenset[str] = frozenset()
    status: str = ""  # the registry's status ("active", "suspended", "revoked"); "" otherwise


DeviceLookup = Callable[[str, datetime], DeviceFacts]


@dataclass(frozen=True, slots=True)
class Result:
    """What the gateway would do: a policy explanation, or a refusal before policy."""

    host: str
    path: str
    route: Route | None
    facts: Facts | None
    explanation: Explanation | None
    refusal_ja: str = ""
    refusal_en: str = ""
    device: DeviceFacts | None = None

    @property
    def decision(self) -> Decision:
        if self.explanation is not None:
            return self.explanation.decision
        return Decision(False, ())


def _text(field: str, value: Any, *, optional: bool = True) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise BadInput(field, "空でない文字列を指定してください", "expected a non-empty string")
    return value.strip()


def _texts(field: str, value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise BadInput(field, "文字列またはそのリストを指定してください",
                       "expected a string or a list of strings")
    return frozenset(_text(field, item, optional=False) for item in items)


def parse_probe(fields: Mapping[str, Any], timezone: str,
                device_profiles: Collection[str] | None = None) -> Probe:
    """Check the fields of one request (CLI options or a test case); raises `BadInput`.

    `device_profiles`: the configured posture profile names a `device_profile` may name
    (`quarantine` is always one); None skips that check."""
    url = _text("url", fields.get("url"), optional=False)
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise BadInput("url", "https://ホスト/パス の形の URL を指定してください",
                       "expected a URL like https://host/path")
    if "@" in parts.netloc:
        raise BadInput("url", "URL にユーザー情報 (@) は書けません", "userinfo (@) is not allowed")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    method = _text("method", fields.get("method")) or "GET"
    if not _TOKEN.match(method):
        raise BadInput("method", "HTTP メソッドの形ではありません", "not an HTTP method")
    user = _text("user", fields.get("user")) or None
    groups = _texts("groups", fields.get("groups"))
    email = _text("email", fields.get("email"))
    mfa = _factors(_texts("mfa", fields.get("mfa")))
    idp = _text("idp", fields.get("idp"))
    auth_age = fields.get("auth_age")
    if auth_age is None:
        auth_age = 0
    if isinstance(auth_age, bool) or not isinstance(auth_age, int) or auth_age < 0:
        raise BadInput("auth_age", "0 以上の秒数（整数）を指定してください",
                       "expected whole seconds, 0 or more")
    if user is None:
        given = [name for name, value in (("groups", groups), ("email", email), ("mfa", mfa),
                                          ("idp", idp)) if value]
        given += ["auth_age"] if fields.get("auth_age") is not None else []
        if given:
            raise BadInput(given[0], "user を指定しないと未サインインになるため指定できません",
                           "needs a user (without one the request is not signed in)")
    try:
        ip = ipaddress.ip_address(_text("ip", fields.get("ip")) or DEFAULT_IP)
    except ValueError:
        raise BadInput("ip", "IP アドレスを指定してください", "expected an IP address") from None
    device = _text("device", fields.get("device"))
    device_profile = _text("device_profile", fields.get("device_profile"))
    if device and device_profile:
        raise BadInput("device_profile", "device と同時には指定できません（登録済みの端末か、"
                       "仮の端末か、どちらか一方）",
                       "cannot be combined with device (a registered device, or a "
                       "hypothetical one)")
    if device_profile and device_profiles is not None and \
            device_profile not in (*device_profiles, QUARANTINE):
        known = ", ".join((*device_profiles, QUARANTINE))
        raise BadInput("device_profile", f"devices.profiles にないプロファイルです（{known}）",
                       f"not a posture profile of devices.profiles (expected: {known})")
    return Probe(url, strip_port(parts.netloc), target.encode("utf-8"), user, method.upper(),
                 groups, email, ip, _when(fields.get("at"), timezone), mfa, auth_age, idp,
                 device, device_profile)


_FACTOR = re.compile(r"^([a-z_]+)(?:@([0-9]{1,9}))?$")


def _factors(texts: frozenset[str]) -> tuple[tuple[str, int | None], ...]:
    """`totp` (proven at sign-in) or `webauthn_uv@300` (proven 300 seconds ago), each once."""
    known = ", ".join(sorted(SECOND_FACTORS))
    found: dict[str, int | None] = {}
    for text in sorted(texts):
        match = _FACTOR.match(text)
        if match is None:
            raise BadInput("mfa", f"方式、または 方式@秒数 の形で指定してください（例 "
                           f"webauthn_uv@300）。指定値: {text!r}",
                           f"expected METHOD or METHOD@SECONDS (e.g. webauthn_uv@300), "
                           f"got {text!r}")
        name, seconds = match.group(1), match.group(2)
        if name not in SECOND_FACTORS:
            raise BadInput("mfa", f"不明な方式 {name!r} です（{known}）",
                           f"unknown method {name!r} (expected: {known})")
        if name in found:
            raise BadInput("mfa", f"方式 {name!r} が 2 回指定されています",
                           f"the method {name!r} is given twice")
        found[name] = None if seconds is None else int(seconds)
    return tuple(sorted(found.items()))


def proof_times(probe: Probe, now: datetime, primary: str) -> dict[str, datetime]:
    """When each method of a signed-in probe was proven: the primary `auth_age` seconds
    ago, each second factor its own `@SECONDS` ago (else with the sign-in)."""
    signed_in = now - timedelta(seconds=probe.auth_age)
    times = {primary: signed_in}
    for name, seconds in probe.mfa:
        times[name] = signed_in if seconds is None else now - timedelta(seconds=seconds)
    return times


def _when(value: Any, timezone: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(_text("at", value, optional=False))
        except ValueError:
            raise BadInput("at", "ISO 8601 の日時を指定してください（例 2026-12-01T09:00+09:00）",
                           "expected an ISO 8601 time (e.g. 2026-12-01T09:00+09:00)") from None
    if moment.tzinfo is None:  # a wall-clock time in the configured timezone, as staff mean it
        moment = moment.replace(tzinfo=ZoneInfo(timezone))
    return moment.astimezone(UTC)


def hypothetical_device(profile: str, user: str | None) -> DeviceFacts:
    """An enrolled device of posture `profile`, used by its own user; no certificate names."""
    return DeviceFacts(HYPOTHETICAL_DEVICE, True, user or "", profile, status="active")


def registry_device(engine: Any, runtime: Runtime, device_id: str, now: datetime) -> DeviceFacts:
    """A device from the registry, judged as if it presented its current certificate now.

    The rule is the gateway's (`devices.trust.standing`: active, same serial, valid, its
    latest fresh posture report classified by `devices.profiles`); raises `BadInput` for a
    device the registry does not know, `StorageError` when the registry cannot answer.
    """
    from sekisho.devices.identity import DEVICE_URN, INVENTORY_URN, DeviceIdentity
    from sekisho.devices.trust import load_report, standing
    from sekisho.storage.devices import get_device

    record = get_device(engine, device_id)
    if record is None:
        raise BadInput("device", f"端末 '{device_id}' は端末台帳にありません（sekisho device "
                       "list）", f"no device '{device_id}' in the registry (sekisho device list)")
    try:
        serial = int(record.cert_serial, 16)
    except ValueError:
        serial = -1  # a registry row that names no certificate: not enrolled
    identity = DeviceIdentity(record.device_id, record.inventory_id, serial,
                              record.cert_not_after, "", record.username)
    report = load_report(engine, device_id) if record.status == "active" else None
    found = standing(identity, record, now, report, runtime.config.devices)
    if not found.enrolled:
        return DeviceFacts(record.device_id, status=record.status)
    return DeviceFacts(record.device_id, True, found.user, found.profile,
                       _issuer(runtime), frozenset({DEVICE_URN + record.device_id,
                                                    INVENTORY_URN + record.inventory_id}),
                       record.status)


def _issuer(runtime: Runtime) -> str:
    """The intermediate CA's name: the issuer of every device certificate ("" if unreadable)."""
    from sekisho.devices.ca import CaError, ca_directory, load_certificates

    try:
        return load_certificates(ca_directory(runtime.config))[1].subject.rfc4514_string()
    except (CaError, OSError, ValueError):
        return ""


def decide(runtime: Runtime, probe: Probe, devices: DeviceLookup | None = None) -> Result:
    """Match the route like the gateway, build its facts and explain its policy's decision.

    `devices` looks a registry device up (`registry_device` bound to an engine); a probe
    naming one without it is refused (BadInput)."""
    try:
        target = normalise(probe.target, probe.host)
    except InvalidTarget:
        raise BadInput("url", "パスとして解釈できません", "the path cannot be parsed") from None
    path = target.path
    if not runtime.routes.has_host(probe.host):
        known = ", ".join(sorted(runtime.routes.hosts)) or "-"
        raise BadInput("url", f"ホスト '{probe.host}' のルートがありません（設定済み: {known}）",
                       f"no route for host '{probe.host}' (configured: {known})")
    if path.startswith(RESERVED_PREFIX):
        raise BadInput("url", f"{RESERVED_PREFIX} は Sekisho 自身のページで、ルートではありません",
                       f"{RESERVED_PREFIX} is Sekisho's own pages, not a route")
    route = runtime.routes.match(probe.host, path)
    if route is None:
        raise BadInput("url", f"パス '{path}' に一致するルートがありません",
                       f"no route matches the path '{path}'")
    if target.ambiguous and not route.allow_ambiguous_paths:
        return Result(probe.host, path, route, None, None,
                      f"曖昧なパス ({target.ambiguous}) のため 400 で拒否されます",
                      f"refused with 400: ambiguous path ({target.ambiguous})")
    now = probe.at or datetime.now(UTC)
    device = DeviceFacts()
    if probe.device_profile:
        device = hypothetical_device(probe.device_profile, probe.facts_user)
    elif probe.device:
        if devices is None:
            raise BadInput("device", "端末台帳を開けません", "the device registry is not open")
        device = devices(probe.device, now)
    signed_in = probe.facts_user is not None
    primary = "oidc" if probe.idp else "pwd"
    proofs = proof_times(probe, now, primary) if signed_in else {}
    facts = Facts(
        authenticated=signed_in,
        user=probe.facts_user,
        email=probe.email,
        groups=probe.groups,
        source_ip=probe.ip,
        method=probe.method,
        path=path,
        host=probe.host,
        route=route.id,
        segment=route.segment,
        now=now,
        auth_methods=frozenset(proofs),
        # The last proof of any kind, as a session keeps it (`auth_age` reads this).
        auth_time=max(proofs.values()) if proofs else None,
        proofs=MappingProxyType(proofs),
        idp=probe.idp,
        holidays=runtime.config.holidays,
        device_id=device.device_id,
        device_enrolled=device.enrolled,
        device_user=device.user,
        device_profile=device.profile,
        client_certificate_issuer=device.issuer,
        client_certificate_sans=device.sans,
    )
    policy = runtime.policy_for(route)
    assert policy is not None  # build_runtime refuses a route without its policy
    return Result(probe.host, path, route, facts, explain(facts, policy),
                  device=device if device.device_id else None)
