"""The chain's pure core: canonical JSON and link vectors, and verification of tampering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from sekisho.audit.chain import GENESIS, StoredRecord, canonical_json, link, verify

T0 = datetime(2024, 4, 1, 9, 30, 0, 123456, tzinfo=UTC)
BODY1 = ('{"duration_ms":1.5,"event_type":"access.decision","occurred_at":'
         '"2024-04-01T09:30:00.123456Z","path":"/a","reasons":["group-unauthorized",'
         '"source-ip-denied"],"status":403,"user":"田中"}')
HASH1 = "78fe768439ee8a0ea5100ceb8bbcbd9bee1aa452766a82608a8516cc48f1afb5"
BODY2 = ('{"event_type":"signout","occurred_at":"2024-04-01T09:30:01.000000Z",'
         '"session":"abcd","source_ip":"","user":"tanaka"}')
HASH2 = "c37e580d8f82bebef2a9151f36555e75a359485cbb2b66220c12bfaf62ec82c0"


def test_canonical_json_vector() -> None:
    fields = {"user": "田中", "reasons": ("group-unauthorized", "source-ip-denied"),
              "status": 403, "duration_ms": 1.5, "path": "/a"}
    assert canonical_json("access.decision", T0, fields) == BODY1


def test_times_are_utc_with_microseconds_and_z() -> None:
    jst = timezone(timedelta(hours=9))
    body = canonical_json("signout", datetime(2024, 4, 1, 18, 30, 1, tzinfo=jst),
                          {"user": "tanaka", "session": "abcd", "source_ip": ""})
    assert body == BODY2


def test_link_vectors() -> None:
    # HASH1 was cross-checked with `sha256sum` over 32 zero bytes followed by BODY1.
    assert link(GENESIS, BODY1) == HASH1
    assert link(HASH1, BODY2) == HASH2


def test_reserved_field_names_are_refused() -> None:
    with pytest.raises(ValueError):
        canonical_json("signout", T0, {"event_type": "spoofed"})


def test_nan_is_refused() -> None:
    with pytest.raises(ValueError):
        canonical_json("access.decision", T0, {"duration_ms": float("nan")})


def _chain(count: int) -> list[StoredRecord]:
    records, prev = [], GENESIS
    for seq in range(1, count + 1):
        body = canonical_json("signout", T0, {"user": f"u{seq}", "session": "s"})
        digest = link(prev, body)
        records.append(StoredRecord(seq, body, prev, digest, "signout", T0, f"u{seq}"))
        prev = digest
    return records


def test_intact_chain_verifies_against_its_head() -> None:
    records = _chain(5)
    result = verify(records, head=(5, records[-1].hash))
    assert result.ok and result.checked == 5 and result.last_seq == 5
    assert verify([], head=(0, GENESIS)).ok


def test_modified_body_is_named() -> None:
    records = _chain(5)
    records[2] = records[2]._replace(body=records[2].body.replace("u3", "u9"))
    result = verify(records)
    assert (result.ok, result.first_broken_seq) == (False, 3)
    assert result.summary() == "seq 3: hash mismatch (record modified)"
    assert result.checked == 2


def test_modified_hash_is_named() -> None:
    records = _chain(5)
    records[1] = records[1]._replace(hash="0" * 64)
    assert verify(records).first_broken_seq == 2


def test_body_and_hash_rewritten_together_breaks_the_next_link() -> None:
    records = _chain(5)
    body = records[2].body.replace("u3", "u9")
    records[2] = records[2]._replace(body=body, hash=link(records[2].prev_hash, body),
                                     actor="u9")
    result = verify(records)
    assert result.first_broken_seq == 4 and "link broken" in result.problem


def test_deleted_record_is_named() -> None:
    records = _chain(5)
    del records[2]
    result = verify(records)
    assert result.first_broken_seq == 3 and "missing" in result.problem


def test_deleted_and_renumbered_record_breaks_the_link() -> None:
    records = _chain(5)
    del records[2]
    records = [r._replace(seq=i) for i, r in enumerate(records, start=1)]
    assert verify(records).first_broken_seq == 3


def test_deleted_tail_is_caught_by_the_head() -> None:
    records = _chain(5)
    result = verify(records[:4], head=(5, records[-1].hash))
    assert result.first_broken_seq == 5 and "missing" in result.problem


def test_reordered_records_are_named() -> None:
    records = _chain(5)
    records[1], records[2] = records[2], records[1]
    assert verify(records).first_broken_seq == 2
    swapped = _chain(5)
    swapped[1], swapped[2] = swapped[2]._replace(seq=2), swapped[1]._replace(seq=3)
    assert verify(swapped).first_broken_seq == 2


def test_edited_search_column_is_tampering() -> None:
    records = _chain(3)
    records[1] = records[1]._replace(actor="someone-else")
    result = verify(records)
    assert result.first_broken_seq == 2 and "actor column" in result.problem
    records = _chain(3)
    records[0] = records[0]._replace(occurred_at=T0 + timedelta(seconds=1))
    assert "occurred_at column" in verify(records).problem


def test_segment_verifies_from_an_anchor() -> None:
    records = _chain(6)
    assert verify(records[3:], anchor=(3, records[2].hash)).ok
    assert not verify(records[3:]).ok
