"""Admin operations on the audit log: search, export (CSV, JSONL), chain verification.

Every admin role reads the audit log (auditors exist for this). Search pages are newest
first with a cursor (`storage.audit_query`); an export answers at most `EXPORT_MAX` records
(the newest that match) and says so in its headers: a bigger export belongs to the CLI
(`sekisho audit export`), which streams without holding anything in memory. Verification
recomputes the whole chain from the hashed bodies, checks that the search columns still agree
with them, and is itself recorded (`AuditVerified`), so the dashboard shows when the chain
was last checked and with what result.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
from collections.abc import Iterator, Mapping
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from sekisho.audit.chain import StoredRecord, VerifyResult
from sekisho.audit.events import AuditVerified
from sekisho.audit.export import write_csv, write_jsonl
from sekisho.console.admin.ops import (
    READERS,
    Actor,
    AdminContext,
    AdminError,
    Answer,
    Call,
    Operation,
    register,
)
from sekisho.storage import audit_query

EXPORT_MAX = 100_000
PAGE_DEFAULT = 50

_TIME = {"type": "string", "maxLength": 40, "pattern": (
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:?\d{2})?$")}
_NAME = {"type": "string", "minLength": 1, "maxLength": 128}
_CODE = {"type": "string", "minLength": 1, "maxLength": 64}
FILTERS: dict[str, Any] = {
    "since": _TIME, "until": _TIME, "user": _NAME, "route": _NAME,
    "decision": {"enum": list(audit_query.DECISIONS)}, "reason": _CODE, "type": _CODE,
}
_SEARCH_QUERY = {"type": "object", "additionalProperties": False, "properties": {
    **FILTERS, "cursor": {"type": "integer", "minimum": 1},
    "limit": {"type": "integer", "minimum": 1, "maximum": audit_query.PAGE_MAX}}}
_EXPORT_QUERY = {"type": "object", "additionalProperties": False, "properties": {
    **FILTERS, "format": {"enum": ["csv", "jsonl"]}}}
EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}

_EVENT_ITEM = {"type": "object", "required": ["seq", "time", "type", "actor", "event"],
               "properties": {
                   "seq": {"type": "integer"}, "time": {"type": "string"},
                   "time_local": {"type": "string"}, "time_display": {"type": "string"},
                   "type": {"type": "string"}, "actor": {"type": "string"},
                   "route": {"type": "string"}, "decision": {"type": "string"},
                   "reasons": {"type": "array", "items": {"type": "string"}},
                   "source_ip": {"type": "string"}, "summary": {"type": "string"},
                   "hash": {"type": "string"}, "event": {"type": "object"}}}
_VERIFY_RESULT = {"type": "object", "required": ["ok", "checked", "head_seq", "first_bad_seq"],
                  "properties": {"ok": {"type": "boolean"}, "checked": {"type": "integer"},
                                 "head_seq": {"type": "integer"},
                                 "first_bad_seq": {"type": ["integer", "null"]},
                                 "problem": {"type": "string"}, "time": {"type": "string"}}}


# -- input ------------------------------------------------------------------------------------


def _zone(ctx: AdminContext) -> ZoneInfo:
    return ZoneInfo(ctx.identity.current_config().timezone)


def parse_time(value: str, zone: ZoneInfo, field: str) -> datetime:
    """ISO 8601 date or date-time; without an offset it is local time (the configured zone),
    as the console's date fields send it."""
    try:
        if len(value) == 10:
            moment = datetime.combine(date.fromisoformat(value), time())
        else:
            moment = datetime.fromisoformat(re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", value))
    except ValueError:
        raise AdminError("invalid-input", f"日時が正しくありません（{field}）: {value}",
                         f"Invalid date or time ({field}): {value}", 422) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def filters_of(ctx: AdminContext, query: Mapping[str, Any]) -> audit_query.Filters:
    zone = _zone(ctx)
    since = parse_time(query["since"], zone, "since") if query.get("since") else None
    until = parse_time(query["until"], zone, "until") if query.get("until") else None
    if since is not None and until is not None and since >= until:
        raise AdminError("invalid-input", "開始日時は終了日時より前にしてください。",
                         "'since' must be before 'until'.", 422)
    if query.get("reason") and query.get("decision") == "allow":
        raise AdminError(
            "invalid-input",
            "理由で検索できるのは拒否と失敗の記録です（許可の理由は索引にありません）。",
            "Reasons are searchable for denials and failures only (the reasons of allowed "
            "requests are not indexed).", 422)
    return audit_query.Filters(
        since=since, until=until, actor=query.get("user") or None,
        route=query.get("route") or None, decision=query.get("decision") or None,
        reason=query.get("reason") or None, event_type=query.get("type") or None)


# -- output -----------------------------------------------------------------------------------

_LABELS: dict[str, tuple[str, str]] = {
    "action": ("操作", "action"), "user": ("利用者", "user"), "admin": ("管理者", "admin"),
    "group": ("グループ", "group"), "device": ("端末", "device"),
    "session": ("セッション", "session"),
    "reason": ("理由", "reason"), "method": ("方式", "method"), "methods": ("方式", "methods"),
    "idp": ("IdP", "IdP"), "kind": ("種類", "kind"), "profile": ("プロファイル", "profile"),
    "failed": ("不合格", "failed"), "source": ("設定", "source"), "kid": ("鍵", "key"),
}


def summary(document: Mapping[str, Any], lang: str) -> str:
    """One line for the listing: the request for decisions, the main fields otherwise."""
    if document.get("event_type") == "access.decision":
        return (f"{document.get('method', '')} {document.get('path', '')} → "
                f"{document.get('status', '')}")
    parts = []
    for key, (ja, en) in _LABELS.items():
        value = document.get(key)
        if value in (None, "", [], ()):
            continue
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{ja if lang == 'ja' else en}: {text[:80]}")
    return "; ".join(parts[:4])


def _reasons_of(document: Mapping[str, Any]) -> list[str]:
    found = document.get("reasons")
    listed = [str(item) for item in found] if isinstance(found, list) else []
    single = document.get("reason")
    return listed + ([str(single)] if isinstance(single, str) and single else [])


def item(row: audit_query.Row, zone: ZoneInfo, lang: str) -> dict[str, Any]:
    document = row.document()
    local = row.occurred_at.astimezone(zone)
    return {
        "seq": row.seq,
        "time": row.occurred_at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "time_local": local.isoformat(timespec="seconds"),
        "time_display": f"{local.year}年{local.month}月{local.day}日 {local:%H:%M:%S}",
        "type": row.event_type, "actor": row.actor, "route": row.route,
        "decision": row.decision, "reasons": _reasons_of(document),
        "source_ip": str(document.get("source_ip", "")), "summary": summary(document, lang),
        "hash": row.hash, "event": document,
    }


def _stored(row: audit_query.Row) -> StoredRecord:
    return StoredRecord(row.seq, row.body, row.prev_hash, row.hash, row.event_type,
                        row.occurred_at, row.actor)


# -- operations -------------------------------------------------------------------------------


async def search_events(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    filters = filters_of(ctx, call.query)
    cursor = call.query.get("cursor")
    limit = int(call.query.get("limit", PAGE_DEFAULT))
    rows, next_cursor = await asyncio.to_thread(
        audit_query.search, ctx.identity.engine, filters,
        before=None if cursor is None else int(cursor), limit=limit)
    zone = _zone(ctx)
    return {"events": [item(row, zone, call.lang) for row in rows],
            "next_cursor": next_cursor}


def _export(ctx: AdminContext, filters: audit_query.Filters, kind: str) -> Answer:
    rows = audit_query.iterate(ctx.identity.engine, filters)
    taken: list[bool] = []

    def capped() -> Iterator[StoredRecord]:
        for count, row in enumerate(rows):
            if count == EXPORT_MAX:
                taken.append(True)  # one more exists: the export is cut
                return
            yield _stored(row)

    out = io.StringIO(newline="")
    written = (write_csv if kind == "csv" else write_jsonl)(capped(), out)
    return Answer(out.getvalue().encode("utf-8"), media_type=EXPORT_TYPES[kind], headers=(
        ("Content-Disposition", f'attachment; filename="sekisho-audit.{kind}"'),
        ("X-Sekisho-Export-Limit", str(EXPORT_MAX)),
        ("X-Sekisho-Export-Records", str(written)),
        ("X-Sekisho-Export-Truncated", "true" if taken else "false"),
    ))


async def export_events(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    filters = filters_of(ctx, call.query)
    kind = str(call.query.get("format", "csv"))
    return await asyncio.to_thread(_export, ctx, filters, kind)


# One verification at a time per process: each reads the whole log (resource exhaustion by
# a script pressing the button in a loop).
_VERIFYING = threading.Lock()


def verify_log(ctx: AdminContext) -> tuple[VerifyResult, int]:
    """(result, head seq) of the whole log: chain and search columns."""
    return audit_query.verify_stored(ctx.identity.engine)


async def verify_chain(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    if not _VERIFYING.acquire(blocking=False):
        raise AdminError("verification-running",
                         "検証を実行中です。終わってからもう一度お試しください。",
                         "A verification is already running; try again when it has finished.",
                         409)
    try:
        result, head_seq = await asyncio.to_thread(verify_log, ctx)
    finally:
        _VERIFYING.release()
    await ctx.identity.audit.append(AuditVerified(
        admin=actor.name, ok=result.ok, checked=result.checked, head_seq=head_seq,
        first_bad_seq=result.first_broken_seq or 0, problem=result.problem[:200],
        source_ip=actor.source_ip))
    return {"ok": result.ok, "checked": result.checked, "head_seq": head_seq,
            "first_bad_seq": result.first_broken_seq, "problem": result.problem,
            "time": ctx.now.isoformat()}


register(
    Operation(
        id="audit.search", method="GET", path="/audit/events", roles=READERS, tag="audit",
        summary_ja="監査ログを検索 (新しい順、カーソルでページ送り)",
        summary_en="Search the audit log, newest first, paged by cursor",
        handler=search_events, query=_SEARCH_QUERY,
        response={"type": "object", "required": ["events", "next_cursor"], "properties": {
            "events": {"type": "array", "items": _EVENT_ITEM},
            "next_cursor": {"type": ["integer", "null"]}}}),
    Operation(
        id="audit.export", method="GET", path="/audit/export", roles=READERS, tag="audit",
        summary_ja=f"監査ログを CSV または JSONL で出力 (新しい順に最大 {EXPORT_MAX:,} 件)",
        summary_en=f"Export the audit log as CSV or JSONL (the newest {EXPORT_MAX:,} at most)",
        handler=export_events, query=_EXPORT_QUERY, produces=tuple(EXPORT_TYPES.values()),
        response={"type": "string"}),
    Operation(
        id="audit.verify", method="POST", path="/audit/verify", roles=READERS, tag="audit",
        summary_ja="ハッシュチェーンを検証 (結果は監査ログに記録)",
        summary_en="Verify the hash chain (the result is recorded in the audit log)",
        handler=verify_chain, response=_VERIFY_RESULT),
)
