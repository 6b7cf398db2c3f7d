"""`sekisho token create|list|revoke`: admin API tokens for automation, from the server.

The same rules as the API's `tokens.*` operations (name, role, at most
`admin.token_max_days`), the same storage and the same audit event (`ApiTokenChanged`,
appended durably before the secret is printed). The secret is printed once, on stdout
alone, so `sekisho token create … > file` captures nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta

from sekisho.cli._common import add_config_option, add_database_option, open_engine
from sekisho.cli.user import admin_name, audit_event, print_table

ROLES = ("superadmin", "helpdesk", "auditor")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("token", help="管理 API のトークン / admin API tokens")
    commands = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    create = commands.add_parser("create", help="トークンを作成（秘密は一度だけ表示）/ "
                                 "create a token (the secret is shown once)")
    create.add_argument("--name", required=True, help="名前 / a name (letters, digits . _ - @)")
    create.add_argument("--role", required=True, choices=ROLES, help="役割 / role")
    create.add_argument("--days", type=int, default=None,
                        help="有効日数（既定 90、上限 admin.token_max_days）/ life in days "
                             "(default 90, at most admin.token_max_days)")
    create.set_defaults(handler=run_create)

    lst = commands.add_parser("list", help="トークン一覧 / list tokens")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=run_list)

    revoke = commands.add_parser("revoke", help="トークンを失効 / revoke a token")
    revoke.add_argument("token_id", metavar="ID", help="トークン ID（16 桁）/ the token id")
    revoke.set_defaults(handler=run_revoke)
    for cmd in (create, lst, revoke):
        add_config_option(cmd)
        add_database_option(cmd)


def _max_days(args: argparse.Namespace) -> int:
    if getattr(args, "config", None):
        from sekisho.config import loader

        return loader.load_config(args.config).admin.token_max_days
    from sekisho.config.model import AdminSettings

    return AdminSettings().token_max_days


def _refused(code: str, ja: str, en: str) -> int:
    print(f"sekisho: {code}: {ja} / {en}", file=sys.stderr)
    return 2


def run_create(args: argparse.Namespace) -> int:
    from sekisho.audit.events import ApiTokenChanged
    from sekisho.console.admin.ops import AdminError
    from sekisho.console.admin.tokens import checked
    from sekisho.storage import api_tokens

    try:
        name, role, days = checked(args.name, args.role, args.days, _max_days(args))
    except AdminError as error:
        return _refused(error.code, error.ja, error.en)
    admin = admin_name()
    engine = open_engine(args)
    try:
        now = datetime.now(UTC)
        record, text = api_tokens.create(engine, name=name, role=role, created_by=admin,
                                         now=now, expires_at=now + timedelta(days=days))
        audit_event(engine, ApiTokenChanged(
            admin=admin, action="created", token=record.id, name=name, role=role,
            expires_at=record.expires_at.isoformat(), source_ip=""))
    finally:
        engine.dispose()
    print(text)
    print(f"作成しました / created: {record.id} ({role}, expires "
          f"{record.expires_at:%Y-%m-%d %H:%M} UTC). この秘密は二度と表示されません / "
          "this secret is not shown again", file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from sekisho.console.admin.tokens import token_json
    from sekisho.storage import api_tokens

    engine = open_engine(args)
    try:
        records = api_tokens.list_tokens(engine)
    finally:
        engine.dispose()
    now = datetime.now(UTC)
    rows = [token_json(r, now) for r in records]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    fmt = "%Y-%m-%d %H:%M"
    table = [("ID", "NAME", "ROLE", "STATE", "CREATED BY", "EXPIRES (UTC)", "LAST USED (UTC)")]
    table += [(r.id, r.name, r.role, row["state"], r.created_by, r.expires_at.strftime(fmt),
               r.last_used_at.strftime(fmt) if r.last_used_at else "-")
              for r, row in zip(records, rows, strict=True)]
    print_table(table)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from sekisho.audit.events import ApiTokenChanged
    from sekisho.storage import api_tokens

    engine = open_engine(args)
    try:
        record = api_tokens.get(engine, args.token_id)
        if record is None:
            return _refused("not-found", "トークンが見つかりません", "no such token")
        if not api_tokens.revoke(engine, record.id, datetime.now(UTC)):
            return _refused("already-revoked", "すでに失効しています", "already revoked")
        audit_event(engine, ApiTokenChanged(
            admin=admin_name(), action="revoked", token=record.id, name=record.name,
            role=record.role, expires_at=record.expires_at.isoformat(), source_ip=""))
    finally:
        engine.dispose()
    print(f"失効しました / revoked: {record.id} ({record.name})")
    return 0
