"""Admin operations on sign-in sessions: list the live ones, end one, end all of a user.

A session is named by the short id the listings show (12 hex digits; 8 at least). A prefix
that matches two sessions is refused (409), never "the first one": ending the wrong person's
session — or not ending the right one — is worse than asking for more digits. Revocations go
through the `SessionManager`: this process forgets the session at once and the change feed
tells every other gateway process within a poll, so the very next request is refused.
"""

from __future__ import annotations

from typing import Any

from sekisho.audit.events import SessionRevoked
from sekisho.console.admin.ops import (
    MANAGERS,
    Actor,
    AdminContext,
    AdminError,
    Call,
    Operation,
    not_found,
    register,
)
from sekisho.console.admin.people import (
    LIMIT,
    SESSION_SCHEMA,
    USERNAME,
    AuditFn,
    admin_settings,
    blocking,
    guard_target,
    session_json,
)
from sekisho.identity.sessions import MIN_PREFIX
from sekisho.storage import sessions as store
from sekisho.storage import users

_REASON = {"type": "object", "properties": {
    "reason": {"type": "string", "maxLength": 128, "pattern": r"^[\w .:/@-]*$"}}}


def _reason(call: Call) -> str:
    return str(call.query.get("reason") or "admin")


async def list_sessions(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    limit = int(call.query.get("limit", 50))
    manager = ctx.identity.sessions
    now = ctx.now

    def work(_: AuditFn) -> list[store.SessionRecord]:
        user_id = None
        if call.query.get("user"):
            user_id = users.require_user(ctx.identity.engine, str(call.query["user"])).id
        return store.list_active(ctx.identity.engine, now, manager.settings.idle_timeout,
                                 user_id=user_id, limit=limit)

    records = await blocking(ctx, work)
    return {"sessions": [session_json(r) for r in records], "next_cursor": None,
            "truncated": len(records) >= limit}


async def revoke_session(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    prefix = call.path["id"].lower()
    reason = _reason(call)
    engine = ctx.identity.engine

    def work(audit: AuditFn) -> dict[str, Any]:
        matches = store.find_by_prefix(engine, prefix, limit=2)
        if len(matches) > 1:
            raise AdminError(
                "session-ambiguous",
                f"{prefix} に一致するセッションが複数あります。桁数を増やしてください。",
                f"{prefix} matches several sessions; give more digits.", 409)
        record = store.load_session(engine, matches[0]) if matches else None
        if record is None or record.revoked_at is not None:
            raise not_found("セッション", "Session")
        guard_target(admin_settings(ctx), actor, record.username, record.groups)
        if not ctx.identity.sessions.revoke_id(record.id, reason):
            raise not_found("セッション", "Session")  # revoked meanwhile by someone else
        audit(SessionRevoked(admin=actor.name, session=record.id[:12], user=record.username,
                             reason=reason))
        return {"revoked": record.id[:12], "user": record.username}

    return await blocking(ctx, work)


async def revoke_user_sessions(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    reason = _reason(call)
    engine = ctx.identity.engine

    def work(audit: AuditFn) -> list[SessionRevoked]:
        user = users.require_user(engine, call.path["username"])
        guard_target(admin_settings(ctx), actor, user.username,
                     users.groups_of_user(engine, user.id))
        events = ctx.identity.sessions.revoke_user(user.username, actor.name, reason)
        for event in events:
            audit(event)
        return events

    events = await blocking(ctx, work)
    return {"revoked": len(events), "sessions": [event.session for event in events]}


register(
    Operation(
        id="sessions.list", method="GET", path="/sessions", roles=MANAGERS, tag="sessions",
        summary_ja="有効なセッションの一覧 (新しい順)",
        summary_en="List live sessions, newest first",
        handler=list_sessions,
        query={"type": "object", "properties": {"user": USERNAME, "limit": LIMIT}},
        response={"type": "object", "required": ["sessions"], "properties": {
            "sessions": {"type": "array", "items": SESSION_SCHEMA},
            "next_cursor": {"type": "null"}, "truncated": {"type": "boolean"}}}),
    Operation(
        id="sessions.revoke", method="DELETE", path="/sessions/{id}", roles=MANAGERS,
        tag="sessions", summary_ja="セッションを終了 (短い ID、一致が複数なら 409)",
        summary_en="End one session by its short id (409 when several match)",
        handler=revoke_session, query=_REASON,
        path_params={"id": {"type": "string", "pattern": f"^[0-9a-fA-F]{{{MIN_PREFIX},64}}$"}},
        response={"type": "object", "required": ["revoked", "user"]}),
    Operation(
        id="sessions.revoke_user", method="DELETE", path="/users/{username}/sessions",
        roles=MANAGERS, tag="sessions", summary_ja="利用者のすべてのセッションを終了",
        summary_en="End every session of a user", handler=revoke_user_sessions,
        path_params={"username": USERNAME}, query=_REASON,
        response={"type": "object", "required": ["revoked", "sessions"]}),
)
