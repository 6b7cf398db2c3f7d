"""A batch of events as database rows: each linked into the hash chain, with its search columns.

The audit writer's work for every record, pure: `storage.audit_log.append_batch` takes the
chain-head lock, hands the batch here and inserts what comes back. Kept apart from the SQL,
it is compiled with the request path (`sekisho._build`) while the SQLAlchemy calls stay
interpreted (compiled, their declared types are checked: a `Row` is refused as no tuple).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sekisho.audit import columns as search_columns
from sekisho.audit.chain import link

ACTOR_MAX = 128

# `audit.log.utc_text`: 2026-04-01T09:30:05.000123Z
_UTC_TEXT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


class PendingRecord(NamedTuple):
    """An event ready to append: its canonical body is final, its place in the chain is not."""

    event_type: str
    occurred_at: datetime
    actor: str
    body: str
    # The search columns, taken from the event object; None (records relayed as text):
    # derived from the body by the writer (`audit.columns`).
    search: search_columns.SearchColumns | None = None
    # `occurred_at` as `audit.log.utc_text` wrote it (records relayed as text), or "": on
    # SQLite the stored text is cut from it instead of formatted again (`sqlite_time`).
    time_text: str = ""


class ChainedRows(NamedTuple):
    """The rows of `audit_events` and `audit_reasons` for a batch, and the new chain head."""

    events: list[tuple[Any, ...]]
    reasons: list[tuple[Any, ...]]
    seq: int
    head: str


def chain_rows(items: Sequence[PendingRecord], seq: int, prev: str, *, sqlite: bool,
               to_db: Callable[[datetime], Any]) -> ChainedRows:
    """Link `items` after the record (`seq`, hash `prev`); times go through `to_db`, the
    column type's bind processor (on SQLite a `utc_text` is cut instead: the same text)."""
    events: list[tuple[Any, ...]] = []
    reasons: list[tuple[Any, ...]] = []
    of_body = search_columns.of_body
    for item in items:
        seq += 1
        digest = link(prev, item.body)
        stamp = item.time_text
        when = sqlite_time(stamp) if sqlite and _UTC_TEXT.fullmatch(stamp) \
            else to_db(utc(item.occurred_at))
        route, decision, searchable = item.search or of_body(item.body)
        events.append((seq, when, item.event_type, item.actor[:ACTOR_MAX], item.body, prev,
                       digest, route, decision))
        for reason in searchable:
            reasons.append((reason, when, seq, item.event_type))
        prev = digest
    return ChainedRows(events, reasons, seq, prev)


def sqlite_time(text: str) -> str:
    """SQLAlchemy's SQLite DATETIME text (`2026-04-01 09:30:05.000123`) of a `utc_text`:
    the same characters, cut instead of formatted (a fifth of the writer's work per row).
    tests/audit/test_storage.py holds it equal to the column type's own bind processor."""
    return text[:10] + " " + text[11:26]


def utc(moment: datetime) -> datetime:
    # SQLite keeps no offset: every value we write is UTC, so a naive value read back is UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
