"""Admin operations on groups and their members (superadmin, helpdesk; registered through
`users`, which imports this module).

Adding someone to an admin-role group makes them an administrator: only a superadmin may
add to or remove from those groups, and nobody may remove their own last one (`people`).
"""

from __future__ import annotations

from typing import Any

from sekisho.console.admin.ops import MANAGERS, Actor, AdminContext, Call, Operation, register
from sekisho.console.admin.people import (
    LIMIT,
    USERNAME,
    AuditFn,
    admin_settings,
    blocking,
    guard_groups,
    guard_keeps_admin,
    guard_target,
    iso,
)
from sekisho.identity import accounts
from sekisho.storage import users

_NAME = {"type": "string", "minLength": 1, "maxLength": 128}
_GROUP_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["name", "description", "members", "admin_role"],
    "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                   "members": {"type": "integer"}, "admin_role": {"type": ["string", "null"]},
                   "created_at": {"type": "string"}}}


def _group_json(ctx: AdminContext, group: users.GroupRecord, members: int) -> dict[str, Any]:
    return {"name": group.name, "description": group.description, "members": members,
            "admin_role": admin_settings(ctx).role_of(frozenset({group.name})),
            "created_at": iso(group.created_at)}


def _member_json(user: users.UserRecord) -> dict[str, Any]:
    return {"username": user.username, "display_name": user.display_name,
            "email": user.email, "disabled": user.disabled}


async def list_groups(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    rows = await blocking(ctx, lambda _: users.list_groups_with_counts(ctx.identity.engine))
    return {"groups": [_group_json(ctx, group, count) for group, count in rows]}


async def create_group(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    body: dict[str, Any] = call.body

    def work(audit: AuditFn) -> users.GroupRecord:
        return accounts.create_group(ctx.identity.engine, audit, body["name"],
                                     admin=actor.name, description=body.get("description", ""))

    return {"group": _group_json(ctx, await blocking(ctx, work), 0)}


async def get_group(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    limit = int(call.query.get("limit", 100))
    engine = ctx.identity.engine

    def work(_: AuditFn) -> tuple[users.GroupRecord, list[users.UserRecord]]:
        group = users.require_group(engine, call.path["name"])
        return group, users.members_page(engine, group.name,
                                         after=str(call.query.get("cursor", "")),
                                         limit=limit + 1)

    group, rows = await blocking(ctx, work)
    page = rows[:limit]
    return {"group": {"name": group.name, "description": group.description,
                      "admin_role": admin_settings(ctx).role_of(frozenset({group.name})),
                      "created_at": iso(group.created_at)},
            "members": [_member_json(u) for u in page],
            "next_cursor": page[-1].username if len(rows) > limit and page else None}


async def add_member(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    settings = admin_settings(ctx)
    guard_groups(settings, actor, [call.path["name"]])
    engine = ctx.identity.engine

    def work(audit: AuditFn) -> bool:
        group = users.require_group(engine, call.path["name"])
        user = users.require_user(engine, call.path["username"])
        guard_target(settings, actor, user.username, users.groups_of_user(engine, user.id))
        return accounts.add_member(engine, audit, group.name, user.username, admin=actor.name)

    return {"added": await blocking(ctx, work)}


async def remove_member(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    settings = admin_settings(ctx)
    guard_groups(settings, actor, [call.path["name"]])
    engine = ctx.identity.engine

    def work(audit: AuditFn) -> bool:
        group = users.require_group(engine, call.path["name"])
        user = users.require_user(engine, call.path["username"])
        current = users.groups_of_user(engine, user.id)
        guard_target(settings, actor, user.username, current)
        guard_keeps_admin(settings, actor, user.username,
                          [name for name in current if name != group.name])
        return accounts.remove_member(engine, audit, group.name, user.username,
                                      admin=actor.name)

    return {"removed": await blocking(ctx, work)}


_MEMBER_PATH = {"name": _NAME, "username": USERNAME}

register(
    Operation(
        id="groups.list", method="GET", path="/groups", roles=MANAGERS, tag="groups",
        summary_ja="グループの一覧 (メンバー数つき)", summary_en="List groups with member counts",
        handler=list_groups,
        response={"type": "object", "required": ["groups"], "properties": {
            "groups": {"type": "array", "items": _GROUP_SCHEMA}}}),
    Operation(
        id="groups.create", method="POST", path="/groups", roles=MANAGERS, tag="groups",
        summary_ja="グループを作成", summary_en="Create a group", handler=create_group,
        status=201,
        body={"type": "object", "required": ["name"], "additionalProperties": False,
              "properties": {"name": _NAME,
                             "description": {"type": "string", "maxLength": 512}}},
        response={"type": "object", "required": ["group"], "properties": {
            "group": _GROUP_SCHEMA}}),
    Operation(
        id="groups.get", method="GET", path="/groups/{name}", roles=MANAGERS, tag="groups",
        summary_ja="グループとメンバー (ページ送り)", summary_en="A group and its members (paged)",
        handler=get_group, path_params={"name": _NAME},
        query={"type": "object", "properties": {
            "cursor": {"type": "string", "maxLength": 128}, "limit": LIMIT}},
        response={"type": "object", "required": ["group", "members", "next_cursor"]}),
    Operation(
        id="groups.add_member", method="PUT", path="/groups/{name}/members/{username}",
        roles=MANAGERS, tag="groups", summary_ja="メンバーを追加", summary_en="Add a member",
        handler=add_member, path_params=_MEMBER_PATH,
        response={"type": "object", "required": ["added"],
                  "properties": {"added": {"type": "boolean"}}}),
    Operation(
        id="groups.remove_member", method="DELETE", path="/groups/{name}/members/{username}",
        roles=MANAGERS, tag="groups", summary_ja="メンバーを外す", summary_en="Remove a member",
        handler=remove_member, path_params=_MEMBER_PATH,
        response={"type": "object", "required": ["removed"],
                  "properties": {"removed": {"type": "boolean"}}}),
)
