"""The audit operations through `ops.run`: search with every filter and the cursor, export
(CSV for Excel, JSONL with the chain fields, capped and saying so), and verification that
finds a tampered record, a tampered search column and a missing reason row, and records
itself. SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from sekisho.audit.events import AccessDecision, SignInFailed, UserChanged
from sekisho.audit.log import AuditUnavailable
from sekisho.console.admin import audit as audit_ops
from sekisho.console.admin.ops import Answer

from .audit_kit import ACTORS, AUDITOR, HELPDESK, SUPER, Kit, build

T0 = datetime(2026, 11, 20, 14, 0, tzinfo=UTC)  # 23:00 in Tokyo


def _deny(n: int, user: str, reason: str = "group-unauthorized") -> AccessDecision:
    return AccessDecision(route="finance", user=user, decision="deny", reasons=(reason,),
                          source_ip="203.0.113.7", method="POST", path=f"/pay/{n}", status=403,
                          bytes_in=5, bytes_out=0, duration_ms=2.0, session="abc")


def _allow(n: int, user: str) -> AccessDecision:
    return AccessDecision(route="wiki", user=user, decision="allow",
                          reasons=("group-authorized",), source_ip="10.0.0.1", method="GET",
                          path=f"/page/{n}", status=200, bytes_in=0, bytes_out=99,
                          duration_ms=1.0)


@pytest.fixture
def kit(database_url: str) -> Iterator[Kit]:
    kit = build(database_url, T0)
    for n in range(12):
        kit.clock.now = T0 + timedelta(minutes=10 * n)  # 14:00 … 15:50 UTC
        kit.audit.record(_deny(n, "tanaka") if n % 3 == 0 else _allow(n, "sato"))
    kit.audit.flush()
    kit.clock.now = T0 + timedelta(hours=3)
    kit.audit.append_sync(SignInFailed(user="=HYPERLINK(\"http://evil\")", source_ip="1.2.3.4",
                                       reason="invalid-credentials"))
    kit.audit.append_sync(UserChanged(admin="sato", user="tanaka", action="disable"))
    yield kit
    kit.audit.close()
    kit.engine.dispose()


@pytest.mark.parametrize("actor", ACTORS, ids=lambda a: a.role.value)
def test_every_admin_role_searches_newest_first(kit: Kit, actor: object) -> None:
    answer = kit.run(actor, "audit.search")  # type: ignore[arg-type]
    events = answer["events"]
    assert [e["seq"] for e in events] == list(range(14, 0, -1))
    assert answer["next_cursor"] is None
    newest_access = events[2]
    assert newest_access["type"] == "access.decision" and newest_access["seq"] == 12
    assert newest_access["time"] == "2026-11-20T15:50:00.000000Z"
    assert newest_access["time_local"] == "2026-11-21T00:50:00+09:00"
    assert newest_access["time_display"] == "2026年11月21日 00:50:00"
    assert newest_access["summary"] == "GET /page/11 → 200"
    assert newest_access["event"]["path"] == "/page/11"
    assert newest_access["reasons"] == ["group-authorized"]
    assert newest_access["source_ip"] == "10.0.0.1"
    assert events[0]["summary"] == "操作: disable; 利用者: tanaka; 管理者: sato"
    english = kit.run(actor, "audit.search", query={"limit": 1}, lang="en")  # type: ignore[arg-type]
    assert english["events"][0]["summary"] == "action: disable; user: tanaka; admin: sato"


def test_filters_arrive_as_query_strings(kit: Kit) -> None:
    def seqs(**query: object) -> list[int]:
        return [e["seq"] for e in kit.run(AUDITOR, "audit.search", query=query)["events"]]

    assert seqs(decision="deny") == [10, 7, 4, 1]
    assert seqs(user="tanaka", reason="group-unauthorized") == [10, 7, 4, 1]
    assert seqs(reason="invalid-credentials") == [13]
    assert seqs(route="wiki", decision="allow") == [12, 11, 9, 8, 6, 5, 3, 2]
    assert seqs(type="user.changed") == [14]
    assert seqs(user="sato") == [12, 11, 9, 8, 6, 5, 3, 2]
    assert seqs(user="tanaka") == [14, 10, 7, 4, 1]  # the user an admin acted on is the actor
    # Local time without an offset is Tokyo time: 23:30–00:10 JST is 14:30–15:10 UTC.
    assert seqs(since="2026-11-20T23:30", until="2026-11-21T00:10") == [7, 6, 5, 4]
    assert seqs(since="2026-11-20T14:30:00Z", until="2026-11-20T15:10:00+00:00") == [7, 6, 5, 4]
    assert seqs(since="2026-11-21") == [14, 13, 12, 11, 10, 9, 8, 7]  # from 00:00 JST


def test_cursor_pages_through_without_gaps(kit: Kit) -> None:
    seen, cursor = [], None
    while True:
        query: dict[str, object] = {"limit": 4}
        if cursor is not None:
            query["cursor"] = cursor
        answer = kit.run(HELPDESK, "audit.search", query=query)
        seen.extend(e["seq"] for e in answer["events"])
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    assert seen == list(range(14, 0, -1))


@pytest.mark.parametrize(("query", "code"), [
    ({"decision": "maybe"}, "invalid-input"),
    ({"limit": 501}, "invalid-input"),
    ({"cursor": 0}, "invalid-input"),
    ({"since": "yesterday"}, "invalid-input"),
    ({"since": "2026-13-40"}, "invalid-input"),
    ({"since": "2026-11-21", "until": "2026-11-20"}, "invalid-input"),
    ({"reason": "group-authorized", "decision": "allow"}, "invalid-input"),
    ({"unknown": "x"}, "invalid-input"),
])
def test_bad_input_is_a_clear_4xx(kit: Kit, query: dict[str, object], code: str) -> None:
    refused = kit.refused(AUDITOR, "audit.search", query=query)
    assert (refused.code, refused.status) == (code, 422)


def test_csv_export_is_for_excel_and_defuses_formulas(kit: Kit) -> None:
    data = kit.run(AUDITOR, "audit.export", query={"format": "csv", "user": "tanaka"})
    assert isinstance(data, Answer) and data.media_type
    assert data.media_type.startswith("text/csv")
    headers = dict(data.headers)
    assert headers["X-Sekisho-Export-Records"] == "5"
    assert headers["X-Sekisho-Export-Truncated"] == "false"
    assert headers["X-Sekisho-Export-Limit"] == str(audit_ops.EXPORT_MAX)
    text_ = data.body.decode("utf-8")
    assert text_.startswith("\ufeff連番,")
    rows = list(csv.reader(io.StringIO(text_.lstrip("\ufeff"))))
    assert [row[0] for row in rows[1:]] == ["14", "10", "7", "4", "1"]
    everything = kit.run(AUDITOR, "audit.export", query={"reason": "invalid-credentials"})
    [row] = list(csv.reader(io.StringIO(everything.body.decode("utf-8").lstrip("\ufeff"))))[1:]
    assert row[3].startswith("'=HYPERLINK")  # shown as text in Excel, never run


def test_jsonl_export_keeps_the_chain_fields_and_says_when_it_is_cut(
        kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    data = kit.run(SUPER, "audit.export", query={"format": "jsonl", "decision": "deny"})
    assert data.media_type == "application/x-ndjson"
    lines = [json.loads(line) for line in data.body.decode("utf-8").splitlines()]
    assert [line["seq"] for line in lines] == [10, 7, 4, 1]
    assert {"prev_hash", "hash", "event"} <= set(lines[0])
    monkeypatch.setattr(audit_ops, "EXPORT_MAX", 3)
    cut = kit.run(SUPER, "audit.export", query={"format": "jsonl"})
    assert len(cut.body.decode("utf-8").splitlines()) == 3
    assert dict(cut.headers)["X-Sekisho-Export-Truncated"] == "true"
    assert dict(cut.headers)["X-Sekisho-Export-Records"] == "3"


def test_verification_of_an_intact_chain_is_recorded(kit: Kit) -> None:
    answer = kit.run(AUDITOR, "audit.verify")
    assert answer == {"ok": True, "checked": 14, "head_seq": 14, "first_bad_seq": None,
                      "problem": "", "time": kit.clock.now.isoformat()}
    [event] = kit.events("audit.verified")
    assert (event["admin"], event["ok"], event["checked"], event["first_bad_seq"],
            event["source_ip"]) == ("suzuki", True, 14, 0, "192.0.2.9")


@pytest.mark.parametrize(("tamper", "problem"), [
    ("UPDATE audit_events SET body = replace(body, '/pay/3', '/pay/x') WHERE seq = 4",
     "hash mismatch"),
    ("DELETE FROM audit_events WHERE seq = 4", "record missing"),
    # Only the search column: the record would vanish from a search for denials.
    ("UPDATE audit_events SET decision = 'allow' WHERE seq = 4", "decision column"),
    ("UPDATE audit_events SET route = 'wiki' WHERE seq = 4", "route column"),
    ("DELETE FROM audit_reasons WHERE seq = 4", "reason index rows"),
    ("UPDATE audit_events SET actor = 'someone' WHERE seq = 4", "actor column"),
])
def test_verification_finds_the_first_tampered_record(kit: Kit, tamper: str,
                                                      problem: str) -> None:
    with kit.engine.begin() as connection:
        connection.execute(text(tamper))
    answer = kit.run(HELPDESK, "audit.verify")
    assert (answer["ok"], answer["first_bad_seq"], answer["checked"]) == (False, 4, 3)
    assert problem in answer["problem"]
    [event] = kit.events("audit.verified")
    assert (event["ok"], event["first_bad_seq"]) == (False, 4)


def test_verification_fails_closed_without_the_audit_log(kit: Kit) -> None:
    kit.audit.close()
    with pytest.raises(AuditUnavailable):
        kit.run(AUDITOR, "audit.verify")


def test_one_verification_at_a_time(kit: Kit) -> None:
    assert audit_ops._VERIFYING.acquire(blocking=False)
    try:
        refused = kit.refused(AUDITOR, "audit.verify")
    finally:
        audit_ops._VERIFYING.release()
    assert (refused.code, refused.status) == ("verification-running", 409)
