"""`sekisho db upgrade|status`: apply and inspect the Alembic migrations."""

from __future__ import annotations

import argparse

from sekisho.cli._common import add_config_option, add_database_option, database_url


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("db", help="データベースの移行 / database migrations")
    commands = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    for name, handler, text in (
        ("upgrade", upgrade, "最新の形式へ移行 / apply all migrations"),
        ("status", status, "現在の形式を表示 / show the current revision"),
    ):
        sub = commands.add_parser(name, help=text)
        add_config_option(sub)
        add_database_option(sub)
        sub.set_defaults(handler=handler)


def upgrade(args: argparse.Namespace) -> int:
    from sekisho.storage import database

    url = database_url(args)
    engine = database.create_database_engine(url)
    try:
        before, after = database.upgrade(engine)
    finally:
        engine.dispose()
    where = database.redact_url(url)
    if before == after:
        print(f"最新です / already up to date: {after} ({where})")
    else:
        print(f"移行しました / upgraded: {before or 'empty'} -> {after} ({where})")
    return 0


def status(args: argparse.Namespace) -> int:
    from sekisho.storage import database

    url = database_url(args)
    engine = database.create_database_engine(url)
    try:
        current, head = database.current_revision(engine), database.head_revision()
    finally:
        engine.dispose()
    state = "最新 / up to date" if current == head else "移行が必要 / upgrade needed"
    print(f"{database.redact_url(url)}: {current or 'empty'} (head {head}) — {state}")
    return 0 if current == head else 1
