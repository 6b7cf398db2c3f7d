"""AuditRelay (a worker) → AuditRelayServer + AuditLog (the master) over a real Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from sekisho.audit.chain import verify
from sekisho.audit.events import AccessDecision, SignInSucceeded
from sekisho.audit.log import AuditLog, AuditUnavailable
from sekisho.audit.relay import AuditRelay, AuditRelayServer, line_of, record_of
from sekisho.storage.audit_log import iter_records, read_head


def decision(n: int, user: str = "tanaka") -> AccessDecision:
    return AccessDecision(route="portal", user=user, decision="allow", reasons=("ok",),
                          source_ip="192.0.2.1", method="GET", path=f"/n/{n}", status=200,
                          bytes_in=0, bytes_out=512, duration_ms=0.25, session="ab12")


def signin(user: str) -> SignInSucceeded:
    return SignInSucceeded(user=user, source_ip="192.0.2.1", methods=("pwd",), session="s1",
                           user_agent="test")


@contextlib.asynccontextmanager
async def relayed(audit: AuditLog, path: str) -> AsyncIterator[AuditRelay]:
    """A master's relay server over `audit` at `path`, and a worker's relay connected to it
    (healthy); both closed gracefully after."""
    server = AuditRelayServer(audit, path)
    await server.start()
    relay = AuditRelay(path)
    await relay.start()
    await wait_until(lambda: relay.healthy)
    try:
        yield relay
    finally:
        await relay.close()
        await server.close()


async def wait_until(condition: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_wire_form_keeps_the_canonical_body_and_hostile_text() -> None:
    from datetime import UTC, datetime

    moment = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
    event = decision(1, user="ta\tna\nka\"\u2028")  # control characters cannot split records
    record = record_of(line_of(event, moment))
    assert record.actor == event.actor and record.occurred_at == moment
    assert record.event_type == "access.decision" and "\n" not in record.body


def test_durable_ack_batching_order_and_graceful_close(engine: Engine, tmp_path: Path) -> None:
    path = str(tmp_path / "a.sock")
    audit = AuditLog(engine, flush_interval=0.2)
    audit.start()

    async def scenario() -> None:
        server = AuditRelayServer(audit, path)
        await server.start()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        relay = AuditRelay(path)
        await relay.start()
        await wait_until(lambda: relay.healthy)
        for n in range(300):  # several loop iterations within `send_delay`: one frame
            relay.record(decision(n))
            if n % 50 == 0:
                await asyncio.sleep(0)
        assert relay.batches == 0  # gathering, not one frame per loop iteration
        await wait_until(lambda: relay.batches)
        assert relay.batches == 1
        await relay.append(signin("suzuki"))  # returns once committed
        records = list(iter_records(engine))
        assert len(records) == 301 and '"user":"suzuki"' in records[-1].body
        for n in range(300, 1400):  # past `send_max`: sent at once, not held back
            relay.record(decision(n))
        assert relay.batches == 1 + 1100 // relay.send_max
        await relay.close()  # graceful: everything handed over is acknowledged
        await server.close()
        assert not os.path.exists(path)

    asyncio.run(scenario())
    audit.close()
    records = list(iter_records(engine))
    assert verify(records, head=read_head(engine)).ok
    paths = [r.body.split('"path":"', 1)[1].split('"', 1)[0] for r in records
             if r.event_type == "access.decision"]
    assert paths == [f"/n/{n}" for n in range(1400)]  # none lost, in order


def test_master_gone_refuses_then_reconnects(engine: Engine, tmp_path: Path) -> None:
    path = str(tmp_path / "a.sock")
    audit = AuditLog(engine, flush_interval=0.05)
    audit.start()

    async def scenario() -> None:
        server = AuditRelayServer(audit, path)
        await server.start()
        relay = AuditRelay(path)
        relay.reconnect_delay = 0.05
        await relay.start()
        await wait_until(lambda: relay.healthy)
        relay.record(decision(0))
        await server.close()  # the master stops
        await wait_until(lambda: not relay.healthy)
        with pytest.raises(AuditUnavailable):
            relay.record(decision(1))
        with pytest.raises(AuditUnavailable):
            await relay.append(signin("suzuki"))
        server = AuditRelayServer(audit, path)  # the master is back
        await server.start()
        await wait_until(lambda: relay.healthy)
        await relay.append(signin("sato"))
        await relay.close()
        await server.close()

    asyncio.run(scenario())
    audit.close()
    bodies = [r.body for r in iter_records(engine)]
    assert any('"user":"sato"' in b for b in bodies)
    assert not any('"user":"suzuki"' in b for b in bodies)  # refused: not recorded
    assert not any('"/n/1"' in b for b in bodies)


def test_a_worker_stops_waiting_for_a_master_that_is_gone(tmp_path: Path) -> None:
    """A master killed while its worker starts: the worker must not spend the whole connect
    timeout dialling a dead socket (it exits with its master; see app.master_gone)."""

    async def scenario() -> float:
        relay = AuditRelay(str(tmp_path / "nobody.sock"))
        relay.reconnect_delay = 0.05
        started = time.monotonic()
        await relay.start(timeout=10.0, give_up=lambda: True)
        elapsed = time.monotonic() - started
        assert not relay.healthy  # refuses: never a silent pass
        await relay.close(timeout=0.1)
        return elapsed

    assert asyncio.run(scenario()) < 1.0


def test_a_master_that_stops_acknowledging_makes_the_relay_refuse(tmp_path: Path) -> None:
    path = str(tmp_path / "a.sock")

    async def scenario() -> None:
        # A master that reports itself healthy but never commits (hung writer, stopped disk).
        from sekisho.audit.relay import _STATUS, _frame

        writers: list[asyncio.StreamWriter] = []

        async def hung(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            while True:
                writer.write(_frame(_STATUS, 0, b"1"))
                await asyncio.sleep(0.05)

        server = await asyncio.start_unix_server(hung, path)
        relay = AuditRelay(path)
        relay.ack_timeout = 0.3
        await relay.start()
        await wait_until(lambda: relay.healthy)
        relay.record(decision(0))
        await wait_until(lambda: not relay.healthy, timeout=2.0)
        with pytest.raises(AuditUnavailable):
            relay.record(decision(1))
        with pytest.raises(AuditUnavailable):
            await relay.close(timeout=0.2)
        for writer in writers:
            writer.close()
        server.close()

    asyncio.run(scenario())


def test_a_failing_database_at_the_master_makes_workers_refuse(engine: Engine,
                                                               tmp_path: Path) -> None:
    path = str(tmp_path / "a.sock")
    audit = AuditLog(engine, flush_interval=0.05)
    audit.start()

    async def scenario() -> None:
        async with relayed(audit, path) as relay:
            with engine.begin() as connection:  # the database breaks under the master
                connection.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
            relay.record(decision(0))  # sent; the master's commit fails and it holds the event
            await wait_until(lambda: not relay.healthy)
            with pytest.raises(AuditUnavailable):
                relay.record(decision(1))
            with engine.begin() as connection:
                connection.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
            await wait_until(lambda: relay.healthy)

    asyncio.run(scenario())
    audit.close()
    bodies = [r.body for r in iter_records(engine)]
    assert len(bodies) == 1 and '"/n/0"' in bodies[0]  # held and committed after recovery


def test_record_access_stores_what_record_of_the_event_stores(engine: Engine,
                                                             tmp_path: Path) -> None:
    """The gateway's per-request call hands over the fields, not the event: through the relay
    and through a local log, each is stored exactly as `record(AccessDecision(*fields))` is
    (values the written-out body refuses go through the event, as before)."""
    path = str(tmp_path / "a.sock")
    audit = AuditLog(engine, flush_interval=0.05)
    audit.start()
    usual = ("portal", "ta\"na\nka", "allow", ("ok", "group-authorized"), "192.0.2.1", "GET",
             "/a b/関所", 200, 0, 512, 0.25, "ab12")
    # An int subclass (HTTPStatus) as the status: the written-out body refuses it as Python
    # (the event's encoder writes it) and compiled code takes it as the int it is; 200 either way.
    unusual = (*usual[:7], HTTPStatus.OK, *usual[8:])

    async def scenario() -> None:
        async with relayed(audit, path) as relay:
            for fields in (usual, unusual):
                relay.record_access(fields)  # type: ignore[arg-type]
                relay.record(AccessDecision(*fields))  # type: ignore[arg-type]

    asyncio.run(scenario())
    for fields in (usual, unusual):
        audit.record_access(fields)  # type: ignore[arg-type]
        audit.record(AccessDecision(*fields))  # type: ignore[arg-type]
    audit.close()
    records = list(iter_records(engine))
    assert len(records) == 8 and verify(records, head=read_head(engine)).ok

    def timeless(record: object) -> tuple[str, str, str]:
        body = record.body  # type: ignore[attr-defined]
        start = body.index('"occurred_at":"')
        end = body.index('"', start + 15)
        return (record.event_type, record.actor,  # type: ignore[attr-defined]
                body[:start] + body[end:])

    pairs = [(timeless(a), timeless(b)) for a, b in zip(records[::2], records[1::2],
                                                         strict=True)]
    assert all(a == b for a, b in pairs)
    assert all('"status":200' in pair[0][2] for pair in pairs)
    assert pairs[0][0][1] == 'ta"na\nka'


@pytest.mark.parametrize("actor", [
    "tanaka", "", "田中 花子", "🏯", 'ta"na', "back\\slash", "tab\there", "nul\x00", "\u2028",
    "\x7f", " spaced ", "/", "a\u0085b",
])
def test_the_actor_of_a_line_is_its_json_string(actor: str) -> None:
    """The master reads the actor without the JSON parser when it can: always the same text
    as the parser's, and anything that is not a JSON string is still refused."""
    moment = "2026-04-01T00:00:00.000000Z"
    line = f"signin.success\t{moment}\t{json.dumps(actor, ensure_ascii=False)}\t{{}}"
    assert record_of(line).actor == actor
    for broken in ('"a"b"', '"raw\x01"', "'single'", '"unterminated', "plain"):
        with pytest.raises(ValueError):
            record_of(f"signin.success\t{moment}\t{broken}\t{{}}")
