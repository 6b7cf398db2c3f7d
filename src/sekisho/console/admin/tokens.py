"""API tokens for automation: created, listed and revoked by a superadmin; hashed at rest,
scoped by role, expiring. Also `me`: who the caller is (and a CSRF token for a browser).

Rules beyond the role check:
- every token expires, at most `admin.token_max_days` after its creation;
- a token created *by a token* never outlives the token that created it, so a leaked
  automation token cannot mint itself a longer life (persistence after its expiry);
- the secret is returned once, in the creation's answer, and only after the creation is in
  the audit log: if the audit append fails, the caller gets a 503 and nobody ever learns
  the secret of the row just written (an unusable token, listed for the record).
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta
from typing import Any

from sekisho.audit.events import ApiTokenChanged
from sekisho.console.admin.ops import (
    READERS,
    SUPERADMIN_ONLY,
    Actor,
    AdminContext,
    AdminError,
    Call,
    Operation,
    Role,
    not_found,
    register,
)
from sekisho.storage import api_tokens
from sekisho.storage.api_tokens import TokenRecord

ME_ID = "me"
DEFAULT_DAYS = 90
_NAME = re.compile(r"[\w.@-]{1,64}")
_ROLES = [role.value for role in Role]
_TIME = {"type": "string", "format": "date-time"}
_MAYBE_TIME = {"type": ["string", "null"], "format": "date-time"}

TOKEN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "role", "state", "created_by", "created_at", "expires_at",
                 "last_used_at", "revoked_at"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "name": {"type": "string"},
        "role": {"enum": _ROLES},
        "state": {"enum": ["active", "expired", "revoked"]},
        "created_by": {"type": "string"},
        "created_at": _TIME,
        "expires_at": _TIME,
        "last_used_at": _MAYBE_TIME,
        "revoked_at": _MAYBE_TIME,
    },
}
TOKEN_ID = {"type": "string", "pattern": "^[0-9a-f]{16}$"}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def token_json(record: TokenRecord, now: datetime) -> dict[str, Any]:
    state = "revoked" if record.revoked_at is not None else (
        "active" if now < record.expires_at else "expired")
    return {"id": record.id, "name": record.name, "role": record.role, "state": state,
            "created_by": record.created_by, "created_at": _iso(record.created_at),
            "expires_at": _iso(record.expires_at), "last_used_at": _iso(record.last_used_at),
            "revoked_at": _iso(record.revoked_at)}


async def me(ctx: AdminContext, actor: Actor, call: Call) -> dict[str, Any]:
    """Who calls, with which role; the API shell adds `csrf` for a browser session."""
    return {"name": actor.name, "role": actor.role.value, "via": actor.via}


async def list_tokens(ctx: AdminContext, actor: Actor, call: Call) -> dict[str, Any]:
    records = await asyncio.to_thread(api_tokens.list_tokens, ctx.identity.engine)
    now = ctx.now
    return {"tokens": [token_json(r, now) for r in records]}


def checked(name: Any, role: Any, days: Any, limit: int) -> tuple[str, str, int]:
    """A new token's name, role and life in days, or the refusal (the API and the CLI)."""
    name = str(name or "")
    if not _NAME.fullmatch(name):
        raise AdminError("invalid-name",
                         "名前は 64 文字以内の英数字と . _ - @ で付けてください。",
                         "Name the token with at most 64 letters, digits and . _ - @.", 422)
    if role not in _ROLES:
        raise AdminError("invalid-role", f"役割は {', '.join(_ROLES)} のいずれかです。",
                         f"The role is one of {', '.join(_ROLES)}.", 422)
    days = min(DEFAULT_DAYS, limit) if days is None else days
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= limit:
        raise AdminError("token-too-long",
                         f"有効期間は 1〜{limit} 日で指定してください（admin.token_max_days）。",
                         f"Give a life of 1 to {limit} days (admin.token_max_days).", 422)
    return name, str(role), days


async def create_token(ctx: AdminContext, actor: Actor, call: Call) -> dict[str, Any]:
    body = call.body if isinstance(call.body, dict) else {}
    name, role, days = checked(body.get("name"), body.get("role"),
                               body.get("expires_in_days"),
                               ctx.identity.current_config().admin.token_max_days)
    now = ctx.now
    expires = now + timedelta(days=days)
    engine = ctx.identity.engine
    if actor.via == "token":
        creator = await asyncio.to_thread(api_tokens.get, engine, actor.session)
        if creator is None or not creator.live(now):
            raise AdminError("token-invalid", "API トークンが無効です。",
                             "The API token is not valid.", 401)
        expires = min(expires, creator.expires_at)
    record, text = await asyncio.to_thread(
        api_tokens.create, engine, name=name, role=role,
        created_by=actor.name, now=now, expires_at=expires)
    await ctx.identity.audit.append(ApiTokenChanged(
        admin=actor.name, action="created", token=record.id, name=record.name,
        role=record.role, expires_at=record.expires_at.isoformat(),
        source_ip=actor.source_ip))
    return {**token_json(record, now), "token": text}


async def revoke_token(ctx: AdminContext, actor: Actor, call: Call) -> dict[str, Any]:
    token_id = call.path["id"]
    engine = ctx.identity.engine
    record = await asyncio.to_thread(api_tokens.get, engine, token_id)
    if record is None:
        raise not_found("API トークン", "API token")
    now = ctx.now
    if not await asyncio.to_thread(api_tokens.revoke, engine, token_id, now):
        raise AdminError("already-revoked", "この API トークンはすでに失効しています。",
                         "This API token is already revoked.", 409)
    await ctx.identity.audit.append(ApiTokenChanged(
        admin=actor.name, action="revoked", token=record.id, name=record.name,
        role=record.role, expires_at=record.expires_at.isoformat(),
        source_ip=actor.source_ip))
    revoked = await asyncio.to_thread(api_tokens.get, engine, token_id)
    return token_json(revoked or record, now)


register(
    Operation(
        id=ME_ID, method="GET", path="/me", roles=READERS, tag="tokens",
        summary_ja="自分の名前と役割（ブラウザには CSRF トークンも）",
        summary_en="Who am I: name, role, and a CSRF token for a browser session",
        handler=me,
        response={"type": "object", "required": ["name", "role", "via"], "properties": {
            "name": {"type": "string"}, "role": {"enum": _ROLES},
            "via": {"enum": ["session", "token"]}, "csrf": {"type": "string"}}}),
    Operation(
        id="tokens.list", method="GET", path="/tokens", roles=SUPERADMIN_ONLY, tag="tokens",
        summary_ja="API トークンの一覧（失効・期限切れを含む）",
        summary_en="List API tokens (revoked and expired ones too)",
        handler=list_tokens,
        response={"type": "object", "required": ["tokens"],
                  "properties": {"tokens": {"type": "array", "items": TOKEN_SCHEMA}}}),
    Operation(
        id="tokens.create", method="POST", path="/tokens", roles=SUPERADMIN_ONLY, tag="tokens",
        summary_ja="API トークンを作成（秘密はこの応答で一度だけ表示）",
        summary_en="Create an API token (the secret is shown once, in this answer)",
        handler=create_token, status=201,
        body={"type": "object", "additionalProperties": False, "required": ["name", "role"],
              "properties": {
                  "name": {"type": "string", "minLength": 1, "maxLength": 64,
                           "pattern": "^[\\w.@-]+$"},
                  "role": {"enum": _ROLES},
                  "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 3650}}},
        response={**TOKEN_SCHEMA, "required": [*TOKEN_SCHEMA["required"], "token"],
                  "properties": {**TOKEN_SCHEMA["properties"],
                                 "token": {"type": "string", "pattern": "^skt_"}}}),
    Operation(
        id="tokens.revoke", method="DELETE", path="/tokens/{id}", roles=SUPERADMIN_ONLY,
        tag="tokens", summary_ja="API トークンを失効", summary_en="Revoke an API token",
        handler=revoke_token, path_params={"id": TOKEN_ID}, response=TOKEN_SCHEMA),
)
