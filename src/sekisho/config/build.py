"""Semantic checks and conversion of schema-shaped data into the frozen `Config` snapshot.

The schema has already reported wrong types; this pass reads each value defensively (a
wrong-typed value falls back to its default) so it can still report every *semantic*
problem in the same run: cross-field rules, addresses, URLs, duplicate routes, policy names.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping
from dataclasses import fields
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from sekisho.config.model import (
    AssertionSettings,
    AuditSettings,
    DeviceSettings,
    HookSettings,
    IPNetwork,
    ListenAddress,
    PostureProfile,
    Secret,
    ServerSettings,
    SessionSettings,
    ThrottleSettings,
    TLSSettings,
)
from sekisho.config.problems import FieldPath, LineMap, Problem
from sekisho.config.values import (
    Invalid,
    listeners_overlap,
    parse_cidr,
    parse_duration,
    parse_listen,
)

T = TypeVar("T")
MAX_CACHE_TTL = 60.0
MIN_RECHECK, MAX_RECHECK = 1.0, 3600.0  # session.recheck_interval: storage load vs. delay
MAX_FLUSH_INTERVAL = 1.0  # the documented audit loss window on a hard kill
MAX_ASSERTION_LIFETIME = 60.0
MAX_POSTURE_AGE = 86400.0  # a day-old posture report says little about the device now
MIN_HOOK_SECRET = 32  # characters: a short shared key falls to an offline guess from one request
_DURATION_FIELDS = {
    "idle_timeout",
    "absolute_lifetime",
    "cache_ttl",
    "recheck_interval",
    "lockout",
    "base_delay",
    "max_delay",
    "connect",
    "read",
    "idle",
    "header",
    "flush_interval",
    "lifetime",
}


class Builder:
    """Collects problems while turning data into a `Config`; `build()` returns None on error."""

    def __init__(
        self,
        data: Mapping[str, Any],
        lines: LineMap,
        secrets: Mapping[FieldPath, Secret],
        base_dir: Path,
        source: str,
    ) -> None:
        self.data = data
        self.lines = lines
        self.secrets = secrets
        self.base_dir = base_dir
        self.source = source
        self.problems: list[Problem] = []
        self.policy_names: set[str] = set()

    def problem(self, path: FieldPath, ja: str, en: str) -> None:
        self.problems.append(Problem(self.lines.line(path), path, ja, en))

    def section(self, name: str) -> Mapping[str, Any]:
        value = self.data.get(name)
        return value if isinstance(value, Mapping) else {}

    def path_value(self, value: str) -> str:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (self.base_dir / path).resolve())

    def settings(
        self, cls: type[T], where: FieldPath, section: Mapping[str, Any], base: T | None = None
    ) -> T:
        """Fill a flat settings dataclass from a mapping: ints, strings, durations."""
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name not in section:
                continue
            raw = section[f.name]
            if f.name in _DURATION_FIELDS:
                if isinstance(raw, int | str) and not isinstance(raw, bool):
                    try:
                        values[f.name] = parse_duration(raw, allow_zero=f.name == "cache_ttl")
                    except Invalid as exc:
                        self.problem((*where, f.name), exc.ja, exc.en)
            elif isinstance(raw, int | str) and not isinstance(raw, bool):
                values[f.name] = raw
        start = base if base is not None else cls()
        return type(start)(**{**{f.name: getattr(start, f.name) for f in fields(cls)}, **values})  # type: ignore[arg-type]

    # -- sections -------------------------------------------------------------------------

    def server(self) -> ServerSettings:
        section = self.section("server")
        default = ServerSettings()
        listen: list[ListenAddress] = []
        for index, raw in (
            enumerate(section.get("listen", [])) if isinstance(section.get("listen"), list) else ()
        ):
            if isinstance(raw, str):
                try:
                    listen.append(parse_listen(raw))
                except Invalid as exc:
                    self.problem(("server", "listen", index), exc.ja, exc.en)
        admin = default.admin_listen
        if isinstance(section.get("admin_listen"), str):
            try:
                admin = parse_listen(section["admin_listen"])
            except Invalid as exc:
                self.problem(("server", "admin_listen"), exc.ja, exc.en)
        for address in listen or default.listen:
            if listeners_overlap(address, admin):
                # /metrics and /readyz would be reachable from the public side.
                self.problem(
                    ("server", "admin_listen"),
                    f"管理リスナーは公開リスナー {address} と共有できません",
                    f"must not share a socket with the public listener {address}",
                )
        workers = section.get("workers")
        data_dir = section.get("data_dir")
        return ServerSettings(
            listen=tuple(listen) or default.listen,
            admin_listen=admin,
            workers=workers
            if isinstance(workers, int) and not isinstance(workers, bool)
            else default.workers,
            data_dir=self.path_value(
                data_dir if isinstance(data_dir, str) and data_dir else default.data_dir
            ),
        )

    def tls(self) -> TLSSettings:
        section = self.section("tls")
        enabled = section.get("enabled", True) is not False
        self_signed = section.get("self_signed") is True
        cert, key = section.get("cert_file"), section.get("key_file")
        cert = cert if isinstance(cert, str) else None
        key = key if isinstance(key, str) else None
        if not enabled:
            if cert or key or self_signed:
                self.problem(
                    ("tls", "enabled"),
                    "TLS を無効にする場合は証明書の設定を書けません",
                    "TLS is disabled, so cert_file, key_file and self_signed must not be set",
                )
            if section.get("client_certificates") == "optional":
                # A proxy in front terminates TLS: no client certificate ever reaches us.
                self.problem(
                    ("tls", "client_certificates"),
                    "TLS を無効にするとクライアント証明書は使えません",
                    "client certificates need TLS on this listener (enabled: false)",
                )
            return TLSSettings(enabled=False)
        if self_signed and (cert or key):
            self.problem(
                ("tls", "self_signed"),
                "self_signed と cert_file / key_file は同時に使えません",
                "self_signed cannot be combined with cert_file / key_file",
            )
        elif not self_signed and not (cert and key):
            self.problem(
                ("tls",),
                "cert_file と key_file の両方（または self_signed: true）が必要です",
                "needs both cert_file and key_file (or self_signed: true, or enabled: false)",
            )
        resolved: dict[str, str | None] = {}
        for name, value in (("cert_file", cert), ("key_file", key)):
            resolved[name] = None
            if value:
                path = self.path_value(value)
                resolved[name] = path
                if not Path(path).is_file():
                    self.problem(
                        ("tls", name),
                        f"ファイル {path} がありません",
                        f"file {path} does not exist",
                    )
        mode = section.get("client_certificates", "off")
        client_certificates = "optional" if mode == "optional" else "off"
        ca_dir = section.get("client_ca_dir")
        client_ca_dir = self.path_value(ca_dir) if isinstance(ca_dir, str) and ca_dir else None
        if client_certificates == "optional" and client_ca_dir is not None:
            for name in ("root.pem", "intermediate.pem"):
                if not (Path(client_ca_dir) / name).is_file():
                    self.problem(
                        ("tls", "client_ca_dir"),
                        f"{client_ca_dir} に {name} がありません（sekisho ca init で作成）",
                        f"{name} is missing in {client_ca_dir} (create it with sekisho ca init)",
                    )
        return TLSSettings(
            enabled=True,
            cert_file=resolved["cert_file"],
            key_file=resolved["key_file"],
            self_signed=self_signed,
            client_certificates=client_certificates,
            client_ca_dir=client_ca_dir,
        )

    def trusted_proxies(self) -> tuple[IPNetwork, ...]:
        raw = self.data.get("trusted_proxies")
        networks: list[IPNetwork] = []
        for index, value in enumerate(raw) if isinstance(raw, list) else ():
            if isinstance(value, str):
                try:
                    networks.append(parse_cidr(value))
                except Invalid as exc:
                    self.problem(("trusted_proxies", index), exc.ja, exc.en)
        return tuple(networks)

    def storage_url(self, data_dir: str) -> Secret:
        secret = self.secrets.get(("storage", "url"))
        if secret is None:
            return Secret(f"sqlite:///{Path(data_dir) / 'sekisho.db'}", "default")
        scheme = secret.reveal().partition("://")[0].partition("+")[0].lower()
        if scheme not in ("sqlite", "postgresql"):
            self.problem(
                ("storage", "url"),
                "sqlite:/// か postgresql:// の URL が必要です"
                f"（{secret.reference}、値は表示しません）",
                f"must be a sqlite:/// or postgresql:// URL ({secret.reference}; value not shown)",
            )
        return secret

    def hooks(self) -> HookSettings:
        secret = self.secrets.get(("hooks", "edr", "secret"))
        if secret is not None and len(secret.reveal()) < MIN_HOOK_SECRET:
            self.problem(
                ("hooks", "edr", "secret"),
                f"{MIN_HOOK_SECRET} 文字以上が必要です（{secret.reference}、値は表示しません）",
                f"must be at least {MIN_HOOK_SECRET} characters ({secret.reference}; "
                "value not shown)",
            )
            secret = None
        return HookSettings(edr_secret=secret)

    def session(self, tls: TLSSettings) -> SessionSettings:
        session = self.settings(SessionSettings, ("session",), self.section("session"))
        if tls.enabled and not session.cookie_name.startswith("__Host-"):
            # Without the __Host- prefix a sibling subdomain can plant the cookie (fixation).
            self.problem(
                ("session", "cookie_name"),
                "TLS 有効時は __Host- で始まる名前が必要です",
                f"must start with __Host- when TLS is enabled (got {session.cookie_name!r})",
            )
        if session.idle_timeout > session.absolute_lifetime:
            self.problem(
                ("session", "idle_timeout"),
                "absolute_lifetime 以下である必要があります",
                "must not be longer than session.absolute_lifetime",
            )
        if session.cache_ttl > MAX_CACHE_TTL:
            self.problem(
                ("session", "cache_ttl"),
                "60 秒以下である必要があります（失効の反映が遅れます）",
                "must be at most 60s (it delays session revocation)",
            )
        if not MIN_RECHECK <= session.recheck_interval <= MAX_RECHECK:
            self.problem(
                ("session", "recheck_interval"),
                "1 秒以上 1 時間以下である必要があります（長いと WebSocket が切れずに残ります）",
                "must be between 1s and 1h (longer keeps WebSockets open past their access)",
            )
        return session

    def check_ranges(
        self, throttle: ThrottleSettings, audit: AuditSettings, assertion: AssertionSettings
    ) -> None:
        if throttle.base_delay > throttle.max_delay:
            self.problem(
                ("throttle", "base_delay"),
                "max_delay 以下である必要があります",
                "must not be longer than throttle.max_delay",
            )
        if audit.flush_interval > MAX_FLUSH_INTERVAL:
            self.problem(
                ("audit", "flush_interval"),
                "1 秒以下である必要があります（強制終了時の損失の上限）",
                "must be at most 1s (it bounds the events lost on a hard kill)",
            )
        if assertion.lifetime > MAX_ASSERTION_LIFETIME:
            self.problem(
                ("assertion", "lifetime"), "60 秒以下である必要があります", "must be at most 60s"
            )

    def devices(self) -> DeviceSettings:
        """`devices:` posture settings; profiles keep the file's order (best first)."""
        section = self.section("devices")
        default = DeviceSettings()
        max_age = default.posture_max_age
        raw = section.get("posture_max_age")
        if isinstance(raw, int | str) and not isinstance(raw, bool):
            try:
                max_age = parse_duration(raw)
            except Invalid as exc:
                self.problem(("devices", "posture_max_age"), exc.ja, exc.en)
            if max_age > MAX_POSTURE_AGE:
                self.problem(("devices", "posture_max_age"), "1d 以下である必要があります",
                             "must be at most 1d")
        profiles: list[PostureProfile] = []
        raw_profiles = section.get("profiles")
        for name, body in raw_profiles.items() if isinstance(raw_profiles, Mapping) else ():
            if not isinstance(body, Mapping):
                continue
            within: float | None = None
            raw_within = body.get("os_updated_within")
            if isinstance(raw_within, int | str) and not isinstance(raw_within, bool):
                try:
                    within = parse_duration(raw_within)
                except Invalid as exc:
                    self.problem(("devices", "profiles", str(name), "os_updated_within"),
                                 exc.ja, exc.en)
            flags = {key: body.get(key) is True
                     for key in ("disk_encryption", "firewall", "screen_lock", "edr")}
            profiles.append(PostureProfile(str(name), within, **flags))
        return DeviceSettings(posture_max_age=max_age, profiles=tuple(profiles))

    def holidays(self) -> frozenset[date]:
        raw = self.data.get("holidays")
        days: set[date] = set()
        for index, value in enumerate(raw) if isinstance(raw, list) else ():
            try:
                days.add(date.fromisoformat(str(value)))
            except ValueError:
                self.problem(("holidays", index), "実在する日付 (YYYY-MM-DD) が必要です",
                             f"must be a real date like 2027-01-01 (got {value!r})")
        return frozenset(days)

    def timezone(self) -> str:
        value = self.data.get("timezone", "Asia/Tokyo")
        if not isinstance(value, str):
            return "Asia/Tokyo"
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            self.problem(
                ("timezone",),
                "IANA のタイムゾーン名（例: Asia/Tokyo）が必要です",
                f"must be an IANA time zone name like Asia/Tokyo (got {value!r})",
            )
        return value
