"""Audit search on SQLite and PostgreSQL: every filter against a brute-force reading of the
bodies, cursor paging without gaps or repeats (also while events are appended), search columns
of relayed records, the dashboard's counts, and the migration that backfills old records."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, text

from sekisho.audit import columns
from sekisho.audit.chain import GENESIS, canonical_json, link, verify
from sekisho.audit.events import (
    AccessDecision,
    AuditEvent,
    MfaFailed,
    SignInFailed,
    SignInSucceeded,
    UserChanged,
    WebSocketClosed,
)
from sekisho.audit.log import AuditLog
from sekisho.storage import audit_query
from sekisho.storage.audit_log import PendingRecord, append_batch, iter_records, read_head
from sekisho.storage.audit_query import Filters
from sekisho.storage.database import _alembic_config, create_database_engine, upgrade

T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)


def _fields(event: AuditEvent) -> dict[str, Any]:
    return {field.name: getattr(event, field.name) for field in dataclasses.fields(event)}


def _access(n: int, user: str, route: str, deny: bool, reasons: tuple[str, ...]
            ) -> AccessDecision:
    return AccessDecision(route=route, user=user, decision="deny" if deny else "allow",
                          reasons=reasons, source_ip="10.0.0.1", method="GET", path=f"/p/{n}",
                          status=403 if deny else 200, bytes_in=0, bytes_out=10,
                          duration_ms=1.5)


def _workload() -> list[AuditEvent]:
    events: list[AuditEvent] = []
    for n in range(60):
        user = ("tanaka", "sato", "")[n % 3]
        route = ("wiki", "finance")[n % 2]
        deny = n % 4 == 0 or user == ""
        reasons = (("user-unauthenticated",) if user == "" else ("group-unauthorized",)
                   ) if deny else ("user-authenticated", "group-authorized")
        events.append(_access(n, user, route, deny, reasons))
        if n % 10 == 0:
            events.append(SignInFailed(user="sato", source_ip="10.0.0.9",
                                       reason="invalid-credentials"))
        if n % 15 == 0:
            events.append(SignInSucceeded(user="tanaka", source_ip="10.0.0.2",
                                          methods=("password",), session="s"))
            events.append(WebSocketClosed(route="wiki", user="tanaka", session="s",
                                          trigger="timer", reasons=("time-denied",),
                                          source_ip="10.0.0.2", duration_s=1.0, bytes_in=1,
                                          bytes_out=2))
    events.append(UserChanged(admin="admin", user="tanaka", action="disable"))
    return events


class Clock:
    """Minutes apart, except every fifth event shares its time with the one before it
    (keyset ties are broken by seq)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> datetime:
        self.n += 1
        return T0 + timedelta(minutes=self.n - self.n // 5)


def _fill(engine: Engine, events: list[AuditEvent]) -> AuditLog:
    log = AuditLog(engine, now=Clock(), max_lag=120.0)
    for event in events:
        log.record(event) if not event.durable else log.append_sync(event)
    log.flush()
    return log


@pytest.fixture
def filled(engine: Engine) -> Engine:
    _fill(engine, _workload())
    return engine


def _expected(engine: Engine, keep: Callable[[dict[str, Any]], bool]) -> list[int]:
    """Brute force: every record read from its hashed body, newest (highest seq) first."""
    return [record.seq for record in reversed(list(iter_records(engine)))
            if keep(json.loads(record.body))]


def _all(engine: Engine, filters: Filters, limit: int = 7) -> list[int]:
    seqs, cursor = [], None
    while True:
        rows, cursor = audit_query.search(engine, filters, before=cursor, limit=limit)
        seqs.extend(row.seq for row in rows)
        if cursor is None:
            return seqs


def _reasons(document: dict[str, Any]) -> list[str]:
    return list(document.get("reasons", [])) + ([document["reason"]] if "reason" in document
                                                 else [])


SINCE, UNTIL = T0 + timedelta(minutes=20), T0 + timedelta(minutes=45)

CASES: dict[str, tuple[Filters, Callable[[dict[str, Any]], bool]]] = {
    "none": (Filters(), lambda d: True),
    "user": (Filters(actor="tanaka"),
             lambda d: (d.get("user") or d.get("admin") or "") == "tanaka"),
    "route": (Filters(route="finance"), lambda d: d.get("route") == "finance"),
    "deny": (Filters(decision="deny"), lambda d: d.get("decision") == "deny"),
    "allow": (Filters(decision="allow"), lambda d: d.get("decision") == "allow"),
    "reason of denials": (Filters(reason="group-unauthorized"),
                          lambda d: d.get("decision") == "deny"
                          and "group-unauthorized" in d["reasons"]),
    "reason of failures": (Filters(reason="invalid-credentials"),
                           lambda d: d.get("reason") == "invalid-credentials"),
    "reason of closed websockets": (Filters(reason="time-denied"),
                                    lambda d: "time-denied" in _reasons(d)),
    "type": (Filters(event_type="signin.failure"),
             lambda d: d["event_type"] == "signin.failure"),
    "time range": (Filters(since=SINCE, until=UNTIL),
                   lambda d: SINCE <= _time(d) < UNTIL),
    "time range + user + route + deny": (
        Filters(since=SINCE, until=UNTIL, actor="sato", route="wiki", decision="deny"),
        lambda d: SINCE <= _time(d) < UNTIL and d.get("user") == "sato"
        and d.get("route") == "wiki" and d.get("decision") == "deny"),
    "reason + user + time": (
        Filters(reason="group-unauthorized", actor="tanaka", since=SINCE),
        lambda d: "group-unauthorized" in _reasons(d) and d.get("decision") == "deny"
        and d.get("user") == "tanaka" and _time(d) >= SINCE),
}


def _time(document: dict[str, Any]) -> datetime:
    return datetime.strptime(document["occurred_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC)


@pytest.mark.parametrize("case", list(CASES))
def test_every_filter_finds_exactly_what_the_bodies_say(filled: Engine, case: str) -> None:
    filters, keep = CASES[case]
    expected = _expected(filled, keep)
    assert expected, "the workload must exercise every filter"
    assert _all(filled, filters) == expected
    first, cursor = audit_query.search(filled, filters, limit=3)
    assert [row.seq for row in first] == expected[:3]
    assert cursor == (expected[2] if len(expected) > 3 else None)


@pytest.mark.parametrize("narrow", [0, 10, 1_000_000])
def test_a_time_range_is_walked_or_sorted_with_the_same_answer(
        filled: Engine, narrow: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_query, "NARROW", narrow)  # 0: always walk; 1,000,000: sort
    for name in ("time range",):
        filters, keep = CASES[name]
        assert _all(filled, filters, limit=4) == _expected(filled, keep)
    later = Filters(since=T0 + timedelta(minutes=70))
    assert _all(filled, later) == _expected(filled, lambda d: _time(d) >= later.since)


def test_unknown_values_find_nothing_and_a_cursor_is_a_position(filled: Engine) -> None:
    assert audit_query.search(filled, Filters(actor="nobody")) == ([], None)
    assert audit_query.search(filled, Filters(reason="user-authenticated")) == ([], None)
    newest, _ = audit_query.search(filled, Filters(), limit=2)
    assert audit_query.search(filled, Filters(), before=999_999, limit=2)[0] == newest
    assert audit_query.search(filled, Filters(), before=1) == ([], None)


def test_page_size_is_capped(filled: Engine) -> None:
    rows, _ = audit_query.search(filled, Filters(), limit=10_000)
    assert len(rows) == min(audit_query.PAGE_MAX, len(list(iter_records(filled))))


def test_paging_while_events_are_appended_neither_repeats_nor_skips(filled: Engine) -> None:
    existing = _expected(filled, lambda d: d.get("route") == "wiki")
    log = AuditLog(filled)  # real time: every new record is newer than the workload
    stop = threading.Event()

    def append() -> None:
        n = 0
        while not stop.is_set():
            log.append_sync(_access(1000 + n, "tanaka", "wiki", False, ("user-authenticated",)))
            n += 1

    writer = threading.Thread(target=append)
    writer.start()
    try:
        seen: list[int] = []
        rows, cursor = audit_query.search(filled, Filters(route="wiki"), limit=4)
        new = [row.seq for row in rows if row.occurred_at > T0 + timedelta(days=1)]
        seen.extend(row.seq for row in rows if row.occurred_at < T0 + timedelta(days=1))
        while cursor is not None:
            rows, cursor = audit_query.search(filled, Filters(route="wiki"), before=cursor,
                                              limit=4)
            # Records appended before the first page was read may follow on the next pages;
            # those appended later never do (their seq is above every cursor).
            new.extend(row.seq for row in rows if row.occurred_at > T0 + timedelta(days=1))
            seen.extend(row.seq for row in rows if row.occurred_at < T0 + timedelta(days=1))
    finally:
        stop.set()
        writer.join()
    assert seen == existing
    assert len(set(seen)) == len(seen) and len(set(new)) == len(new)
    assert new == sorted(new, reverse=True)


def test_records_relayed_as_text_get_the_same_columns(engine: Engine) -> None:
    events = _workload()
    at = T0
    pending = []
    for event in events:
        at += timedelta(seconds=1)
        fields = _fields(event)
        pending.append(PendingRecord(event.event_type, at, event.actor,
                                     canonical_json(event.event_type, at, fields)))
    append_batch(engine, pending)  # no `search`: derived from the bodies by the writer
    for record, stored in audit_query.records_with_columns(engine):
        assert columns.mismatch(record.body, stored) == ""
    assert _all(engine, Filters(reason="group-unauthorized")) == _expected(
        engine, lambda d: d.get("decision") == "deny" and "group-unauthorized" in d["reasons"])


@pytest.mark.parametrize("fields", [
    {"route": "wiki", "decision": "allow", "reasons": ["a", "b"]},
    {"route": "wiki", "decision": "deny", "reasons": ["a", "a", "b"]},
    {"route": "経理\"system\\", "decision": "deny", "reasons": ["x\ny"]},
    {"route": "r", "decision": "deny", "reasons": [], "path": "/{curly}"},
    {"route": None, "decision": 3, "reason": "invalid-credentials"},
    {"user": "tanaka", "reason": "invalid-credentials"},
    {"user": "a,\"route\":\"fake\"", "admin": "x"},
    {"route": "x" * 300, "decision": "deny", "reasons": ["r" * 100] * 20 + ["s"]},
    {"decision": "allow", "reason": "ignored-for-allow"},
    {},
])
def test_columns_from_the_body_equal_the_reference_rule(fields: dict[str, Any]) -> None:
    body = canonical_json("x.test", T0, fields)
    assert columns.of_body(body) == columns.of_fields(json.loads(body))


def test_columns_from_an_event_equal_those_from_its_body() -> None:
    for event in _workload():
        fields = _fields(event)
        body = canonical_json(event.event_type, T0, fields)
        assert columns.of_event(event) == columns.of_body(body) == columns.of_fields(
            json.loads(body))


def test_hourly_counts_and_top_denial_reasons(engine: Engine) -> None:
    log = AuditLog(engine, now=lambda: moments.pop(0), max_lag=120.0)
    moments = [T0 + timedelta(minutes=10), T0 + timedelta(minutes=20),
               T0 + timedelta(hours=1, minutes=5), T0 + timedelta(hours=1, minutes=6),
               T0 + timedelta(hours=2), T0 + timedelta(hours=3)]
    log.append_sync(SignInSucceeded(user="a", source_ip="", methods=("password",), session=""))
    log.append_sync(SignInFailed(user="a", source_ip="", reason="invalid-credentials"))
    log.append_sync(MfaFailed(user="a", method="totp", reason="invalid-code", source_ip=""))
    log.record(_access(1, "a", "wiki", True, ("group-unauthorized", "time-denied")))
    log.record(_access(2, "a", "wiki", True, ("group-unauthorized",)))
    log.record(_access(3, "a", "wiki", False, ("group-authorized",)))
    log.flush()
    counts = audit_query.hourly_counts(engine, T0, T0 + timedelta(hours=3),
                                       failure_types=("signin.failure", "mfa.failure"))
    hour = T0.replace(tzinfo=UTC)
    assert counts.signins == {hour: 1}
    assert counts.signin_failures == {hour: 1, hour + timedelta(hours=1): 1}
    assert counts.denials == {hour + timedelta(hours=1): 1, hour + timedelta(hours=2): 1}
    assert audit_query.top_denial_reasons(engine, T0) == [("group-unauthorized", 2),
                                                          ("time-denied", 1)]
    assert audit_query.top_denial_reasons(engine, T0 + timedelta(hours=2)) == [
        ("group-unauthorized", 1)]


@pytest.mark.parametrize(("filters", "index"), [
    (Filters(decision="deny"), "ix_audit_events_deny_seq"),
    (Filters(event_type="signin.failure"), "ix_audit_events_type_seq"),
    (Filters(actor="tanaka"), "ix_audit_events_actor_seq"),
    (Filters(route="wiki"), "ix_audit_events_route_seq"),
    (Filters(reason="time-denied"), "pk_audit_reasons"),
])
def test_each_filter_walks_its_index_without_sorting(tmp_path: Path, filters: Filters,
                                                     index: str) -> None:
    """SQLite's plan (without statistics, as a fresh installation has none): the filter's
    own index in seq order, never a sort of everything that matches."""
    engine = create_database_engine(f"sqlite:///{tmp_path}/plan.db")
    upgrade(engine)
    query = audit_query._query(engine, filters, 500, 50)
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as connection:
        plan = " ".join(str(row[-1]) for row in connection.execute(
            text(f"EXPLAIN QUERY PLAN {compiled}")))
    engine.dispose()
    assert index in plan or (index.startswith("pk_") and "PRIMARY KEY" in plan), plan
    assert "TEMP B-TREE" not in plan, plan


def test_the_dashboard_counts_read_the_partial_time_indexes(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path}/plan.db")
    upgrade(engine)
    plans = []
    for condition in (audit_query.IS_DENIED, audit_query.and_(
            audit_query.EVENTS.c.event_type == "signin.success", audit_query.IS_RARE_TYPE)):
        hour = audit_query._hour(engine, audit_query.EVENTS.c.occurred_at)
        query = (audit_query.select(hour, audit_query.func.count())
                 .where(condition, audit_query.EVENTS.c.occurred_at >= T0).group_by(hour))
        compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
        with engine.connect() as connection:
            plans.append(" ".join(str(row[-1]) for row in connection.execute(
                text(f"EXPLAIN QUERY PLAN {compiled}"))))
    engine.dispose()
    assert "COVERING INDEX ix_audit_events_deny_time" in plans[0], plans[0]
    assert "COVERING INDEX ix_audit_events_type_time" in plans[1], plans[1]


# -- the migration ---------------------------------------------------------------------------


def _old_rows(engine: Engine, events: list[AuditEvent]) -> None:
    """Records as a 0010 database holds them: no search columns, no reasons table."""
    prev, rows = GENESIS, []
    for seq, event in enumerate(events, start=1):
        at = T0 + timedelta(seconds=seq)
        fields = _fields(event)
        body = canonical_json(event.event_type, at, fields)
        digest = link(prev, body)
        rows.append({"seq": seq, "at": at if engine.dialect.name != "sqlite"
                     else at.strftime("%Y-%m-%d %H:%M:%S.%f"), "type": event.event_type,
                     "actor": event.actor, "body": body, "prev": prev, "hash": digest})
        prev = digest
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO audit_events (seq, occurred_at, event_type, actor, body, prev_hash, "
            "hash) VALUES (:seq, :at, :type, :actor, :body, :prev, :hash)"), rows)
        connection.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (1, :s, :h)"),
                           {"s": len(rows), "h": prev})


@pytest.fixture
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/old.db"
    else:
        url = request.getfixturevalue("pg_schema_url")
    engine = create_database_engine(url)
    command.upgrade(_alembic_config(engine), "0010")
    yield engine
    engine.dispose()


@pytest.mark.parametrize("old_database", ["sqlite", pytest.param(
    "postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_migration_backfills_existing_records(old_database: Engine,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import import_module

    migration = import_module("sekisho.storage.migrations.versions.0011_audit_search")
    monkeypatch.setattr(migration, "BATCH", 7)  # several batches for a small log
    events = _workload()
    _old_rows(old_database, events)
    upgrade(old_database)
    for record, stored in audit_query.records_with_columns(old_database):
        assert columns.mismatch(record.body, stored) == ""
    assert sum(1 for _ in audit_query.records_with_columns(old_database)) == len(events)
    for name in ("deny", "reason of denials", "route", "reason of failures"):
        filters, keep = CASES[name]
        assert _all(old_database, filters) == _expected(old_database, keep)
    assert verify(iter_records(old_database), head=read_head(old_database)).ok
    # Appending goes on from the migrated head.
    AuditLog(old_database).append_sync(UserChanged(admin="a", user="b", action="enable"))
    assert verify(iter_records(old_database), head=read_head(old_database)).ok


def test_migration_downgrades_to_the_previous_schema(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path}/down.db")
    upgrade(engine)
    _fill(engine, _workload()[:10])
    command.downgrade(_alembic_config(engine), "0010")
    with engine.connect() as connection:
        names = {row[0] for row in connection.execute(text(
            "SELECT name FROM sqlite_master WHERE tbl_name LIKE 'audit%'"))}
        assert "audit_reasons" not in names and "ix_audit_events_actor" in names
        assert connection.execute(text("SELECT count(*) FROM audit_events")).scalar() == 10
    engine.dispose()


def test_the_benchmark_fills_a_chain_that_verifies(engine: Engine) -> None:
    """bench/bench_audit_search.py inserts in bulk, bypassing the writer: its records must
    still be exactly what the writer would store (chain, search columns, reasons)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from bench_audit_search import fill, measure

    fill(engine, 3000)
    assert verify(iter_records(engine), head=read_head(engine)).ok
    for record, stored in audit_query.records_with_columns(engine):
        assert columns.mismatch(record.body, stored) == ""
    figures = measure(engine, repeat=1)
    assert set(figures) >= {"no filter", "reason (rare)", "dashboard, first read (14 days)"}
