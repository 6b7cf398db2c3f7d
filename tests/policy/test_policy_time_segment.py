"""The `time` and `segment` criteria: local-time windows, edges, holidays, every bad argument."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from sekisho.policy import POLICY_ERROR, PolicyError, compile_policy, evaluate
from sekisho.policy.facts import Facts

MakeFacts = Callable[..., Facts]
JST = timezone(timedelta(hours=9))
OFFICE = "08:30-17:15"
NIGHT = "22:00-06:00"
FISCAL_2026 = {"from": date(2026, 4, 1), "until": date(2027, 3, 31)}
BUNKA_NO_HI = date(2026, 11, 3)  # a Tuesday


def jst(*args: int) -> datetime:
    """A Tokyo wall-clock time, expressed in UTC as the gateway passes `Facts.now`."""
    return datetime(*args, tzinfo=JST).astimezone(UTC)  # type: ignore[misc]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def decide(facts: MakeFacts, argument: Any, now: datetime, **overrides: Any) -> bool:
    policy = compile_policy("t", {"allow": {"and": [{"time": argument}]}})
    decision = evaluate(facts(now=now, **overrides), policy)
    assert decision.reasons == (("time-allowed",) if decision.allow else ("time-denied",))
    return decision.allow


# (argument, now in UTC, expected match)
WEEKDAYS: list[tuple[Any, datetime, bool]] = [
    # 2026-11-29 (Sunday) 23:30 UTC is Monday 2026-11-30 08:30 in Tokyo.
    ({"weekdays": ["mon"]}, utc(2026, 11, 29, 23, 30), True),
    ({"weekdays": ["sun"]}, utc(2026, 11, 29, 23, 30), False),
    ({"weekdays": ["sun"]}, utc(2026, 11, 29, 14, 59, 59), True),  # Sunday 23:59:59 JST
    ({"weekdays": ["mon"]}, utc(2026, 11, 29, 14, 59, 59), False),
    ({"weekdays": ["mon"]}, utc(2026, 11, 29, 15, 0), True),  # Monday 00:00 JST
    ({"weekdays": "Mon"}, utc(2026, 11, 29, 15, 0), True),  # names are case-insensitive
    ({"weekdays": ["mon", "tue", "wed", "thu", "fri"]}, jst(2026, 11, 28, 12, 0), False),  # Sat
    ({"weekdays": ["sat", "sun"]}, jst(2026, 11, 28, 12, 0), True),
    (
        {"weekdays": ["mon", "tue", "wed", "thu", "fri"], "hours": OFFICE},
        utc(2026, 11, 29, 23, 30),
        True,
    ),
]

HOURS: list[tuple[Any, datetime, bool]] = [
    # Start inclusive, end exclusive, at second resolution.
    ({"hours": OFFICE}, jst(2026, 11, 30, 8, 30, 0), True),
    ({"hours": OFFICE}, jst(2026, 11, 30, 8, 29, 59), False),
    ({"hours": OFFICE}, jst(2026, 11, 30, 17, 14, 59), True),
    ({"hours": OFFICE}, jst(2026, 11, 30, 17, 15, 0), False),
    ({"hours": OFFICE}, jst(2026, 11, 30, 3, 0), False),
    ({"hours": "8:30-17:15"}, jst(2026, 11, 30, 8, 30), True),  # one-digit hour accepted
    ({"hours": "17:00-24:00"}, jst(2026, 11, 30, 23, 59, 59), True),
    ({"hours": "17:00-24:00"}, jst(2026, 12, 1, 0, 0), False),
    ({"hours": "00:00-24:00"}, jst(2026, 12, 1, 0, 0), True),
    ({"hours": ["08:30-12:00", "13:00-17:15"]}, jst(2026, 11, 30, 11, 59), True),
    ({"hours": ["08:30-12:00", "13:00-17:15"]}, jst(2026, 11, 30, 12, 30), False),
    ({"hours": ["08:30-12:00", "13:00-17:15"]}, jst(2026, 11, 30, 13, 0), True),
    # Over midnight.
    ({"hours": NIGHT}, jst(2026, 11, 30, 22, 0), True),
    ({"hours": NIGHT}, jst(2026, 11, 30, 21, 59, 59), False),
    ({"hours": NIGHT}, jst(2026, 11, 30, 23, 59, 59), True),
    ({"hours": NIGHT}, jst(2026, 12, 1, 0, 0), True),
    ({"hours": NIGHT}, jst(2026, 12, 1, 5, 59, 59), True),
    ({"hours": NIGHT}, jst(2026, 12, 1, 6, 0), False),
    ({"hours": NIGHT}, jst(2026, 12, 1, 12, 0), False),
    # Weekdays are the local date of the moment itself: 02:00 Tuesday is Tuesday.
    ({"weekdays": ["mon"], "hours": NIGHT}, jst(2026, 11, 30, 2, 0), True),
    ({"weekdays": ["mon"], "hours": NIGHT}, jst(2026, 11, 30, 23, 0), True),
    ({"weekdays": ["mon"], "hours": NIGHT}, jst(2026, 12, 1, 2, 0), False),
    ({"weekdays": ["mon"], "hours": NIGHT}, jst(2026, 11, 29, 23, 0), False),
]

DATES: list[tuple[Any, datetime, bool]] = [
    ({"dates": FISCAL_2026}, jst(2026, 4, 1, 0, 0), True),
    ({"dates": FISCAL_2026}, utc(2026, 3, 31, 15, 0), True),  # the same instant
    ({"dates": FISCAL_2026}, jst(2026, 3, 31, 23, 59, 59), False),
    ({"dates": FISCAL_2026}, utc(2026, 3, 31, 14, 59, 59), False),
    ({"dates": FISCAL_2026}, jst(2027, 3, 31, 23, 59, 59), True),
    ({"dates": FISCAL_2026}, jst(2027, 4, 1, 0, 0), False),
    ({"dates": {"from": "2026-04-01", "until": "2027-03-31"}}, jst(2026, 10, 1, 9, 0), True),
    ({"dates": {"from": "2026-04-01"}}, jst(2099, 1, 1, 9, 0), True),
    ({"dates": {"from": "2026-04-01"}}, jst(2026, 3, 31, 9, 0), False),
    ({"dates": {"until": date(2026, 3, 31)}}, jst(2026, 3, 31, 23, 59), True),
    ({"dates": {"until": date(2026, 3, 31)}}, jst(2026, 4, 1, 0, 0), False),
    ({"dates": {"from": "2026-11-30", "until": "2026-11-30"}}, utc(2026, 11, 29, 23, 30), True),
]

HOLIDAYS: list[tuple[Any, datetime, frozenset[date], bool]] = [
    (
        {"hours": OFFICE, "holidays": "exclude"},
        jst(2026, 11, 3, 9, 0),
        frozenset({BUNKA_NO_HI}),
        False,
    ),
    (
        {"hours": OFFICE, "holidays": "exclude"},
        jst(2026, 11, 4, 9, 0),
        frozenset({BUNKA_NO_HI}),
        True,
    ),
    ({"hours": OFFICE, "holidays": "exclude"}, jst(2026, 11, 3, 9, 0), frozenset(), True),
    ({"hours": OFFICE, "holidays": "only"}, jst(2026, 11, 3, 9, 0), frozenset({BUNKA_NO_HI}), True),
    (
        {"hours": OFFICE, "holidays": "only"},
        jst(2026, 11, 4, 9, 0),
        frozenset({BUNKA_NO_HI}),
        False,
    ),
    ({"hours": OFFICE, "holidays": "only"}, jst(2026, 11, 3, 9, 0), frozenset(), False),
    (
        {"hours": OFFICE, "holidays": "only"},
        jst(2026, 11, 3, 18, 0),
        frozenset({BUNKA_NO_HI}),
        False,
    ),  # the other keys still apply
    (
        {"hours": OFFICE, "holidays": "ignore"},
        jst(2026, 11, 3, 9, 0),
        frozenset({BUNKA_NO_HI}),
        True,
    ),
    ({"hours": OFFICE}, jst(2026, 11, 3, 9, 0), frozenset({BUNKA_NO_HI}), True),  # default
    # Holidays are local dates: 01:00 on 3 Nov in Tokyo is still 2 Nov in UTC.
    (
        {"hours": NIGHT, "holidays": "exclude"},
        jst(2026, 11, 3, 1, 0),
        frozenset({BUNKA_NO_HI}),
        False,
    ),
    (
        {"hours": "16:00-17:00", "holidays": "exclude", "timezone": "UTC"},
        jst(2026, 11, 3, 1, 0),
        frozenset({BUNKA_NO_HI}),
        True,
    ),
]

ZONES: list[tuple[Any, datetime, bool]] = [
    # Europe/Berlin keeps office hours in local time across summer time.
    ({"hours": OFFICE, "timezone": "Europe/Berlin"}, utc(2026, 7, 1, 6, 30), True),
    ({"hours": OFFICE, "timezone": "Europe/Berlin"}, utc(2026, 7, 1, 6, 29), False),
    ({"hours": OFFICE, "timezone": "Europe/Berlin"}, utc(2026, 1, 15, 7, 30), True),
    ({"hours": OFFICE, "timezone": "Europe/Berlin"}, utc(2026, 1, 15, 7, 29), False),
    # 03:00 UTC Monday is still Sunday evening in New York.
    ({"weekdays": ["sun"], "timezone": "America/New_York"}, utc(2026, 11, 30, 3, 0), True),
    ({"weekdays": ["mon"], "timezone": "America/New_York"}, utc(2026, 11, 30, 3, 0), False),
    ({"weekdays": ["mon"], "timezone": "UTC"}, utc(2026, 11, 30, 3, 0), True),
    ({"hours": OFFICE, "timezone": "UTC"}, utc(2026, 11, 30, 23, 30), False),
    ({"hours": OFFICE, "timezone": "Asia/Tokyo"}, utc(2026, 11, 29, 23, 30), True),
]


@pytest.mark.parametrize(("argument", "now", "expected"), WEEKDAYS + HOURS + DATES + ZONES)
def test_time_windows(make_facts: MakeFacts, argument: Any, now: datetime, expected: bool) -> None:
    assert decide(make_facts, argument, now) is expected


@pytest.mark.parametrize(("argument", "now", "holidays", "expected"), HOLIDAYS)
def test_time_holidays(
    make_facts: MakeFacts, argument: Any, now: datetime, holidays: frozenset[date], expected: bool
) -> None:
    assert decide(make_facts, argument, now, holidays=holidays) is expected


def test_time_refuses_a_naive_clock(make_facts: MakeFacts) -> None:
    """A naive `now` would be read in the server's zone and shift every window: fail closed."""
    policy = compile_policy("t", {"allow": {"and": [{"time": {"hours": "00:00-24:00"}}]}})
    naive = datetime(2026, 11, 30, 9, 0)
    assert evaluate(make_facts(now=naive), policy) == POLICY_ERROR


def test_time_in_a_deny_block_closes_the_night(make_facts: MakeFacts) -> None:
    policy = compile_policy(
        "night",
        {
            "allow": {"or": [{"always": True}]},
            "deny": {"or": [{"time": {"hours": NIGHT}}]},
        },
    )
    night = evaluate(make_facts(now=jst(2026, 11, 30, 23, 0)), policy)
    assert (night.allow, night.reasons) == (False, ("time-denied",))
    assert evaluate(make_facts(now=jst(2026, 11, 30, 9, 0)), policy).allow is True


@pytest.mark.parametrize(
    ("segment", "argument", "expected"),
    [
        ("internet", "internet", True),
        ("lgwan", "internet", False),
        ("lgwan", ["internet", "lgwan"], True),
        ("mynumber", ["internet", "lgwan"], False),
        ("mynumber", "mynumber", True),
    ],
)
def test_segment(make_facts: MakeFacts, segment: str, argument: Any, expected: bool) -> None:
    policy = compile_policy("t", {"allow": {"and": [{"segment": argument}]}})
    decision = evaluate(make_facts(segment=segment), policy)
    assert decision.allow is expected
    assert decision.reasons == (("segment-allowed",) if expected else ("segment-denied",))


def test_segment_deny_wins_over_identity(make_facts: MakeFacts) -> None:
    policy = compile_policy(
        "no-mynumber",
        {
            "allow": {"and": [{"group": "staff"}]},
            "deny": {"or": [{"segment": "mynumber"}]},
        },
    )
    assert evaluate(make_facts(segment="mynumber"), policy).reasons == ("segment-denied",)
    assert evaluate(make_facts(segment="lgwan"), policy).allow is True


# (argument, path below the criterion, a fragment of the English message)
TIME_ERRORS: list[tuple[Any, tuple[str | int, ...], str]] = [
    ("08:30-17:15", (), "expected a mapping with weekdays, hours and/or dates, got a string"),
    (None, (), "got nothing (null)"),
    ({}, (), "at least one of 'weekdays', 'hours' or 'dates'"),
    ({"holidays": "exclude", "timezone": "Asia/Tokyo"}, (), "at least one of"),
    (
        {"weekdays": ["mon"], "hour": OFFICE},
        ("hour",),
        "unknown key 'hour' (expected one of: weekdays, hours, dates, holidays, timezone)",
    ),
    (
        {"weekdays": ["monday"]},
        ("weekdays", 0),
        "unknown weekday 'monday' (expected one of: mon, tue, wed, thu, fri, sat, sun)",
    ),
    ({"weekdays": ["mon", "funday"]}, ("weekdays", 1), "unknown weekday 'funday'"),
    ({"weekdays": "月"}, ("weekdays",), "unknown weekday"),
    ({"weekdays": []}, ("weekdays",), "got an empty list"),
    ({"weekdays": [1]}, ("weekdays", 0), "non-empty string"),
    ({"weekdays": {"mon": True}}, ("weekdays",), "got a mapping"),
    ({"hours": "25:00-26:00"}, ("hours",), "expected a time range 'HH:MM-HH:MM'"),
    ({"hours": "08:30-25:00"}, ("hours",), "got '08:30-25:00'"),
    ({"hours": "08:60-09:00"}, ("hours",), "got '08:60-09:00'"),
    ({"hours": "24:00-06:00"}, ("hours",), "24:00 only as the end"),
    ({"hours": "08:30-24:01"}, ("hours",), "got '08:30-24:01'"),
    ({"hours": "0830-1715"}, ("hours",), "'HH:MM-HH:MM'"),
    ({"hours": "08:30 - 17:15"}, ("hours",), "'HH:MM-HH:MM'"),
    ({"hours": "08:30-17:15:00"}, ("hours",), "'HH:MM-HH:MM'"),
    ({"hours": "08:30-08:30"}, ("hours",), "different start and end"),
    ({"hours": "08:30"}, ("hours",), "'HH:MM-HH:MM'"),
    ({"hours": ["08:30-12:00", "13:00"]}, ("hours", 1), "got '13:00'"),
    ({"hours": 510}, ("hours",), "got a number"),  # YAML 1.1 reads unquoted 8:30 as 510
    ({"hours": []}, ("hours",), "got an empty list"),
    ({"dates": "2026-04-01"}, ("dates",), "expected a mapping with 'from' and/or 'until'"),
    ({"dates": {}}, ("dates",), "expected a mapping with 'from' and/or 'until'"),
    ({"dates": {"since": date(2026, 4, 1)}}, ("dates", "since"), "unknown key 'since'"),
    ({"dates": {"from": "2026-4-1"}}, ("dates", "from"), "expected a date like 2026-04-01"),
    ({"dates": {"from": "2026-02-30"}}, ("dates", "from"), "expected a date"),
    ({"dates": {"until": "20270331"}}, ("dates", "until"), "expected a date"),
    ({"dates": {"from": 20260401}}, ("dates", "from"), "expected a date"),
    (
        {"dates": {"from": datetime(2026, 4, 1, 9, 0, tzinfo=UTC)}},
        ("dates", "from"),
        "expected a date",
    ),
    ({"dates": {"from": None}}, ("dates", "from"), "expected a date"),
    (
        {"dates": {"from": date(2027, 4, 1), "until": date(2027, 3, 31)}},
        ("dates",),
        "'from' (2027-04-01) is after 'until' (2027-03-31)",
    ),
    (
        {"hours": OFFICE, "holidays": "skip"},
        ("holidays",),
        "expected how to treat holidays (ignore, exclude, only), got 'skip'",
    ),
    ({"hours": OFFICE, "holidays": True}, ("holidays",), "how to treat holidays"),
    ({"hours": OFFICE, "timezone": "Asia/Tokio"}, ("timezone",), "not found"),
    ({"hours": OFFICE, "timezone": "JST+9"}, ("timezone",), "expected an IANA time zone name"),
    ({"hours": OFFICE, "timezone": "Asia"}, ("timezone",), "not found"),
    ({"hours": OFFICE, "timezone": "asia/tokyo"}, ("timezone",), "not found"),
    # Host-dependent or path-like names never reach the time zone database.
    ({"hours": OFFICE, "timezone": "localtime"}, ("timezone",), "not an IANA time zone name"),
    ({"hours": OFFICE, "timezone": "../../etc/passwd"}, ("timezone",), "not an IANA"),
    ({"hours": OFFICE, "timezone": "/etc/localtime"}, ("timezone",), "not an IANA"),
    ({"hours": OFFICE, "timezone": ""}, ("timezone",), "not an IANA"),
    ({"hours": OFFICE, "timezone": 9}, ("timezone",), "got 9"),
]

SEGMENT_ERRORS: list[tuple[Any, tuple[str | int, ...], str]] = [
    ("LGWAN", (), "unknown segment 'LGWAN' (expected one of: internet, lgwan, mynumber)"),
    (["internet", "lgwn"], (1,), "unknown segment 'lgwn'"),
    ("sanso", (), "unknown segment"),
    ([], (), "got an empty list"),
    (None, (), "got nothing (null)"),
    ({"name": "lgwan"}, (), "got a mapping"),
    (" lgwan", (), "without surrounding spaces"),
]


@pytest.mark.parametrize(
    ("name", "argument", "below", "fragment"),
    [("time", *case) for case in TIME_ERRORS] + [("segment", *case) for case in SEGMENT_ERRORS],
)
def test_errors_name_the_path_and_what_is_expected(
    name: str, argument: Any, below: tuple[str | int, ...], fragment: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy("p", {"allow": {"or": [{"always": True}, {name: argument}]}})
    error = caught.value
    assert error.path == ("allow", "or", 1, name, *below)
    assert fragment in error.message
    assert error.message_ja != error.message  # a Japanese sentence, not a copy
    assert str(error).startswith("ポリシー 'p' の allow.or[1].")
