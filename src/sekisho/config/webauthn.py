"""The `webauthn:` section (passkeys): RP ID, origins, user verification, passwordless.

The origin check is the heart of WebAuthn's phishing resistance: a signature is accepted
only for an origin the administrator listed, and every listed origin must lie inside the RP
ID (`host == rp_id` or `host` ends with `.rp_id`), otherwise browsers would refuse it anyway
and the mistake would only show at the first sign-in. Plain http:// origins are refused
(a passkey proven over an interceptable channel proves nothing about the page).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from sekisho.config.build import Builder
from sekisho.config.model import WebAuthnSettings


def origin_host(origin: str) -> str:
    return (urlsplit(origin).hostname or "").lower()


def origin_in_rp(origin: str, rp_id: str) -> bool:
    host = origin_host(origin)
    return bool(host) and (host == rp_id or host.endswith("." + rp_id))


def build_webauthn(builder: Builder) -> WebAuthnSettings:
    section = builder.section("webauthn")
    default = WebAuthnSettings()
    rp_id = section.get("rp_id", default.rp_id)
    rp_id = rp_id.strip().lower().rstrip(".") if isinstance(rp_id, str) else ""
    origins: list[str] = []
    raw = section.get("origins")
    for index, value in enumerate(raw) if isinstance(raw, list) else ():
        if not isinstance(value, str):
            continue
        origin = value.strip().lower().rstrip("/")
        if not origin.startswith("https://"):
            builder.problem(("webauthn", "origins", index), "https:// のオリジンが必要です",
                            "must be an https:// origin")
        elif rp_id and not origin_in_rp(origin, rp_id):
            builder.problem(("webauthn", "origins", index),
                            f"オリジンのホストが rp_id ({rp_id}) の内側にありません",
                            f"the origin's host is not inside rp_id ({rp_id})")
        else:
            origins.append(origin)
    if origins and not rp_id:
        builder.problem(("webauthn", "rp_id"), "origins を指定するときは rp_id も必要です",
                        "rp_id is required when origins are listed")
    rp_name = section.get("rp_name", default.rp_name)
    verification = section.get("user_verification", default.user_verification)
    groups = section.get("require_uv_groups", list(default.require_uv_groups))
    passwordless = section.get("passwordless", default.passwordless)
    return WebAuthnSettings(
        rp_id=rp_id,
        rp_name=rp_name if isinstance(rp_name, str) and rp_name else default.rp_name,
        origins=tuple(dict.fromkeys(origins)),
        user_verification="required" if verification == "required" else "preferred",
        require_uv_groups=tuple(str(g) for g in groups) if isinstance(groups, list)
        else default.require_uv_groups,
        passwordless=passwordless is True)
