"""`sekisho session list|revoke`: see who is signed in, and end sessions now.

A revocation is announced on the change feed in its own transaction, so every gateway
process drops the session from its cache and cuts its WebSockets within a second;
`session.cache_ttl` bounds the delay only while a process cannot read the feed
(docs/revocation.md). It is appended to the audit chain (`SessionRevoked`).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from sekisho.cli._common import add_config_option, add_database_option, open_engine
from sekisho.cli.user import admin_name, audit_event, print_table

if TYPE_CHECKING:
    from sekisho.config.model import SessionSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("session", help="セッション管理 / sign-in sessions")
    commands = parser.add_subparsers(dest="session_command", metavar="ACTION", required=True)

    lst = commands.add_parser("list", help="有効なセッション一覧 / list active sessions")
    lst.add_argument("--user", default=None)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=run_list)

    revoke = commands.add_parser("revoke", help="セッションを終了 / revoke sessions")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("id_prefix", nargs="?", help="セッション ID の先頭 8 桁以上 / "
                        "at least 8 leading hex digits of the session id")
    target.add_argument("--user", default=None, help="このユーザーの全セッション / "
                        "every session of this user")
    revoke.add_argument("--reason", default="admin")
    revoke.set_defaults(handler=run_revoke)
    for cmd in (lst, revoke):
        add_config_option(cmd)
        add_database_option(cmd)


def _settings(args: argparse.Namespace) -> SessionSettings:
    from sekisho.config.model import SessionSettings

    if getattr(args, "config", None):
        from sekisho.config import loader

        return loader.load_config(args.config).session
    return SessionSettings()


def run_list(args: argparse.Namespace) -> int:
    from sekisho.identity.sessions import SessionManager

    engine = open_engine(args)
    try:
        records = SessionManager(engine, _settings(args)).list_active(args.user)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([{
            "id": r.id[:12], "user": r.username, "source_ip": r.source_ip,
            "created_at": r.created_at.isoformat(), "last_seen_at": r.last_seen_at.isoformat(),
            "expires_at": r.expires_at.isoformat(), "methods": sorted(r.auth_methods),
            "user_agent": r.user_agent,
        } for r in records], ensure_ascii=False, indent=2))
        return 0
    table = [("ID", "USER", "SOURCE IP", "CREATED (UTC)", "LAST SEEN (UTC)", "EXPIRES (UTC)")]
    fmt = "%Y-%m-%d %H:%M"
    table += [(r.id[:12], r.username, r.source_ip, r.created_at.strftime(fmt),
               r.last_seen_at.strftime(fmt), r.expires_at.strftime(fmt)) for r in records]
    print_table(table)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from sekisho.identity.sessions import SessionManager

    engine = open_engine(args)
    try:
        manager = SessionManager(engine, _settings(args))
        if args.user:
            events = manager.revoke_user(args.user, admin_name(), args.reason)
        else:
            events = manager.revoke(args.id_prefix, admin_name(), args.reason)
        for event in events:
            audit_event(engine, event)
    finally:
        engine.dispose()
    for event in events:
        print(f"終了しました / revoked: {event.session} ({event.user})")
    if not events:
        print("有効なセッションはありません / no live sessions")
    return 0
