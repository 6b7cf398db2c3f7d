"""The event-loop serialiser of `AuditLog.record` must produce the canonical body exactly.

A body that differed from `canonical_json` by one byte would still hash and verify (the
stored body is what is hashed) but would break the published format that auditors re-derive
with the standard library; so every event type and awkward values are compared byte for byte.
"""

from __future__ import annotations

import dataclasses
import inspect
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sekisho.audit import events
from sekisho.audit.chain import canonical_json, format_time
from sekisho.audit.events import AccessDecision, AuditEvent
from sekisho.audit.log import UtcClockText, _access_body, _fast_body, _fields_of, utc_text
from sekisho.audit.relay import line_at, line_of

AWKWARD = ["", "plain", 'quote " and \\ backslash', "改行\nタブ\t制御\x01\x7f", "🏯 関所",
           "\u2028\u2029", "</script>", "-1"]
EVENT_TYPES: list[type[AuditEvent]] = [
    cls for _, cls in inspect.getmembers(events, inspect.isclass)
    if issubclass(cls, AuditEvent) and cls is not AuditEvent and getattr(cls, "event_type", "")]


def _instance(cls: type[AuditEvent], text: str, number: int) -> AuditEvent:
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        kind = str(field.type)
        if "tuple" in kind:
            values[field.name] = (text, "ok", text[::-1])
        elif "float" in kind:
            values[field.name] = number / 7
        elif "int" in kind:
            values[field.name] = number
        elif "bool" in kind:
            values[field.name] = number % 2 == 0
        else:
            values[field.name] = text
    return cls(**values)


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.event_type)
@pytest.mark.parametrize("text", AWKWARD)
def test_fast_body_is_the_canonical_body(cls: type[AuditEvent], text: str) -> None:
    moment = datetime(2024, 4, 1, 9, 30, 5, 123, tzinfo=UTC)
    for number in (0, -3, 2**70, 1234567):
        event = _instance(cls, text, number)
        expected = canonical_json(event.event_type, moment, _fields_of(event))
        assert _fast_body(event, moment) == expected


def test_unusual_values_fall_back_to_the_canonical_encoder() -> None:
    moment = datetime(2024, 4, 1, tzinfo=UTC)
    event = AccessDecision(route="r", user="u", decision="allow", reasons=["a", "b"],
                           source_ip="1.2.3.4", method="GET", path="/", status=True,
                           bytes_in=0, bytes_out=1, duration_ms=1e-7)
    assert _fast_body(event, moment) == canonical_json(event.event_type, moment,
                                                       _fields_of(event))
    broken = dataclasses.replace(event, duration_ms=float("nan"))
    with pytest.raises(ValueError):
        _fast_body(broken, moment)  # NaN is not JSON: refused as canonical_json refuses it


def test_utc_text_matches_format_time() -> None:
    moment = datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    for step in range(2000):
        moment += timedelta(seconds=37_777, microseconds=step * 101)
        assert utc_text(moment) == format_time(moment)
    for edge in (datetime(2026, 1, 1, tzinfo=UTC), datetime(1000, 3, 4, 5, 6, 7, 8, tzinfo=UTC),
                 datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)):
        assert utc_text(edge) == format_time(edge)  # no fraction dropped
        assert utc_text(edge.replace(tzinfo=None)) == format_time(edge)  # naive: taken as UTC


class _Text(str):
    """A str subclass: JSON encodes it as the string it is."""


@pytest.mark.parametrize("text", AWKWARD)
def test_the_written_out_access_body_is_the_canonical_body(text: str) -> None:
    moment = datetime(2024, 4, 1, 9, 30, 5, 123, tzinfo=UTC)
    when = utc_text(moment)
    for number, duration in ((0, 0.0), (-3, 1e-7), (2**70, 12345.678), (200, -0.5)):
        event = AccessDecision(route=text, user=text[::-1], decision="deny",
                               reasons=(text, "group-unauthorized"), source_ip=_Text(text),
                               method="GET", path="/" + text, status=number, bytes_in=number,
                               bytes_out=number + 1, duration_ms=duration, session=text)
        body = _access_body(event, when)
        assert body is not None  # the written-out path, not the plan
        assert body == canonical_json(event.event_type, moment, _fields_of(event))


@pytest.mark.parametrize("change", [
    {"status": True}, {"bytes_in": 1.0}, {"bytes_out": False}, {"duration_ms": 3},
    {"duration_ms": float("nan")}, {"duration_ms": float("inf")}, {"reasons": ["a"]},
    {"reasons": ("a", 1)}, {"user": None}, {"route": 5}, {"path": b"/"},
])
def test_the_written_out_access_body_leaves_unusual_values_to_the_plan(
        change: dict[str, Any]) -> None:
    event = dataclasses.replace(AccessDecision(
        route="r", user="u", decision="allow", reasons=("ok",), source_ip="192.0.2.1",
        method="GET", path="/", status=200, bytes_in=0, bytes_out=1, duration_ms=0.5), **change)
    assert _access_body(event, "2024-04-01T00:00:00.000000Z") is None
    moment = datetime(2024, 4, 1, tzinfo=UTC)
    try:
        expected = canonical_json(event.event_type, moment, _fields_of(event))
    except (TypeError, ValueError):
        with pytest.raises((TypeError, ValueError)):
            _fast_body(event, moment)
    else:
        assert _fast_body(event, moment) == expected


def test_the_clock_text_is_utc_text_of_the_same_moment() -> None:
    """`UtcClockText` formats the date and time once a second: across second, day and year
    boundaries and for any fraction it must read exactly as `utc_text` of that instant."""
    moments = [1_798_761_599.999_999, 1_798_761_600.0, 1_798_761_600.000_001, 1_767_225_599.5,
               1_767_225_600.25, 1_764_184_000.123_456]
    moments += [1_764_184_000 + step * 0.173_9 for step in range(200)]
    for moment in moments:
        text = UtcClockText(lambda moment=moment: moment)()
        expected = datetime.fromtimestamp(moment, UTC)
        # The same instant to the microsecond (a float of it is truncated, not rounded).
        assert abs(datetime.fromisoformat(text) - expected) <= timedelta(microseconds=1)
        assert text == utc_text(datetime.fromisoformat(text))
    clock = iter(moments)
    stamp = UtcClockText(lambda: next(clock))  # one instance across the seconds: no stale date
    for moment in moments:
        assert datetime.fromisoformat(stamp()) == datetime.fromisoformat(
            UtcClockText(lambda moment=moment: moment)())


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.event_type)
def test_a_line_at_a_clock_text_is_the_line_at_that_moment(cls: type[AuditEvent]) -> None:
    moment = datetime(2024, 4, 1, 9, 30, 5, 123, tzinfo=UTC)
    for text in AWKWARD:
        event = _instance(cls, text, 1234567)
        assert line_at(event, utc_text(moment)) == line_of(event, moment)
    odd = dataclasses.replace(_instance(AccessDecision, "x", 1), status=True)  # the plan's
    assert line_at(odd, utc_text(moment)) == line_of(odd, moment)
