"""The `admin:` section: which groups hold which admin role, the admin policy, token lives.

Group names are compared with a session's groups, which storage keeps canonical (NFKC,
case-folded): `Admins` written here is the group `admins`, so a role is never silently
granted to nobody because of a capital letter. The schema already refuses role names
outside the closed list (superadmin, helpdesk, auditor); this pass checks the group names,
that `policy` names a policy of `policies:` and the token life's range, and reads every
value defensively so all problems are reported in one run.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from sekisho.config.build import Builder
from sekisho.config.model import ADMIN_ROLES, AdminSettings, Route

MIN_TOKEN_DAYS, MAX_TOKEN_DAYS = 1, 3650
DEFAULT_POLICY_NAME = "admin:default"
# The rule storage applies to group names (storage.users): letters, digits and . _ - @.
_GROUP = re.compile(r"^[\w.@-]{1,128}$")


def _canonical(name: str) -> str:
    return unicodedata.normalize("NFKC", name).strip().casefold()


def build_admin(builder: Builder, policies: Mapping[str, Mapping[str, Any]]) -> AdminSettings:
    section = builder.section("admin")
    default = AdminSettings()
    roles = _roles(builder, section.get("roles"), default)
    policy = ""
    raw_policy = section.get("policy")
    if isinstance(raw_policy, str) and raw_policy:
        policy = raw_policy
        if policy not in policies:
            builder.problem(("admin", "policy"),
                            f"ポリシー '{policy}' は policies: にありません",
                            f"policy '{policy}' is not defined under policies:")
    days = section.get("token_max_days", default.token_max_days)
    if not isinstance(days, int) or isinstance(days, bool):
        days = default.token_max_days
    elif not MIN_TOKEN_DAYS <= days <= MAX_TOKEN_DAYS:
        builder.problem(("admin", "token_max_days"),
                        f"{MIN_TOKEN_DAYS}〜{MAX_TOKEN_DAYS} の日数を指定してください",
                        f"give a number of days from {MIN_TOKEN_DAYS} to {MAX_TOKEN_DAYS}")
        days = default.token_max_days
    return AdminSettings(roles=roles, policy=policy, token_max_days=days)


def _roles(builder: Builder, raw: Any,
           default: AdminSettings) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(raw, Mapping):
        return default.roles
    for name in raw:
        if name not in ADMIN_ROLES:
            builder.problem(("admin", "roles", str(name)),
                            f"役割 '{name}' はありません（{', '.join(ADMIN_ROLES)} のいずれか）",
                            f"unknown role '{name}' (expected one of: {', '.join(ADMIN_ROLES)})")
    roles: list[tuple[str, tuple[str, ...]]] = []
    for role in ADMIN_ROLES:
        groups = raw.get(role)
        if not isinstance(groups, list):
            roles.append((role, default.groups_for(role)))
            continue
        names: list[str] = []
        for index, group in enumerate(groups):
            canonical = _canonical(group) if isinstance(group, str) else ""
            if not _GROUP.fullmatch(canonical):
                builder.problem(("admin", "roles", role, index),
                                f"グループ名 {group!r} は使えません"
                                "（英数字と . _ - @、128 文字以内）",
                                f"invalid group name {group!r}: use letters, digits and "
                                ". _ - @ (at most 128 characters)")
            elif canonical not in names:
                names.append(canonical)
        roles.append((role, tuple(names)))
    return tuple(roles)


# The admin console as the PDP sees it: a route of its own in the internet segment, so its
# policy is put under the same guardrail as any internet route (`runtime.build_runtime`).
# Never proxied: `to` only fills the field.
ADMIN_ROUTE = Route(id="sekisho-admin", host="", path_prefix="/.sekisho/admin/",
                    to="http://127.0.0.1/", segment="internet", policy=DEFAULT_POLICY_NAME)


def default_policy(settings: AdminSettings) -> dict[str, Any]:
    """The built-in admin policy: a group holding an admin role, AND a passkey (with or without
    user verification) itself proven at most 15 minutes ago. A stolen session cookie alone,
    or a password and a TOTP phished in real time, never reach the console — nor does a TOTP
    typed a minute ago into a session whose passkey was used hours ago.
    With no admin group configured it lets nobody in."""
    groups = sorted(settings.admin_groups)
    if not groups:
        return {"allow": {"and": [{"never": True}]}}
    return {"allow": {"and": [{"group": groups}, {"mfa": {"methods": ["webauthn", "webauthn_uv"],
                                                          "within": "15m"}}]}}
