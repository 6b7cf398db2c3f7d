"""SQLite WAL checkpoints run beside the audit writer, never inside its commits."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event

from sekisho.audit.events import AccessDecision
from sekisho.audit.log import AuditLog
from sekisho.storage.checkpoint import WalCheckpointer
from sekisho.storage.database import create_database_engine, upgrade


def _decision(n: int) -> AccessDecision:
    return AccessDecision(route="app", user="tanaka", decision="allow", reasons=(),
                          source_ip="192.0.2.1", method="GET", path=f"/{n}", status=200,
                          bytes_in=0, bytes_out=1024, duration_ms=0.5, session="s")


def test_the_writer_commits_without_checkpointing_and_a_thread_checkpoints_beside_it(
        tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path}/sekisho.db")
    upgrade(engine)
    pragmas: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if statement.startswith("PRAGMA wal_autocheckpoint"):
            pragmas.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    audit = AuditLog(engine, now=lambda: datetime(2026, 11, 26, tzinfo=UTC))
    audit.start()
    try:
        for batch in range(5):
            for n in range(1000):
                audit.record(_decision(batch * 1000 + n))
            audit.flush()
        # Without automatic checkpoints in the writer's commits the log would only grow:
        # the checkpointer copies it back, beside the writer.
        assert audit.checkpointer is not None
        deadline = time.monotonic() + 10
        while audit.checkpointer.checkpoints < 2:
            assert time.monotonic() < deadline, "the checkpointer is not running"
            time.sleep(0.05)
    finally:
        audit.close()
        event.remove(engine, "before_cursor_execute", seen)
        engine.dispose()
    # Once per pooled connection the writer used, never per batch.
    assert pragmas and set(pragmas) == {"PRAGMA wal_autocheckpoint=0"}
    assert len(pragmas) < 5


@pytest.mark.parametrize("url", ["postgresql://nobody@127.0.0.1:1/none", "sqlite://"])
def test_the_checkpointer_is_for_a_sqlite_file_only(url: str) -> None:
    """Not PostgreSQL; not SQLite in memory either, where the pool shares one connection
    between threads and the checkpointer's rollback would end the writer's transaction."""
    engine = create_database_engine(url)
    with pytest.raises(ValueError, match="SQLite database in a file"):
        WalCheckpointer(engine)
    audit = AuditLog(engine)
    audit.start()
    try:
        assert audit.checkpointer is None
    finally:
        audit.close()
        engine.dispose()
