"""Admin operations on users and their factors, groups and IdP links (superadmin, helpdesk).

What each change does lives in `identity.accounts` (shared with `sekisho user|group`); who
may do it to whom in `people` (helpdesk never acts on an administrator nor changes admin
groups; nobody locks themself out). Listings page by keyset on the username, so a page costs
the same with 10,000 accounts as with ten. Group operations register here too (groups are
how users get access and admin roles; `groups.*` ids, tag `groups`).
"""

from __future__ import annotations

from typing import Any

from sekisho.console.admin import groups as _groups  # noqa: F401  (registers groups.*)
from sekisho.console.admin.ops import (
    MANAGERS,
    Actor,
    AdminContext,
    Call,
    Operation,
    register,
)
from sekisho.console.admin.people import (
    LIMIT,
    USER_SCHEMA,
    USERNAME,
    AuditFn,
    admin_settings,
    blocking,
    device_json,
    guard_disable_self,
    guard_groups,
    guard_keeps_admin,
    guard_target,
    iso,
    session_json,
    user_json,
)
from sekisho.identity import accounts
from sekisho.storage import devices, factors, oidc, users, webauthn
from sekisho.storage import sessions as session_store

_USER_PATH = {"username": USERNAME}
_PROFILE = {
    # No control characters: a display name is printed in logs and CLI tables (forged lines).
    "display_name": {"type": "string", "maxLength": 256, "pattern": "^[^\\x00-\\x1f\\x7f]*$"},
    "email": {"type": "string", "maxLength": 320,
              "pattern": r"^$|^[^@\s]+@[^@\s]+$"},
}
_PASSWORD = {"type": "string", "minLength": 1, "maxLength": 1024}
_GROUP_NAMES = {"type": "array", "maxItems": 200, "uniqueItems": True,
                "items": {"type": "string", "minLength": 1, "maxLength": 128}}


def _target(ctx: AdminContext, actor: Actor, username: str) -> tuple[users.UserRecord, list[str]]:
    """The account and its groups, after the helpdesk-on-admin rule (call in the thread)."""
    user = users.require_user(ctx.identity.engine, username)
    groups = users.groups_of_user(ctx.identity.engine, user.id)
    guard_target(admin_settings(ctx), actor, user.username, groups)
    return user, groups


# -- listing and detail -------------------------------------------------------------------------

async def list_users(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    query = call.query
    limit = int(query.get("limit", 50))
    engine, settings = ctx.identity.engine, admin_settings(ctx)

    def work(_: AuditFn) -> tuple[list[users.UserRecord], dict[int, list[str]], bool]:
        rows = users.search_users(engine, query=str(query.get("q", "")),
                                  disabled=query.get("disabled"),
                                  after=str(query.get("cursor", "")), limit=limit + 1)
        page = rows[:limit]
        return page, users.groups_of_users(engine, [u.id for u in page]), len(rows) > limit

    page, groups, more = await blocking(ctx, work)
    return {"users": [user_json(u, groups[u.id], settings) for u in page],
            "next_cursor": page[-1].username if more and page else None}


async def get_user(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    engine, settings = ctx.identity.engine, admin_settings(ctx)
    idle = ctx.identity.sessions.settings.idle_timeout
    now = ctx.now

    def work(_: AuditFn) -> dict[str, Any]:
        user = users.require_user(engine, call.path["username"])
        groups = users.groups_of_user(engine, user.id)
        totp = factors.list_factors(engine, user.id, "totp")
        passkeys = webauthn.list_credentials(engine, user.id)
        return {
            "user": user_json(user, groups, settings), "groups": groups,
            "factors": {
                "totp": [{"id": f.id, "name": f.name, "created_at": iso(f.created_at),
                          "last_used_at": iso(f.last_used_at)} for f in totp],
                "passkeys": [{"id": p.id, "name": p.name, "created_at": iso(p.created_at),
                              "last_used_at": iso(p.last_used_at),
                              "user_verified": p.user_verified} for p in passkeys],
                "recovery_codes_unused": factors.unused_recovery_codes(engine, user.id)},
            "idp_links": [{"idp": link.idp, "sub": link.sub, "email": link.email,
                           "created_at": iso(link.created_at),
                           "last_login_at": iso(link.last_login_at)}
                          for link in oidc.identities_of_user(engine, user.id)],
            "devices": [device_json(d) for d in devices.list_devices(engine, user.id)],
            "sessions": [session_json(s) for s in session_store.list_active(
                engine, now, idle, user_id=user.id, limit=100)]}

    return await blocking(ctx, work)


# -- changes ------------------------------------------------------------------------------------

async def create_user(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    body: dict[str, Any] = call.body
    groups = list(body.get("groups", []))
    settings = admin_settings(ctx)
    guard_groups(settings, actor, groups)
    display_name, email = body.get("display_name", ""), body.get("email", "")
    given = body.get("password")

    def work(audit: AuditFn) -> tuple[users.UserRecord, str]:
        name = users.valid_name(body["username"])
        password = given or accounts.generate_password(
            username=name, display_name=display_name, email=email)
        hashed = accounts.hash_new_password(password, username=name,
                                            display_name=display_name, email=email)
        user = accounts.create_account(
            ctx.identity.engine, audit, username=name, admin=actor.name,
            display_name=display_name, email=email, password_hash=hashed, groups=groups)
        return user, password

    user, password = await blocking(ctx, work)
    answer: dict[str, Any] = {"user": user_json(user, groups, settings)}
    if given is None:
        answer["password"] = password  # shown once; only its hash is stored
    return answer


async def update_user(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    body: dict[str, Any] = call.body
    engine, settings = ctx.identity.engine, admin_settings(ctx)
    if body.get("disabled") is True:
        guard_disable_self(actor, call.path["username"])

    def work(audit: AuditFn) -> tuple[users.UserRecord, list[str]]:
        user, groups = _target(ctx, actor, call.path["username"])
        if "display_name" in body or "email" in body:
            user = accounts.update_profile(engine, audit, user.username, admin=actor.name,
                                           display_name=body.get("display_name"),
                                           email=body.get("email"))
        if "disabled" in body and body["disabled"] != user.disabled:
            user = accounts.set_disabled(engine, ctx.identity.sessions, audit, user.username,
                                         bool(body["disabled"]), admin=actor.name)
        return user, groups

    user, groups = await blocking(ctx, work)
    return {"user": user_json(user, groups, settings)}


async def reset_password(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    given = (call.body or {}).get("password")

    def work(audit: AuditFn) -> tuple[str, int]:
        user, _ = _target(ctx, actor, call.path["username"])
        password = given or accounts.generate_password(
            username=user.username, display_name=user.display_name, email=user.email)
        hashed = accounts.hash_new_password(password, username=user.username,
                                            display_name=user.display_name, email=user.email)
        ended = accounts.set_password(ctx.identity.engine, ctx.identity.sessions, audit,
                                      user.username, hashed, admin=actor.name)
        return password, ended

    password, ended = await blocking(ctx, work)
    answer: dict[str, Any] = {"username": users.canonical_name(call.path["username"]),
                              "sessions_revoked": ended}
    if given is None:
        answer["password"] = password  # shown once
    return answer


async def reset_factors(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    def work(audit: AuditFn) -> tuple[int, int, int]:
        user, _ = _target(ctx, actor, call.path["username"])
        return accounts.reset_factors(ctx.identity.engine, ctx.identity.sessions, audit,
                                      user.username, admin=actor.name)

    removed, codes, ended = await blocking(ctx, work)
    return {"factors_removed": removed, "recovery_codes_removed": codes,
            "sessions_revoked": ended}


async def unlink_idp(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    def work(audit: AuditFn) -> tuple[int, int]:
        user, _ = _target(ctx, actor, call.path["username"])
        return accounts.unlink_idp(ctx.identity.engine, ctx.identity.sessions, audit,
                                   user.username, call.path["idp"], admin=actor.name)

    removed, ended = await blocking(ctx, work)
    return {"links_removed": removed, "sessions_revoked": ended}


async def set_groups(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    wanted = [users.canonical_name(name) for name in call.body["groups"]]
    settings = admin_settings(ctx)

    def work(audit: AuditFn) -> tuple[list[str], list[str]]:
        user, current = _target(ctx, actor, call.path["username"])
        guard_groups(settings, actor, set(wanted) ^ set(current))
        guard_keeps_admin(settings, actor, user.username, wanted)
        return accounts.replace_groups(ctx.identity.engine, audit, user.username, wanted,
                                       admin=actor.name)

    added, removed = await blocking(ctx, work)
    return {"groups": sorted(set(wanted)), "added": added, "removed": removed}


register(
    Operation(
        id="users.list", method="GET", path="/users", roles=MANAGERS, tag="users",
        summary_ja="利用者の一覧 (前方一致検索・ページ送り)",
        summary_en="List users (prefix search, keyset paging)", handler=list_users,
        query={"type": "object", "properties": {
            "q": {"type": "string", "maxLength": 128},
            "disabled": {"type": "boolean"},
            "cursor": {"type": "string", "maxLength": 128},
            "limit": LIMIT}},
        response={"type": "object", "required": ["users", "next_cursor"], "properties": {
            "users": {"type": "array", "items": USER_SCHEMA},
            "next_cursor": {"type": ["string", "null"]}}}),
    Operation(
        id="users.create", method="POST", path="/users", roles=MANAGERS, tag="users",
        summary_ja="利用者を作成 (パスワード省略時は初期パスワードを生成して一度だけ返す)",
        summary_en="Create a user (without a password, a generated one is returned once)",
        handler=create_user, status=201,
        body={"type": "object", "required": ["username"], "additionalProperties": False,
              "properties": {"username": USERNAME, **_PROFILE, "password": _PASSWORD,
                             "groups": _GROUP_NAMES}},
        response={"type": "object", "required": ["user"], "properties": {
            "user": USER_SCHEMA, "password": {"type": "string"}}}),
    Operation(
        id="users.get", method="GET", path="/users/{username}", roles=MANAGERS, tag="users",
        summary_ja="利用者の詳細 (グループ・認証要素・IdP 連携・端末・セッション)",
        summary_en="A user with groups, factors, IdP links, devices and sessions",
        handler=get_user, path_params=_USER_PATH,
        response={"type": "object", "required": ["user", "factors", "sessions"]}),
    Operation(
        id="users.update", method="PATCH", path="/users/{username}", roles=MANAGERS,
        tag="users", summary_ja="表示名・メールアドレスの変更、無効化・有効化",
        summary_en="Change display name or e-mail; disable or enable",
        handler=update_user, path_params=_USER_PATH,
        body={"type": "object", "additionalProperties": False, "minProperties": 1,
              "properties": {**_PROFILE, "disabled": {"type": "boolean"}}},
        response={"type": "object", "required": ["user"]}),
    Operation(
        id="users.reset_password", method="POST", path="/users/{username}/password",
        roles=MANAGERS, tag="users",
        summary_ja="パスワードを再設定 (省略時は生成して一度だけ返す。セッションは終了)",
        summary_en="Reset the password (generated and returned once when not given); "
                   "ends the user's sessions",
        handler=reset_password, path_params=_USER_PATH,
        body={"type": ["object", "null"], "additionalProperties": False,
              "properties": {"password": _PASSWORD}},
        response={"type": "object", "required": ["username", "sessions_revoked"]}),
    Operation(
        id="users.reset_factors", method="POST", path="/users/{username}/reset-factors",
        roles=MANAGERS, tag="users",
        summary_ja="TOTP・パスキー・リカバリーコードをすべて削除 (セッションは終了)",
        summary_en="Remove every TOTP, passkey and recovery code; ends the user's sessions",
        handler=reset_factors, path_params=_USER_PATH,
        body={"type": ["object", "null"], "additionalProperties": False, "properties": {}},
        response={"type": "object", "required": ["factors_removed"]}),
    Operation(
        id="users.unlink_idp", method="DELETE", path="/users/{username}/idp-links/{idp}",
        roles=MANAGERS, tag="users",
        summary_ja="IdP 連携を解除 (その IdP のセッションは終了)",
        summary_en="Unlink an identity provider (its sessions end)", handler=unlink_idp,
        path_params={**_USER_PATH, "idp": {"type": "string", "minLength": 1,
                                           "maxLength": 64}},
        response={"type": "object", "required": ["links_removed"]}),
    Operation(
        id="users.set_groups", method="PUT", path="/users/{username}/groups",
        roles=MANAGERS, tag="users", summary_ja="所属グループを一覧どおりに設定",
        summary_en="Set the user's groups to exactly this list", handler=set_groups,
        path_params=_USER_PATH,
        body={"type": "object", "required": ["groups"], "additionalProperties": False,
              "properties": {"groups": _GROUP_NAMES}},
        response={"type": "object", "required": ["groups", "added", "removed"]}),
)
