"""Admin operations on the device registry: list, detail with posture history, enrolment
codes, suspend, resume and revoke (superadmin, helpdesk).

The rules are `devices.enrolment`'s (shared with `sekisho device …`): a code is random,
returned once and stored as its SHA-256; a status change is announced on the change feed in
its own transaction, so every gateway process re-checks the device's open connections at
once. A device's history is read from the audit log, so it needs no table of its own and
cannot disagree with it: the owner's enrolment, posture and EDR events on the actor index,
and the administrators' status changes among the newest `device.changed` events (rare: admin
actions), newest first.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sekisho.console.admin.ops import (
    MANAGERS,
    Actor,
    AdminContext,
    AdminError,
    Call,
    Operation,
    register,
)
from sekisho.console.admin.people import (
    DEVICE_SCHEMA,
    LIMIT,
    USERNAME,
    AuditFn,
    admin_settings,
    blocking,
    device_json,
    guard_target,
    iso,
)
from sekisho.devices import enrolment
from sekisho.storage import audit_recent, posture, users
from sekisho.storage import devices as store

HISTORY = 50  # events shown
_OWNER_TYPES = ("device.enrolled", "device.posture", "device.compromised")  # actor = owner
_SCAN = 500  # events read to find this device's HISTORY (a user has few devices)
_DEVICE_PATH = {"id": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,64}$"}}
_REASON_BODY = {"type": ["object", "null"], "additionalProperties": False, "properties": {
    "reason": {"type": "string", "maxLength": 128}}}


def _owned(ctx: AdminContext, actor: Actor, device_id: str) -> store.DeviceRecord:
    """The device, after the helpdesk-on-admin rule applied to its owner (in the thread)."""
    engine = ctx.identity.engine
    device = store.require_device(engine, device_id)
    guard_target(admin_settings(ctx), actor, device.username,
                 users.groups_of_user(engine, device.user_id))
    return device


async def list_devices(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    query = call.query
    cursor = query.get("cursor")

    def work(_: AuditFn) -> tuple[list[store.DeviceRecord], int | None]:
        user_id = None
        if query.get("user"):
            user_id = users.require_user(ctx.identity.engine, str(query["user"])).id
        return store.page_devices(ctx.identity.engine, user_id=user_id,
                                  status=query.get("status"),
                                  before=int(cursor) if cursor else None,
                                  limit=int(query.get("limit", 50)))

    page, next_cursor = await blocking(ctx, work)
    return {"devices": [device_json(d) for d in page],
            "next_cursor": None if next_cursor is None else str(next_cursor)}


def _history_item(body: dict[str, Any]) -> dict[str, Any]:
    keep = ("event_type", "occurred_at", "profile", "failed", "os", "source_ip", "action",
            "details", "admin", "reason", "name", "serial")
    return {key: body[key] for key in keep if key in body}


async def get_device(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    engine = ctx.identity.engine
    device_id = call.path["id"]

    def work(_: AuditFn) -> dict[str, Any]:
        device = store.require_device(engine, device_id)
        latest = posture.latest(engine, device.device_id)
        history = []
        records = [*audit_recent.recent_by_actor(engine, device.username, _OWNER_TYPES,
                                                 limit=_SCAN),
                   *audit_recent.recent_of_type(engine, "device.changed", limit=_SCAN)]
        for record in sorted(records, key=lambda r: r.seq, reverse=True):
            body = json.loads(record.body)
            if body.get("device") == device.device_id:
                history.append(_history_item(body))
                if len(history) >= HISTORY:
                    break
        return {"device": device_json(device),
                "posture": None if latest is None else {
                    "profile": latest.profile, "reported_at": iso(latest.reported_at),
                    "received_at": iso(latest.received_at),
                    "report": json.loads(latest.report)},
                "posture_history": history}

    return await blocking(ctx, work)


async def create_code(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    body: dict[str, Any] = call.body
    ttl = timedelta(hours=int(body.get("expires_in_hours", 24)))
    engine = ctx.identity.engine

    def work(audit: AuditFn) -> tuple[str, str, str]:
        user = users.require_user(engine, body["user"])
        guard_target(admin_settings(ctx), actor, user.username,
                     users.groups_of_user(engine, user.id))
        code, event = enrolment.create_code(engine, user.username, actor.name, ttl,
                                            now=ctx.now)
        audit(event)
        return code, event.user, event.expires_at

    code, username, expires_at = await blocking(ctx, work)
    # The code is shown once: only its SHA-256 is stored, and the audit log keeps 8 digits.
    return {"code": code, "user": username, "expires_at": expires_at}


def _status_handler(status: str) -> Any:
    async def change(ctx: AdminContext, actor: Actor, call: Call) -> Any:
        reason = str((call.body or {}).get("reason", ""))

        def work(audit: AuditFn) -> tuple[store.DeviceRecord, bool]:
            device = _owned(ctx, actor, call.path["id"])
            if status == "active" and device.status == "revoked":
                raise AdminError("device-revoked",
                                 "失効した端末は再開できません。再登録してください。",
                                 "A revoked device cannot be resumed; enrol it again.", 409)
            device, event = enrolment.change_status(ctx.identity.engine, device.device_id,
                                                    status, admin=actor.name, reason=reason,
                                                    now=ctx.now)
            if event is not None:
                audit(event)
            return device, event is not None

        device, changed = await blocking(ctx, work)
        if changed and ctx.identity.device_trust is not None:
            ctx.identity.device_trust.evict(device.device_id)  # this process: at once
        return {"device": device_json(device), "changed": changed}

    return change


_STATUS_ANSWER = {"type": "object", "required": ["device", "changed"], "properties": {
    "device": DEVICE_SCHEMA, "changed": {"type": "boolean"}}}

register(
    Operation(
        id="devices.list", method="GET", path="/devices", roles=MANAGERS, tag="devices",
        summary_ja="端末の一覧 (新しい順・利用者と状態で絞り込み)",
        summary_en="List devices, newest first (filter by user and status)",
        handler=list_devices,
        query={"type": "object", "properties": {
            "user": USERNAME, "status": {"enum": list(store.STATUSES)},
            "cursor": {"type": "string", "pattern": "^[0-9]{1,18}$"}, "limit": LIMIT}},
        response={"type": "object", "required": ["devices", "next_cursor"], "properties": {
            "devices": {"type": "array", "items": DEVICE_SCHEMA},
            "next_cursor": {"type": ["string", "null"]}}}),
    Operation(
        id="devices.get", method="GET", path="/devices/{id}", roles=MANAGERS, tag="devices",
        summary_ja="端末の詳細 (最新の状態報告と履歴)",
        summary_en="A device with its latest posture report and history",
        handler=get_device, path_params=_DEVICE_PATH,
        response={"type": "object", "required": ["device", "posture", "posture_history"]}),
    Operation(
        id="devices.create_code", method="POST", path="/devices/enrolment-codes",
        roles=MANAGERS, tag="devices",
        summary_ja="一回限りの登録コードを作成 (コードはこの応答で一度だけ表示)",
        summary_en="Create a one-time enrolment code (returned once, in this answer)",
        handler=create_code, status=201,
        body={"type": "object", "required": ["user"], "additionalProperties": False,
              "properties": {"user": USERNAME,
                             "expires_in_hours": {"type": "integer", "minimum": 1,
                                                  "maximum": 720}}},
        response={"type": "object", "required": ["code", "user", "expires_at"]}),
    Operation(
        id="devices.suspend", method="POST", path="/devices/{id}/suspend", roles=MANAGERS,
        tag="devices", summary_ja="端末を停止 (CRL に掲載、再開できる)",
        summary_en="Suspend a device (listed in the CRL; can be resumed)",
        handler=_status_handler("suspended"), path_params=_DEVICE_PATH, body=_REASON_BODY,
        response=_STATUS_ANSWER),
    Operation(
        id="devices.resume", method="POST", path="/devices/{id}/resume", roles=MANAGERS,
        tag="devices", summary_ja="停止した端末を再開", summary_en="Resume a suspended device",
        handler=_status_handler("active"), path_params=_DEVICE_PATH, body=_REASON_BODY,
        response=_STATUS_ANSWER),
    Operation(
        id="devices.revoke", method="POST", path="/devices/{id}/revoke", roles=MANAGERS,
        tag="devices", summary_ja="端末を失効 (取り消せません)",
        summary_en="Revoke a device (final)", handler=_status_handler("revoked"),
        path_params=_DEVICE_PATH, body=_REASON_BODY, response=_STATUS_ANSWER),
)
