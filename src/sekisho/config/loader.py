"""Load a configuration file into a validated `Config`, or say everything that is wrong.

Stages: bytes -> UTF-8 text -> YAML data with line numbers -> JSON Schema -> secrets ->
semantic checks and conversion -> policy compilation. Problems from every stage after YAML
parsing are collected and raised together as one `ConfigError`, sorted by line, each naming
file, line and field. A snapshot is produced only when there is no problem at all.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import MappingProxyType

from sekisho.config.admin import build_admin
from sekisho.config.build import Builder
from sekisho.config.connector import build_connector
from sekisho.config.idps import build_identity_providers, check_route_idps
from sekisho.config.mfa import build_mfa
from sekisho.config.model import (
    AssertionSettings,
    AuditSettings,
    Config,
    Limits,
    ThrottleSettings,
    Timeouts,
)
from sekisho.config.portal import build_portal
from sekisho.config.problems import FieldPath, InvalidConfig, Problem
from sekisho.config.routes import build_routes, compile_all, named_policies
from sekisho.config.secrets import resolve_secrets
from sekisho.config.segments import build_networks, build_profile, check_guardrails
from sekisho.config.validation import validate
from sekisho.config.webauthn import build_webauthn
from sekisho.config.yamlfile import YamlRefused, decode, read_yaml


def config_digest(text: str | bytes) -> str:
    """SHA-256 (hex) of the file's exact content, for the ConfigReloaded audit event."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(raw).hexdigest()


def load_config(path: str | Path) -> Config:
    """Read and validate the file at `path`; relative paths inside are relative to its folder."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise InvalidConfig(
            str(path),
            [Problem(0, (), f"ファイルを読めません: {why}", f"cannot read the file: {why}")],
        ) from None
    try:
        text = decode(raw)
    except YamlRefused as exc:
        raise InvalidConfig(str(path), [exc.problem]) from None
    return parse_config(text, str(path), base_dir=file.resolve().parent, digest=config_digest(raw))


def parse_config(
    text: str, source: str = "<string>", *, base_dir: Path | None = None, digest: str | None = None
) -> Config:
    """Validate YAML `text`; `source` names it in errors; `base_dir` anchors relative paths."""
    base = base_dir if base_dir is not None else Path.cwd()
    try:
        data, lines, problems = read_yaml(text)
    except YamlRefused as exc:
        raise InvalidConfig(source, [exc.problem]) from None
    if data is None:
        raise InvalidConfig(source, [Problem(1, (), "設定が空です", "the configuration is empty")])
    problems += validate(data, lines)
    if not isinstance(data, dict):
        raise InvalidConfig(source, problems)
    secrets, secret_problems = resolve_secrets(data, lines, base)
    later: list[Problem] = list(secret_problems)
    builder = Builder(data, lines, secrets, base, source)
    config = _build(builder, digest or config_digest(text))
    later += builder.problems
    # A field the schema already refused is not reported a second time by the semantic pass.
    refused = {p.path for p in problems}
    problems += [p for p in later if p.path not in refused]
    if problems:
        raise InvalidConfig(source, problems)
    return config


def _build(builder: Builder, digest: str) -> Config:
    data = builder.data
    server = builder.server()
    tls = builder.tls()
    timeouts = builder.settings(Timeouts, ("timeouts",), builder.section("timeouts"))
    throttle = builder.settings(ThrottleSettings, ("throttle",), builder.section("throttle"))
    audit = builder.settings(AuditSettings, ("audit",), builder.section("audit"))
    assertion = builder.settings(AssertionSettings, ("assertion",), builder.section("assertion"))
    builder.check_ranges(throttle, audit, assertion)
    policies = named_policies(builder)
    inline_paths: dict[str, FieldPath] = {}
    routes = build_routes(builder, policies, timeouts, inline_paths)
    compile_all(builder, policies, inline_paths)
    identity_providers = build_identity_providers(builder)
    check_route_idps(builder, identity_providers)
    profile = build_profile(builder)
    networks, mfa = build_networks(builder, build_mfa(builder))
    devices = builder.devices()
    warnings = check_guardrails(
        builder, profile=profile, networks=networks, routes=routes, policies=policies,
        inline_paths=inline_paths,
        posture_profiles=tuple(p.name for p in devices.profiles))
    language = data.get("language")
    config = Config(
        source=builder.source,
        server=server,
        tls=tls,
        trusted_proxies=builder.trusted_proxies(),
        storage_url=builder.storage_url(server.data_dir),
        session=builder.session(tls),
        throttle=throttle,
        limits=builder.settings(Limits, ("limits",), builder.section("limits")),
        timeouts=timeouts,
        audit=audit,
        assertion=assertion,
        mfa=mfa,
        webauthn=build_webauthn(builder),
        devices=devices,
        hooks=builder.hooks(),
        portal=build_portal(builder),
        admin=build_admin(builder, policies),
        connector=build_connector(builder),
        policies=MappingProxyType(policies),
        routes=routes,
        identity_providers=identity_providers,
        default_language="en" if language == "en" else "ja",
        timezone=builder.timezone(),
        holidays=builder.holidays(),
        profile=profile,
        networks=networks,
        warnings=warnings,
        digest=digest,
    )
    return config
