"""The dashboard's figures: active sessions, sign-ins and denials over time, top denial
reasons, devices failing posture, audit chain status.

Every figure is an indexed count bounded by its time window (`storage.audit_query`), so the
dashboard costs the same on a log of a thousand records or of millions. The counts come per
UTC hour from the database and are folded here into the last 24 hours and into the last 14
local days of the configured time zone (exact for zones whose offset is a whole number of
hours, as Japan's is).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sekisho.console.admin.ops import READERS, Actor, AdminContext, Call, Operation, register
from sekisho.policy.reasons import REASONS
from sekisho.storage import audit_query, device_health, sessions
from sekisho.storage.audit_log import read_head

if TYPE_CHECKING:
    from sqlalchemy import Engine

HOURS = 24
DAYS = 14
REASON_DAYS = 7
FAILING_SHOWN = 50
# Failed steps of a sign-in: password, second factor, passkey alone, identity provider.
FAILURE_TYPES = ("signin.failure", "mfa.failure", "webauthn.signin_failed", "oidc.rejected")
SERIES = ("signins", "signin_failures", "denials")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _series(counts: audit_query.HourlyCounts, start: datetime) -> dict[str, int]:
    return {name: getattr(counts, name).get(start, 0) for name in SERIES}


def fold(counts: audit_query.HourlyCounts, now: datetime, zone: ZoneInfo
         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the last `HOURS` hours, the last `DAYS` local days), oldest first, zeros included."""
    this_hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hourly = []
    for back in range(HOURS - 1, -1, -1):
        start = this_hour - timedelta(hours=back)
        hourly.append({"start": _iso(start),
                       "start_local": start.astimezone(zone).isoformat(timespec="minutes"),
                       **_series(counts, start)})
    today = now.astimezone(zone).date()
    days = [today - timedelta(days=back) for back in range(DAYS - 1, -1, -1)]
    totals: dict[Any, dict[str, int]] = {day: dict.fromkeys(SERIES, 0) for day in days}
    for name in SERIES:
        for start, count in getattr(counts, name).items():
            day = start.astimezone(zone).date()
            if day in totals:
                totals[day][name] += count
    daily = [{"day": day.isoformat(),
              "start": _iso(datetime.combine(day, datetime.min.time(), zone)),
              **totals[day]} for day in days]
    return hourly, daily


def window_start(now: datetime, zone: ZoneInfo) -> datetime:
    """The earliest instant the dashboard counts: the start of the oldest local day shown
    (or 24 hours ago, whichever is earlier), on an hour boundary."""
    first_day = now.astimezone(zone).date() - timedelta(days=DAYS - 1)
    start = min(datetime.combine(first_day, datetime.min.time(), zone).astimezone(UTC),
                now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
                - timedelta(hours=HOURS - 1))
    return start.replace(minute=0, second=0, microsecond=0)


class ClosedHours:
    """Counts of hours that ended more than `settle` ago, kept per database in this process.

    A closed hour's counts no longer change: its records were committed within moments of
    their time (the writer's lag is bounded), so a dashboard reads the 14-day window once and
    afterwards only the hours still open. The only late records are a batch held through a
    database outage; the whole window is therefore read again every `refresh`.
    """

    settle = timedelta(minutes=10)
    refresh = timedelta(hours=1)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: weakref.WeakKeyDictionary[Engine, tuple[datetime, datetime, datetime,
                                                            audit_query.HourlyCounts]] = \
            weakref.WeakKeyDictionary()

    def counts(self, engine: Engine, start: datetime, now: datetime) -> audit_query.HourlyCounts:
        until = now + timedelta(hours=1)  # the open hour in full (clock skew of writers)
        closed = (now - self.settle).replace(minute=0, second=0, microsecond=0)
        with self._lock:
            kept = self._kept.get(engine)
        if kept is not None:
            kept_start, kept_end, made, known = kept
            if kept_start <= start and made > now - self.refresh and closed >= kept_end:
                fresh = audit_query.hourly_counts(engine, kept_end, until,
                                                  failure_types=FAILURE_TYPES)
                return audit_query.HourlyCounts(*(
                    {**{hour: n for hour, n in old.items() if hour >= start}, **new}
                    for old, new in zip(known, fresh, strict=True)))
        full = audit_query.hourly_counts(engine, start, until, failure_types=FAILURE_TYPES)
        known = audit_query.HourlyCounts(*(
            {hour: n for hour, n in series.items() if hour < closed} for series in full))
        with self._lock:
            self._kept[engine] = (start, closed, now, known)
        return full

    def forget(self) -> None:
        with self._lock:
            self._kept.clear()


_CLOSED = ClosedHours()


def _reason_text(code: str, lang: str) -> tuple[str, str, str]:
    ja, en = REASONS.get(code, (code, code))
    return (ja if lang == "ja" else en), ja, en


def _verification(row: audit_query.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    document: Mapping[str, Any] = row.document()
    return {"ok": bool(document.get("ok")), "time": _iso(row.occurred_at),
            "checked": document.get("checked", 0), "head_seq": document.get("head_seq", 0),
            "first_bad_seq": document.get("first_bad_seq") or None,
            "problem": document.get("problem", ""), "by": document.get("admin", "")}


def figures(ctx: AdminContext, lang: str) -> dict[str, Any]:
    """Every figure, read in one worker thread (blocking storage calls)."""
    return figures_of(ctx.identity.engine, ctx.now,
                      ZoneInfo(ctx.identity.current_config().timezone),
                      ctx.identity.sessions.settings.idle_timeout, lang)


def figures_of(engine: Engine, now: datetime, zone: ZoneInfo, idle_timeout: float,
               lang: str) -> dict[str, Any]:
    active = sessions.count_active(engine, now, idle_timeout)
    counts = _CLOSED.counts(engine, window_start(now, zone), now)
    hourly, daily = fold(counts, now, zone)
    reasons = audit_query.top_denial_reasons(engine, now - timedelta(days=REASON_DAYS))
    failing, failing_total = device_health.failing(engine, limit=FAILING_SHOWN)
    head = read_head(engine)
    head_time = audit_query.head_time(engine, head[0]) if head else None
    last = audit_query.latest(engine, "audit.verified")
    return {
        "generated_at": _iso(now), "timezone": zone.key,
        "active_sessions": active,
        "hourly": hourly, "daily": daily,
        "top_denial_reasons": [
            dict(zip(("text", "text_ja", "text_en"), _reason_text(code, lang), strict=True),
                 reason=code, count=count) for code, count in reasons],
        "devices_failing_posture": [
            {"device_id": d.device_id, "name": d.name, "inventory_id": d.inventory_id,
             "user": d.username, "status": d.status, "verdict": d.verdict,
             "reason": d.reason, "profile": d.profile,
             "reported_at": None if d.reported_at is None else _iso(d.reported_at)}
            for d in failing],
        "devices_failing_total": failing_total,
        "audit": {"head_seq": head[0] if head else 0,
                  "head_time": None if head_time is None else _iso(head_time),
                  "last_verification": _verification(last)},
    }


async def get_dashboard(ctx: AdminContext, actor: Actor, call: Call) -> Any:
    return await asyncio.to_thread(figures, ctx, call.lang)


_COUNTS = {"type": "object", "required": ["start", *SERIES],
           "properties": {"start": {"type": "string"},
                          **{name: {"type": "integer"} for name in SERIES}}}

register(
    Operation(
        id="dashboard.get", method="GET", path="/dashboard", roles=READERS, tag="dashboard",
        summary_ja="ダッシュボードの数値 (セッション、サインイン、拒否、端末、監査チェーン)",
        summary_en="Dashboard figures: sessions, sign-ins, denials, devices, audit chain",
        handler=get_dashboard,
        response={"type": "object", "required": [
            "active_sessions", "hourly", "daily", "top_denial_reasons",
            "devices_failing_posture", "audit"], "properties": {
            "active_sessions": {"type": "integer"},
            "hourly": {"type": "array", "items": _COUNTS},
            "daily": {"type": "array", "items": _COUNTS},
            "top_denial_reasons": {"type": "array", "items": {
                "type": "object", "required": ["reason", "count"]}},
            "devices_failing_posture": {"type": "array", "items": {
                "type": "object", "required": ["device_id", "user", "verdict"]}},
            "audit": {"type": "object", "required": ["head_seq"]}}}),
)
