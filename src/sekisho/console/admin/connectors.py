"""Connectors in the admin API: the registry (every admin role reads it), one-time enrolment
tokens and revocation (superadmin only: a connector opens a path into a closed network).

The token is returned once, in the creation's answer, and only after the creation is in the
audit log (if the append fails the caller gets a 503 and nobody learns the token). The
answer also carries the pin of the connector listener's key, which the agent checks before
it sends the token. Revocation is seen by the broker within a second (it re-reads the
registry for its live tunnels) and refused at every later handshake.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from sekisho.connector import enrolment
from sekisho.console.admin.ops import (
    READERS,
    SUPERADMIN_ONLY,
    Actor,
    AdminContext,
    AdminError,
    Call,
    Operation,
    not_found,
    register,
)
from sekisho.storage import connectors as store
from sekisho.storage.connectors import Connector

_TIME = {"type": "string", "format": "date-time"}
_MAYBE_TIME = {"type": ["string", "null"], "format": "date-time"}
SITE = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}
CONNECTOR_ID = {"type": "string", "pattern": "^con-[0-9a-f]{16}$"}

CONNECTOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "site", "name", "status", "serial", "enrolled_at", "last_seen",
                 "not_after", "revoked_at"],
    "properties": {
        "id": CONNECTOR_ID, "site": SITE, "name": {"type": "string"},
        "status": {"enum": list(store.STATUSES)}, "serial": {"type": "string"},
        "enrolled_at": _TIME, "last_seen": _MAYBE_TIME, "not_after": _TIME,
        "revoked_at": _MAYBE_TIME,
    },
}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def connector_json(record: Connector) -> dict[str, Any]:
    return {"id": record.connector_id, "site": record.site, "name": record.name,
            "status": record.status, "serial": record.cert_serial,
            "enrolled_at": _iso(record.enrolled_at), "last_seen": _iso(record.last_seen),
            "not_after": _iso(record.cert_not_after), "revoked_at": _iso(record.revoked_at)}


async def list_connectors(ctx: AdminContext, actor: Actor, call: Call) -> dict[str, Any]:
    site = call.query.get("site")
    records = await asyncio.to_thread(store.list_connectors, ctx.identity.engine,
                                      str(site) if site else None)
    return {"connectors": [connector_json(r) for r in records]}


async def create_token(ctx: AdminContext, actor: Actor, call: Call) -> dict[str, Any]:
    body = call.body if isinstance(call.body, dict) else {}
    config = ctx.identity.current_config()
    limit = config.connector.token_max_days * 24
    hours = body.get("expires_in_hours", 24)
    if not isinstance(hours, int) or isinstance(hours, bool) or not 1 <= hours <= limit:
        raise AdminError(
            "token-too-long",
            f"有効期間は 1〜{limit} 時間で指定してください（connector.token_max_days）。",
            f"Give a life of 1 to {limit} hours (connector.token_max_days).", 422)
    try:
        token, event = await asyncio.to_thread(
            enrolment.create_token, ctx.identity.engine, str(body.get("site", "")),
            actor.name, timedelta(hours=hours), max_days=config.connector.token_max_days,
            now=ctx.now)
    except enrolment.EnrolmentError as exc:
        raise AdminError(exc.code, "サイト名は英小文字・数字・- の 63 文字以内です。",
                         "The site is lower-case letters, digits and '-', at most 63.",
                         422) from None
    await ctx.identity.audit.append(event)
    pin = ""
    if config.connector.listen is not None:
        from sekisho.connector.service import listener_pin

        pin = await asyncio.to_thread(listener_pin, config)
    return {"site": event.site, "token": token, "expires_at": event.expires_at, "pin": pin}


async def revoke_connector(ctx: AdminContext, actor: Actor, call: Call) -> dict[str, Any]:
    engine = ctx.identity.engine
    connector_id = call.path["id"]
    if await asyncio.to_thread(store.get_connector, engine, connector_id) is None:
        raise not_found("コネクタ", "Connector")
    record, event = await asyncio.to_thread(
        lambda: enrolment.revoke(engine, connector_id, admin=actor.name, now=ctx.now))
    if event is None:
        raise AdminError("already-revoked", "このコネクタはすでに失効しています。",
                         "This connector is already revoked.", 409)
    await ctx.identity.audit.append(event)
    return connector_json(record)


register(
    Operation(
        id="connectors.list", method="GET", path="/connectors", roles=READERS,
        tag="connectors", summary_ja="コネクタの一覧（失効済みを含む）",
        summary_en="List connectors (revoked ones too)", handler=list_connectors,
        query={"type": "object", "additionalProperties": False,
               "properties": {"site": SITE}},
        response={"type": "object", "required": ["connectors"], "properties": {
            "connectors": {"type": "array", "items": CONNECTOR_SCHEMA}}}),
    Operation(
        id="connectors.create_token", method="POST", path="/connectors/tokens",
        roles=SUPERADMIN_ONLY, tag="connectors",
        summary_ja="コネクタの一回限りの登録トークンを作成（この応答で一度だけ表示）",
        summary_en="Create a one-time connector enrolment token (shown once, in this answer)",
        handler=create_token, status=201,
        body={"type": "object", "additionalProperties": False, "required": ["site"],
              "properties": {"site": SITE,
                             "expires_in_hours": {"type": "integer", "minimum": 1,
                                                  "maximum": 8760}}},
        response={"type": "object", "required": ["site", "token", "expires_at", "pin"],
                  "properties": {"site": SITE, "token": {"type": "string", "pattern": "^skc_"},
                                 "expires_at": _TIME, "pin": {"type": "string"}}}),
    Operation(
        id="connectors.revoke", method="POST", path="/connectors/{id}/revoke",
        roles=SUPERADMIN_ONLY, tag="connectors",
        summary_ja="コネクタを失効（トンネルを即時切断し、以後の接続を拒否）",
        summary_en="Revoke a connector (its tunnel is cut and refused from then on)",
        handler=revoke_connector, path_params={"id": CONNECTOR_ID},
        response=CONNECTOR_SCHEMA),
)
