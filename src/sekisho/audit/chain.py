"""The hash chain, pure: canonical JSON of an event, one link, and verification of a chain.

Rule: every record stores `hash = sha256(bytes.fromhex(prev_hash) || body.encode("utf-8"))`,
where `body` is the canonical JSON of the event exactly as stored and `prev_hash` is the hash
of the record before it (64 zeros for the first record, seq 1). Verification recomputes every
link from the stored bodies, so changing, deleting or reordering any record breaks the chain
at that point. Nothing here touches a database, a clock or a file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

GENESIS = "0" * 64
RESERVED_KEYS = ("event_type", "occurred_at")


class StoredRecord(NamedTuple):
    """One record as stored. The columns after `hash` duplicate what the body says (for
    indexed search); verification checks they still agree with the hashed body."""

    seq: int
    body: str
    prev_hash: str
    hash: str
    event_type: str | None = None
    occurred_at: datetime | None = None
    actor: str | None = None


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int
    first_broken_seq: int | None = None
    problem: str = ""
    last_seq: int = 0
    last_hash: str = GENESIS

    def summary(self) -> str:
        if self.ok:
            return f"{self.checked} records, head seq {self.last_seq} hash {self.last_hash}"
        return f"seq {self.first_broken_seq}: {self.problem}"


def format_time(moment: datetime) -> str:
    """UTC ISO 8601 with microseconds and 'Z'; naive times are taken as UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Built once: json.dumps with these options would construct a new encoder per call.
_CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                      allow_nan=False)


def canonical_dumps(document: Mapping[str, Any]) -> str:
    """The one JSON serialisation we hash: sorted keys, no whitespace, UTF-8 kept as is."""
    return _CANONICAL_ENCODER.encode(document)


def canonical_json(event_type: str, occurred_at: datetime, event_fields: Mapping[str, Any]) -> str:
    """The body of one record: the event's fields plus `event_type` and `occurred_at`."""
    for key in RESERVED_KEYS:
        if key in event_fields:
            raise ValueError(f"event field {key!r} is reserved")
    document = dict(event_fields)
    document["event_type"] = event_type
    document["occurred_at"] = format_time(occurred_at)
    return canonical_dumps(document)


def link(prev_hash_hex: str, canonical: str) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash_hex) + canonical.encode("utf-8")).hexdigest()


def actor_of(fields: Mapping[str, Any]) -> str:
    """Who acted, by the same rule as `AuditEvent.actor`: the user, else the admin."""
    return str(fields.get("user") or fields.get("admin") or "")


def _columns_problem(record: StoredRecord) -> str:
    """Why the searchable columns disagree with the hashed body ("" when they agree).

    Defence: an insider who edits only the `actor` column would hide records from a search by
    user without touching the hash; we treat that as tampering too.
    """
    if record.event_type is None and record.occurred_at is None and record.actor is None:
        return ""
    try:
        document = json.loads(record.body)
    except ValueError:
        return "body is not JSON (record modified)"
    if not isinstance(document, dict):
        return "body is not a JSON object (record modified)"
    if record.event_type is not None and document.get("event_type") != record.event_type:
        return "event_type column does not match the body (record modified)"
    if record.occurred_at is not None and format_time(record.occurred_at) != document.get(
            "occurred_at"):
        return "occurred_at column does not match the body (record modified)"
    if record.actor is not None and record.actor != actor_of(document)[:128]:
        return "actor column does not match the body (record modified)"
    return ""


def verify(
    records: Iterable[StoredRecord],
    *,
    head: tuple[int, str] | None = None,
    anchor: tuple[int, str] | None = None,
) -> VerifyResult:
    """Check every link in seq order and stop at the first broken record.

    `head` is the (seq, hash) the chain head row claims: a missing tail is detected against it.
    `anchor` is the (seq, hash) of the record just before the first one given, for verifying a
    contiguous segment; by default the chain must start at seq 1 from the genesis hash.
    """
    expected_seq, prev_hash = (anchor[0] + 1, anchor[1]) if anchor else (1, GENESIS)
    checked = 0

    def broken(seq: int, problem: str) -> VerifyResult:
        return VerifyResult(False, checked, seq, problem, expected_seq - 1, prev_hash)

    for record in records:
        if record.seq > expected_seq:
            return broken(expected_seq, f"record missing (deleted); next present is seq "
                                        f"{record.seq}")
        if record.seq < expected_seq:
            return broken(record.seq, "out of order or duplicated (records reordered)")
        if record.prev_hash != prev_hash:
            return broken(record.seq, "previous-hash link broken (the record before it was "
                                      "modified, deleted or reordered)")
        if link(record.prev_hash, record.body) != record.hash:
            return broken(record.seq, "hash mismatch (record modified)")
        problem = _columns_problem(record)
        if problem:
            return broken(record.seq, problem)
        checked += 1
        expected_seq, prev_hash = record.seq + 1, record.hash
    if head is not None:
        head_seq, head_hash = head
        if head_seq > expected_seq - 1:
            return broken(expected_seq, f"record missing (deleted); chain head says seq "
                                        f"{head_seq}")
        if head_seq < expected_seq - 1 or head_hash != prev_hash:
            return broken(head_seq, "chain head does not match the last record (head modified)")
    return VerifyResult(True, checked, None, "", expected_seq - 1, prev_hash)
