"""Audit append benchmark: AccessDecision events/s through AuditLog.record (hash chain + group
commit), against plain executemany inserts without the chain, measured in the same run.

    python bench/bench_audit.py [--seconds 3] [--backends sqlite,postgresql] [--pg-url URL]
                                [--busy]

`--busy` runs both with one more thread spinning Python code, as a gateway worker's event loop
does beside its audit writer under load: a driver that gives up the GIL once per row (the
sqlite3 module's executemany) then waits a switch interval for every row.

The AuditLog figure counts only events committed by the time close() returns (the final flush
is inside the measured time). The bar for this issue is >= 20,000 events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sqlalchemy import create_engine, text

from sekisho.audit.events import AccessDecision
from sekisho.audit.log import AuditLog, AuditUnavailable
from sekisho.storage.audit_log import EVENTS
from sekisho.storage.database import create_database_engine, upgrade

BAR = 20_000
PG_URL = os.environ.get("SEKISHO_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _event(n: int) -> AccessDecision:
    return AccessDecision(route="portal", user="tanaka", decision="allow",
                          reasons=("group-authorized",), source_ip="192.0.2.1", method="GET",
                          path=f"/app/{n}", status=200, bytes_in=0, bytes_out=1024,
                          duration_ms=0.42, session="ab12cd34")


@contextmanager
def _database(backend: str, pg_url: str) -> Iterator[str]:
    """A fresh, migrated database URL, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite:///{directory}/bench.db"
            _migrate(url)
            yield url
        return
    admin = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    schema = "bench_" + secrets.token_hex(4)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in pg_url else "?"
    try:
        url = f"{pg_url}{sep}options={quote(f'-csearch_path={schema}')}"
        _migrate(url)
        yield url
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _migrate(url: str) -> None:
    engine = create_database_engine(url)
    upgrade(engine)
    engine.dispose()


def bench_audit_log(url: str, seconds: float) -> dict[str, float]:
    engine = create_database_engine(url)
    log = AuditLog(engine, flush_interval=0.2, batch_max=1000)
    log.start()
    accepted = refused = 0
    started = time.perf_counter()
    end = started + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            try:
                log.record(_event(accepted))
            except AuditUnavailable:  # writer behind: the gateway would deny this request
                refused += 1
                time.sleep(0.001)
                break
            accepted += 1
    log.close()
    elapsed = time.perf_counter() - started
    committed = log.committed
    engine.dispose()
    return {"events_per_s": committed / elapsed, "committed": committed,
            "refused_while_behind": refused, "seconds": elapsed}


def bench_plain_inserts(url: str, seconds: float, batch: int = 1000) -> dict[str, float]:
    """Reference: the same table, executemany of ready-made rows, one commit per batch."""
    engine = create_database_engine(url)
    body = json.dumps({"path": "/app/0", "user": "tanaka"})
    now = datetime.now(UTC)
    seq = 0
    started = time.perf_counter()
    end = started + seconds
    while time.perf_counter() < end:
        rows = [{"seq": seq + i + 1, "occurred_at": now, "event_type": "access.decision",
                 "actor": "tanaka", "body": body, "prev_hash": "", "hash": ""}
                for i in range(batch)]
        with engine.begin() as connection:
            connection.execute(EVENTS.insert(), rows)
        seq += batch
    elapsed = time.perf_counter() - started
    engine.dispose()
    return {"events_per_s": seq / elapsed, "committed": seq, "seconds": elapsed}


def _postgres_reachable(pg_url: str) -> bool:
    try:
        engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@contextmanager
def _busy_thread(enabled: bool) -> Iterator[None]:
    """A thread that never blocks, like an event loop with requests always waiting."""
    stop = threading.Event()

    def spin() -> None:
        count = 0
        while not stop.is_set():
            for _ in range(1000):
                count += 1

    thread = threading.Thread(target=spin, daemon=True)
    if enabled:
        sys.setswitchinterval(0.001)  # as a gateway worker (sekisho.app.tune_worker_process)
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if enabled:
            thread.join()


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-url", default=PG_URL)
    parser.add_argument("--busy", action="store_true",
                        help="run beside a thread that keeps the GIL busy (a loaded worker)")
    args = parser.parse_args(argv)
    results: dict[str, object] = {"bar_events_per_s": BAR, "busy": args.busy}
    for backend in args.backends.split(","):
        if backend == "postgresql" and not _postgres_reachable(args.pg_url):
            results[backend] = {"skipped": f"PostgreSQL not reachable at {args.pg_url}"}
            print(f"{backend}: skipped (not reachable)")
            continue
        with _database(backend, args.pg_url) as url, _busy_thread(args.busy):
            audit = bench_audit_log(url, args.seconds)
        with _database(backend, args.pg_url) as url, _busy_thread(args.busy):
            plain = bench_plain_inserts(url, args.seconds)
        ratio = audit["events_per_s"] / plain["events_per_s"]
        results[backend] = {"audit_log": audit, "plain_executemany": plain, "ratio": ratio,
                            "meets_bar": audit["events_per_s"] >= BAR}
        print(f"{backend:10s} AuditLog.record (chain + group commit): "
              f"{audit['events_per_s']:>9,.0f} events/s  | plain executemany: "
              f"{plain['events_per_s']:>9,.0f} rows/s  | ratio {ratio:.2f}  | bar {BAR:,}: "
              f"{'OK' if audit['events_per_s'] >= BAR else 'MISSED'}")
    return results


if __name__ == "__main__":
    main()
