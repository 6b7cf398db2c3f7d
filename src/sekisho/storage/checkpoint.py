"""SQLite WAL checkpoints off the audit writer's commit path.

In WAL mode SQLite copies the log back into the database file (a checkpoint, ending in an
fsync) inside whichever commit makes the log pass 1,000 pages. Under load that commit was the
audit writer's: a batch that commits in milliseconds took 0.2–0.9 s, the log lagged past
`max_lag` and the gateway refused requests (503) until it caught up. So the audit writer's
connections skip automatic checkpoints and this thread runs passive ones, which never block a
writer, every `interval` seconds. Other connections keep SQLite's automatic checkpoint as a
backstop.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine

log = logging.getLogger("sekisho.storage.checkpoint")


def has_wal(engine: Engine) -> bool:
    """A SQLite database in a file (in WAL mode: `storage.database`); not one in memory."""
    database = engine.url.database
    return engine.dialect.name == "sqlite" and bool(database) and database != ":memory:"


class WalCheckpointer:
    """A daemon thread checkpointing one SQLite database in WAL mode."""

    def __init__(self, engine: Engine, interval: float = 0.25) -> None:
        if not has_wal(engine):
            raise ValueError("WAL checkpoints are for a SQLite database in a file")
        self._engine = engine
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_at = 0.0
        self.checkpoints = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sekisho-wal-checkpoint",
                                            daemon=True)
            self._thread.start()

    @property
    def native_id(self) -> int | None:
        """The kernel's id of the thread (for its CPU priority), once started."""
        return None if self._thread is None else self._thread.native_id

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def checkpoint(self) -> None:
        """One passive checkpoint: copies what no reader still needs, waits for nobody."""
        with self._engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()
        self.checkpoints += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.checkpoint()
            except Exception as exc:  # the backstop (automatic checkpoints) still holds
                now = time.monotonic()
                if now - self._warned_at > 60:
                    self._warned_at = now
                    log.warning("SQLite WAL checkpoint failed (will retry): %s", exc)
