"""`time: {weekdays, hours, dates, holidays, timezone}` — when the request is made.

Everything is compiled once: weekday names to a set of numbers, `"08:30-17:15"` to minute
ranges, dates to `date` values, the timezone to a `ZoneInfo` (loaded from the system time
zone database at compile time; evaluation does no I/O). At request time `Facts.now` (UTC)
is converted to local time and each given key must hold. Hours are half-open
(`08:30-17:15` covers 08:30:00 up to 17:14:59) and may cross midnight (`22:00-06:00`);
weekdays, dates and holidays are always the local calendar day of the moment itself.

`Facts.now` must carry its UTC offset: a naive time would be read as the server's own zone
and shift every window by hours, so it is refused (the PDP denies with `policy-error`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sekisho.policy.criteria._base import Criterion, Predicate, expect, string_list, type_name
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOLIDAYS = ("ignore", "exclude", "only")
DEFAULT_TIMEZONE = "Asia/Tokyo"
KEYS = ("weekdays", "hours", "dates", "holidays", "timezone")
_HOURS = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# An IANA name such as "Asia/Tokyo". "localtime" and friends are refused: they mean whatever
# zone the server happens to be set to, so the same policy would differ between servers.
_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$")
_HOST_DEPENDENT = frozenset({"localtime", "posixrules", "Factory"})


def _weekday(value: str, path: Path) -> str:
    if value.lower() not in WEEKDAYS:
        raise expect(
            path,
            f"unknown weekday {value!r} (expected one of: {', '.join(WEEKDAYS)})",
            f"不明な曜日 {value!r} です（{', '.join(WEEKDAYS)} のいずれか）",
        )
    return value.lower()


def _minute(hour: str, minute: str, end: bool) -> int | None:
    h, m = int(hour), int(minute)
    if m > 59 or h > 24 or (h == 24 and (m != 0 or not end)):
        return None
    return h * 60 + m


def _hours(value: str, path: Path) -> tuple[int, int]:
    match = _HOURS.match(value)
    start = end = None
    if match:
        start = _minute(match.group(1), match.group(2), end=False)
        end = _minute(match.group(3), match.group(4), end=True)
    if start is None or end is None or start == end:
        raise expect(
            path,
            f"expected a time range 'HH:MM-HH:MM' with different start and end, 00:00-23:59 "
            f"(24:00 only as the end), like '08:30-17:15' or '22:00-06:00', got {value!r}",
            f"'08:30-17:15' や '22:00-06:00' のような 'HH:MM-HH:MM' 形式の時間帯を指定して"
            f"ください（00:00〜23:59、24:00 は終了のみ、開始と終了は別の時刻）。指定値: {value!r}",
        )
    return start, end


def _date(value: Any, path: Path) -> date:
    if isinstance(value, str) and _ISO_DATE.match(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    elif isinstance(value, date) and not isinstance(value, datetime):
        return value
    raise expect(
        path,
        f"expected a date like 2026-04-01, got {value!r}",
        f"2026-04-01 のような日付を指定してください。指定値: {value!r}",
    )


def _dates(argument: Any, path: Path) -> tuple[date, date]:
    if not isinstance(argument, Mapping) or not argument:
        raise expect(
            path,
            f"expected a mapping with 'from' and/or 'until', got {type_name(argument)}",
            f"'from' または 'until' を持つマッピングを指定してください"
            f"（指定値の型: {type_name(argument)}）",
        )
    for key in argument:
        if key not in ("from", "until"):
            raise expect(
                (*path, str(key)),
                f"unknown key {key!r} (expected 'from' and/or 'until')",
                f"不明なキー {key!r} です（'from' または 'until'）",
            )
    first = _date(argument["from"], (*path, "from")) if "from" in argument else date.min
    last = _date(argument["until"], (*path, "until")) if "until" in argument else date.max
    if first > last:
        raise expect(
            path,
            f"'from' ({first}) is after 'until' ({last}); expected from <= until",
            f"'from' ({first}) が 'until' ({last}) より後です（from ≤ until にしてください）",
        )
    return first, last


def _choice(argument: Any, path: Path, allowed: tuple[str, ...], en: str, ja: str) -> str:
    if not isinstance(argument, str) or argument not in allowed:
        raise expect(
            path,
            f"expected {en} ({', '.join(allowed)}), got {argument!r}",
            f"{ja}（{', '.join(allowed)} のいずれか）を指定してください。指定値: {argument!r}",
        )
    return argument


def _zone(argument: Any, path: Path) -> ZoneInfo:
    problem = ""
    if (
        not isinstance(argument, str)
        or not _ZONE_NAME.match(argument)
        or argument in _HOST_DEPENDENT
    ):
        problem = "not an IANA time zone name"
    else:
        try:
            return ZoneInfo(argument)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            problem = "not found in the time zone database"
    raise expect(
        path,
        f"expected an IANA time zone name like 'Asia/Tokyo', got {argument!r} ({problem})",
        f"'Asia/Tokyo' のような IANA タイムゾーン名を指定してください。指定値: {argument!r}",
    )


def _compile(argument: Any, path: Path) -> Predicate:
    if not isinstance(argument, Mapping):
        raise expect(
            path,
            f"expected a mapping with weekdays, hours and/or dates, got {type_name(argument)}",
            f"weekdays・hours・dates のいずれかを持つマッピングを指定してください"
            f"（指定値の型: {type_name(argument)}）",
        )
    for key in argument:
        if key not in KEYS:
            raise expect(
                (*path, str(key)),
                f"unknown key {key!r} (expected one of: {', '.join(KEYS)})",
                f"不明なキー {key!r} です（{', '.join(KEYS)} のいずれか）",
            )
    if not any(key in argument for key in ("weekdays", "hours", "dates")):
        raise expect(
            path,
            "expected at least one of 'weekdays', 'hours' or 'dates'",
            "'weekdays'・'hours'・'dates' の少なくとも 1 つを指定してください",
        )
    days: frozenset[int] | None = None
    if "weekdays" in argument:
        names = string_list(
            argument["weekdays"], (*path, "weekdays"), "a weekday name", "曜日名", _weekday
        )
        days = frozenset(WEEKDAYS.index(name) for name in names)
    ranges: tuple[tuple[int, int], ...] | None = None
    if "hours" in argument:
        texts = string_list(argument["hours"], (*path, "hours"), "a time range", "時間帯")
        single = isinstance(argument["hours"], str)
        ranges = tuple(
            _hours(text, (*path, "hours") if single else (*path, "hours", index))
            for index, text in enumerate(texts)
        )
    first, last = (
        _dates(argument["dates"], (*path, "dates")) if "dates" in argument else (date.min, date.max)
    )
    holidays = _choice(
        argument.get("holidays", "ignore"),
        (*path, "holidays"),
        HOLIDAYS,
        "how to treat holidays",
        "祝日の扱い",
    )
    zone = _zone(argument.get("timezone", DEFAULT_TIMEZONE), (*path, "timezone"))
    check_dates = "dates" in argument

    def time(facts: Facts) -> bool:
        now = facts.now
        if now.utcoffset() is None:
            raise ValueError("Facts.now must be timezone-aware (UTC)")
        local = now.astimezone(zone)
        if days is not None and local.weekday() not in days:
            return False
        if ranges is not None:
            minute = local.hour * 60 + local.minute
            for start, end in ranges:
                if (start <= minute < end) if start < end else (minute >= start or minute < end):
                    break
            else:
                return False
        if check_dates or holidays != "ignore":
            day = local.date()
            if check_dates and not first <= day <= last:
                return False
            if holidays == "exclude":
                return day not in facts.holidays
            if holidays == "only":
                return day in facts.holidays
        return True

    return time


CRITERION = Criterion(
    name="time",
    passed_reason="time-allowed",
    failed_reason="time-denied",
    summary_ja="リクエストの日時 (既定は日本時間) が指定の曜日・時間帯・期間に入っていれば"
    "一致します。祝日は除く・祝日のみ・区別しないを選べます。",
    summary_en="Matches when the request's local time (Asia/Tokyo by default) falls in the "
    "given weekdays, hours and dates; holidays can be excluded, required or ignored.",
    compile=_compile,
)
