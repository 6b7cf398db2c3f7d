"""`sekisho audit verify|export`: check the hash chain, export records for auditors and Excel.

`verify` exits 0 with a summary, or 1 naming the first broken record, so it can run from cron
and alert. `export` streams; dates without an offset are read as Japan time (Asia/Tokyo).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, time
from typing import TextIO

from sekisho.cli._common import add_config_option, add_database_option, open_engine
from sekisho.errors import BadRequest

FORMATS = ("jsonl", "csv")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("audit", help="監査ログ / audit log: verify, export")
    commands = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    verify = commands.add_parser(
        "verify", help="ハッシュチェーンを検証 / verify the whole hash chain")
    add_config_option(verify)
    add_database_option(verify)
    verify.add_argument("--jsonl", metavar="FILE", default=None,
                        help="データベースではなく全件JSONLエクスポートを検証 / verify a full "
                             "JSONL export instead of the database")
    verify.set_defaults(handler=run_verify)

    export = commands.add_parser("export", help="監査ログを出力 / export audit records")
    add_config_option(export)
    add_database_option(export)
    export.add_argument("--since", type=parse_time, default=None,
                        help="開始日時 (含む) / from (inclusive), ISO 8601; no offset = JST")
    export.add_argument("--until", type=parse_time, default=None,
                        help="終了日時 (含まない) / until (exclusive), ISO 8601; no offset = JST")
    export.add_argument("--format", choices=FORMATS, default="jsonl",
                        help="jsonl (UTC, with chain fields) or csv (Excel, JST)")
    export.add_argument("--type", dest="event_type", default=None,
                        help="イベント種別 / event type, e.g. access.decision")
    export.add_argument("--user", default=None, help="操作者 / actor (user or admin name)")
    export.add_argument("-o", "--output", default=None, help="出力ファイル / output file "
                                                             "(default: standard output)")
    export.set_defaults(handler=run_export)


def parse_time(value: str) -> datetime:
    """ISO 8601 date or date-time; without an offset it is Japan time."""
    from sekisho.audit.export import JST

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"日時の形式が不正です / not an ISO 8601 date or time: {value!r}") from None
    if len(value) <= 10:  # a date alone means the start of that day
        moment = datetime.combine(date.fromisoformat(value), time())
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=JST)


def run_verify(args: argparse.Namespace) -> int:
    from sekisho.audit.chain import verify

    if args.jsonl:
        from sekisho.audit.export import records_from_jsonl

        with open(args.jsonl, encoding="utf-8") as lines:
            result = verify(records_from_jsonl(lines))
    else:
        from sekisho.storage.audit_query import verify_stored

        engine = open_engine(args)
        try:
            result, _ = verify_stored(engine)  # the chain and the search columns
        finally:
            engine.dispose()
    if result.ok:
        print(f"監査ログは正常です / audit chain OK: {result.summary()}")
        return 0
    print(f"監査ログが改ざんされています / audit chain BROKEN: {result.summary()} "
          f"({result.checked} records before it are intact)", file=sys.stderr)
    return 1


@contextmanager
def _output(path: str | None, csv_format: bool) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    newline = "" if csv_format else "\n"
    with open(path, "w", encoding="utf-8", newline=newline) as out:
        yield out


def run_export(args: argparse.Namespace) -> int:
    from sekisho.audit.export import write_csv, write_jsonl
    from sekisho.storage.audit_log import search_records

    if args.since and args.until and args.since >= args.until:
        raise BadRequest("--since は --until より前にしてください / --since must be before --until")
    engine = open_engine(args)
    try:
        records = search_records(engine, since=args.since, until=args.until,
                                 event_type=args.event_type, actor=args.user)
        with _output(args.output, args.format == "csv") as out:
            count = (write_csv if args.format == "csv" else write_jsonl)(records, out)
    finally:
        engine.dispose()
    if args.output:
        print(f"{count} 件を出力しました / exported {count} records to {args.output}",
              file=sys.stderr)
    return 0
