"""Child process for the multi-process audit tests (run as a script, not collected).

    _child.py URL append NAME BATCHES SIZE T   append_batch directly from wall-clock time T
    _child.py URL record SECONDS             AuditLog.record at full speed, printing progress
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

from sekisho.audit.chain import canonical_json
from sekisho.audit.events import AccessDecision, SignedOut
from sekisho.audit.log import AuditLog, AuditUnavailable, _fields_of
from sekisho.storage.audit_log import PendingRecord, append_batch
from sekisho.storage.database import create_database_engine


def append(url: str, name: str, batches: int, size: int, start_at: float) -> None:
    engine = create_database_engine(url)
    with engine.connect():
        pass  # connect before the start line, so both children begin appending together
    time.sleep(max(0.0, start_at - time.time()))
    for b in range(batches):
        items = []
        for i in range(size):
            event = SignedOut(user=name, session=f"{b}-{i}")
            now = datetime.now(UTC)
            items.append(PendingRecord(event.event_type, now, event.actor,
                                       canonical_json(event.event_type, now, _fields_of(event))))
        append_batch(engine, items)
        time.sleep(0.001)  # a writer's pause between group commits
    engine.dispose()


def record(url: str, seconds: float) -> None:
    engine = create_database_engine(url)
    audit = AuditLog(engine, flush_interval=0.2)
    audit.start()
    print("ready", time.monotonic(), flush=True)
    accepted = refused = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        event = AccessDecision(route="r", user="u", decision="allow", reasons=("ok",),
                               source_ip="127.0.0.1", method="GET", path=f"/n/{accepted}",
                               status=200, bytes_in=0, bytes_out=1024, duration_ms=0.1)
        try:
            audit.record(event)
        except AuditUnavailable:
            refused += 1
            time.sleep(0.001)  # like the gateway: this request is denied, the next one retries
            continue
        accepted += 1
        if accepted % 1000 == 0:
            # `accepted` events have been handed to the log by this moment.
            print("accepted", accepted, time.monotonic(), refused, flush=True)
    audit.close()
    print("closed", accepted, flush=True)


if __name__ == "__main__":
    if sys.argv[2] == "append":
        append(sys.argv[1], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
    else:
        record(sys.argv[1], float(sys.argv[3]))
