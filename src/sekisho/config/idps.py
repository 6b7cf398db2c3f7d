"""`identity_providers`: checks that the schema cannot express, and the frozen values.

The issuer is the root of trust of a federation: tokens are accepted only from it and its
keys are fetched from it, so it must be https://. Plain http:// is allowed only for a
loopback issuer *and* an explicit `allow_insecure_http_for_loopback` (tests, demos): a
network attacker on a plain-HTTP path could otherwise serve their own keys (CWE-319).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from sekisho.config.build import Builder
from sekisho.config.model import IdentityProvider
from sekisho.config.problems import FieldPath
from sekisho.config.values import Invalid, parse_duration

_LOOPBACK_NAMES = {"localhost"}
_ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
               "EdDSA"}


def is_loopback_host(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _strings(value: object) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _issuer(builder: Builder, here: FieldPath, issuer: str, insecure: bool) -> bool:
    try:
        parts = urlsplit(issuer)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        builder.problem((*here, "issuer"), "URL として読めません", "is not a valid URL")
        return False
    if parts.query or parts.fragment or "@" in parts.netloc or not host:
        builder.problem((*here, "issuer"), "ホスト名のある URL（クエリ・フラグメント・"
                        "ユーザー情報なし）が必要です", "must be a URL with a host and no "
                        "query, fragment or user information")
        return False
    if parts.scheme == "https":
        return True
    if parts.scheme == "http" and insecure and is_loopback_host(host):
        return True
    if parts.scheme == "http" and is_loopback_host(host):
        builder.problem((*here, "issuer"), "http:// の issuer には "
                        "allow_insecure_http_for_loopback: true が必要です（試験専用）",
                        "an http:// issuer needs allow_insecure_http_for_loopback: true "
                        "(tests only)")
    else:
        builder.problem((*here, "issuer"), "https:// の URL が必要です（http:// は "
                        "127.0.0.1 / localhost の試験用 IdP のみ）", "must be an https:// URL "
                        "(http:// only for a 127.0.0.1 / localhost test IdP)")
    return False


def build_identity_providers(builder: Builder) -> tuple[IdentityProvider, ...]:
    raw = builder.data.get("identity_providers")
    result: list[IdentityProvider] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw) if isinstance(raw, list) else ():
        if not isinstance(entry, Mapping):
            continue
        here: FieldPath = ("identity_providers", index)
        idp_id, issuer, client_id = entry.get("id"), entry.get("issuer"), entry.get("client_id")
        if not (isinstance(idp_id, str) and isinstance(issuer, str)
                and isinstance(client_id, str)):
            continue  # the schema reported it
        if idp_id in seen:
            builder.problem((*here, "id"), f"IdP id '{idp_id}' が重複しています",
                            f"duplicate identity provider id '{idp_id}'")
        seen.add(idp_id)
        insecure = entry.get("allow_insecure_http_for_loopback") is True
        ok = _issuer(builder, here, issuer, insecure)
        client_auth = entry.get("client_auth", "client_secret_basic")
        secret = builder.secrets.get((*here, "client_secret"))
        if client_auth != "none" and secret is None and "client_secret" not in entry:
            builder.problem((*here, "client_secret"), "client_auth が none 以外なら "
                            "client_secret が必要です", "is required unless client_auth is none")
        scopes = _strings(entry.get("scopes")) or ("openid", "email", "profile")
        if "openid" not in scopes:
            builder.problem((*here, "scopes"), "openid を含める必要があります",
                            "must include openid")
        algorithms = _strings(entry.get("algorithms")) or ("RS256", "ES256", "PS256")
        for position, name in enumerate(algorithms):
            if name not in _ASYMMETRIC:  # `none` and HS*: see idtoken.py (alg confusion)
                builder.problem((*here, "algorithms", position), "非対称鍵の署名方式のみ"
                                "使えます", f"only asymmetric signatures are allowed (got {name})")
        timeout = 10.0
        if isinstance(entry.get("timeout"), int | str) and not isinstance(entry["timeout"],
                                                                          bool):
            try:
                timeout = parse_duration(entry["timeout"])
            except Invalid as exc:
                builder.problem((*here, "timeout"), exc.ja, exc.en)
        group_map_raw = entry.get("group_map")
        group_map = {str(k): v for k, v in group_map_raw.items() if isinstance(v, str)} \
            if isinstance(group_map_raw, Mapping) else {}
        if not ok:
            continue
        result.append(IdentityProvider(
            id=idp_id, issuer=issuer, client_id=client_id, client_secret=secret,
            title=entry["title"] if isinstance(entry.get("title"), str) else "",
            scopes=scopes, group_claim=str(entry.get("group_claim") or "groups"),
            group_map=group_map, groups=_strings(entry.get("groups")),
            email_domains=tuple(d.lower().lstrip("@") for d in
                                _strings(entry.get("email_domains"))),
            email_verified_claim=str(entry.get("email_verified_claim") or "email_verified"),
            jit=entry.get("jit") is True, require_mfa=entry.get("require_mfa") is True,
            mfa_amr=_strings(entry.get("mfa_amr")) if "mfa_amr" in entry
            else ("mfa", "otp", "hwk"),
            mfa_acr=_strings(entry.get("mfa_acr")), acr_values=_strings(entry.get("acr_values")),
            algorithms=algorithms,
            client_auth=cast(Literal["client_secret_basic", "client_secret_post", "none"],
                            client_auth if client_auth in ("client_secret_basic",
                                                         "client_secret_post", "none")
                            else "client_secret_basic"),
            allow_insecure_http_for_loopback=insecure, timeout=timeout))
    return tuple(result)


def check_route_idps(builder: Builder, idps: tuple[IdentityProvider, ...]) -> None:
    """Each route's `idp` must name a configured identity provider."""
    known = {idp.id for idp in idps}
    raw: Any = builder.data.get("routes")
    for index, entry in enumerate(raw) if isinstance(raw, list) else ():
        if isinstance(entry, Mapping) and isinstance(entry.get("idp"), str) \
                and entry["idp"] not in known:
            names = ", ".join(sorted(known)) or "—"
            builder.problem(("routes", index, "idp"),
                            f"IdP '{entry['idp']}' が identity_providers にありません"
                            f"（あるもの: {names}）",
                            f"unknown identity provider '{entry['idp']}' (defined: {names})")
