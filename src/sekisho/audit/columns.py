"""The search columns of an audit record: derived from the event, never hashed.

Rule: the columns are a pure function of the record's canonical body, `of_fields(json body)`.
`route` is the route id of an access decision or closed WebSocket; `decision` is "allow",
"deny" or ""; `reasons` are the reason codes worth searching for: every reason of an event
that is not an allowed decision (the `reasons` list of a denial or a closed WebSocket, the
single `reason` of a failed sign-in, MFA attempt, refused hook …). Reasons of allowed
decisions are not indexed: they are most of the log and nobody hunts for why access worked.

The writer takes the columns from the event object (`of_event`, cheap: no parsing on the hot
path) or, for records relayed from workers as text, from the body (`of_body`, which scans the
canonical JSON and parses it only when a value holds an escape). All three agree; the
verification button re-derives them from the hashed body and reports a record whose columns
differ (an insider editing a column to hide a denial from the search).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

ROUTE_MAX = 128
DECISION_MAX = 8
REASON_MAX = 64
REASONS_MAX = 16  # more reason codes than any decision carries: the rest are not indexed


class SearchColumns(NamedTuple):
    route: str = ""
    decision: str = ""
    reasons: tuple[str, ...] = ()


NONE = SearchColumns()


def _text(value: Any, limit: int) -> str:
    return value[:limit] if type(value) is str else ""


def _reasons(decision: str, many: Any, one: Any) -> tuple[str, ...]:
    if decision == "allow":
        return ()
    found: list[str] = []
    if type(many) in (list, tuple):
        found.extend(item[:REASON_MAX] for item in many if type(item) is str and item)
    if type(one) is str and one:
        found.append(one[:REASON_MAX])
    # Unique, in first-seen order: a reason listed twice is one index row.
    return tuple(dict.fromkeys(found))[:REASONS_MAX]


def of_fields(fields: Mapping[str, Any]) -> SearchColumns:
    """The reference rule, from the event's fields (or its parsed canonical body)."""
    route = _text(fields.get("route"), ROUTE_MAX)
    decision = _text(fields.get("decision"), DECISION_MAX)
    reasons = _reasons(decision, fields.get("reasons"), fields.get("reason"))
    if not (route or decision or reasons):
        return NONE
    return SearchColumns(route, decision, reasons)


# The columns of an allowed decision, per route: the hot path of `AuditLog.record` (one dict
# lookup instead of building a tuple). Route ids come from the configuration, so the table
# stays small; it is bounded all the same.
_ALLOWED: dict[str, SearchColumns] = {}
_ALLOWED_MAX = 4096


def of_event(event: object) -> SearchColumns:
    """`of_fields` read straight from an event's attributes (no dict, no parsing)."""
    route = getattr(event, "route", None)
    if type(route) is str and getattr(event, "decision", None) == "allow":
        found = _ALLOWED.get(route)
        if found is None:
            found = _of_event(event)  # depends on the route alone: an allow has no reasons
            if len(_ALLOWED) < _ALLOWED_MAX:
                _ALLOWED[route] = found
        return found
    return _of_event(event)


def _of_event(event: object) -> SearchColumns:
    route = _text(getattr(event, "route", None), ROUTE_MAX)
    decision = _text(getattr(event, "decision", None), DECISION_MAX)
    reasons = _reasons(decision, getattr(event, "reasons", None), getattr(event, "reason", None))
    if not (route or decision or reasons):
        return NONE
    return SearchColumns(route, decision, reasons)


def _string(body: str, key: str) -> str | None:
    """The string value of a top-level key, None when absent or not a plain string.

    In canonical JSON every `"` inside a string is escaped, so `,"key":"` can only be a key of
    the flat top-level object followed by a string value; a value holding a backslash (an
    escape) is left to the full parser.
    """
    start = body.find("," + key)
    if start < 0:
        if not body.startswith("{" + key):
            return None
        start = 0
    start += len(key) + 1
    end = body.find('"', start)
    value = body[start:end]
    return None if "\\" in value else value


_ROUTE, _DECISION = '"route":"', '"decision":"'


def of_body(body: str) -> SearchColumns:
    """`of_fields(json.loads(body))` for a canonical body, usually without parsing it."""
    if "\\" in body or body.find("{", 1) >= 0:
        return _parsed(body)  # escapes or nested objects (rare): the parser's exact answer
    has_route, has_decision = '"route":' in body, '"decision":' in body
    if not (has_route or has_decision or '"reason' in body):
        return NONE
    route = _string(body, _ROUTE) if has_route else ""
    decision = _string(body, _DECISION) if has_decision else ""
    if route is None or decision is None:
        return _parsed(body)  # a key holding another type than a string
    if decision != "allow" and '"reason' in body:
        return _parsed(body)  # denials and failures are few: parse them
    if not (route or decision):
        return NONE
    return SearchColumns(route[:ROUTE_MAX], decision[:DECISION_MAX], ())


def _parsed(body: str) -> SearchColumns:
    document = json.loads(body)
    return of_fields(document) if isinstance(document, dict) else NONE


def mismatch(body: str, stored: SearchColumns) -> str:
    """Why stored columns disagree with the hashed body ("" when they agree; reasons are
    compared as sets, the order of index rows being meaningless)."""
    try:
        expected = of_body(body)
    except ValueError:
        return "body is not JSON (record modified)"
    if stored.route != expected.route:
        return "route column does not match the body (record modified)"
    if stored.decision != expected.decision:
        return "decision column does not match the body (record modified)"
    if sorted(stored.reasons) != sorted(expected.reasons):
        return "reason index rows do not match the body (record modified)"
    return ""
