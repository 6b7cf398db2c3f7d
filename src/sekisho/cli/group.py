"""`sekisho group add|members`: groups that policies name, and who belongs to them.

What each change does is `identity.accounts` (the admin API does the same through it).
Every change is appended to the audit chain (`GroupChanged`).
"""

from __future__ import annotations

import argparse
import json

from sekisho.cli._common import add_config_option, add_database_option, open_engine
from sekisho.cli.user import admin_name, audit_event, print_table


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("group", help="グループ管理 / groups and membership")
    commands = parser.add_subparsers(dest="group_command", metavar="ACTION", required=True)

    add = commands.add_parser("add", help="グループを追加 / add a group")
    add.add_argument("name")
    add.add_argument("--description", default="")
    add.set_defaults(handler=run_add)

    members = commands.add_parser(
        "members", help="メンバーの表示・追加・削除 / list, add or remove members")
    members.add_argument("name")
    members.add_argument("--add", action="append", default=[], metavar="USER")
    members.add_argument("--remove", action="append", default=[], metavar="USER")
    members.add_argument("--json", action="store_true")
    members.set_defaults(handler=run_members)

    lst = commands.add_parser("list", help="グループ一覧 / list groups")
    lst.set_defaults(handler=run_list)
    for cmd in (add, members, lst):
        add_config_option(cmd)
        add_database_option(cmd)


def run_add(args: argparse.Namespace) -> int:
    from sekisho.identity.accounts import create_group

    engine = open_engine(args)
    try:
        group = create_group(engine, lambda event: audit_event(engine, event), args.name,
                             admin=admin_name(), description=args.description)
    finally:
        engine.dispose()
    print(f"グループ {group.name} を追加しました / added group {group.name}")
    return 0


def run_members(args: argparse.Namespace) -> int:
    from sekisho.identity.accounts import add_member, remove_member
    from sekisho.storage import users

    engine = open_engine(args)
    admin = admin_name()
    try:
        group = users.require_group(engine, args.name)
        for name in args.add:
            add_member(engine, lambda event: audit_event(engine, event), group.name, name,
                       admin=admin)
        for name in args.remove:
            remove_member(engine, lambda event: audit_event(engine, event), group.name, name,
                          admin=admin)
        members = users.group_members(engine, group.name)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([m.username for m in members], ensure_ascii=False))
    else:
        for member in members:
            print(member.username)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from sekisho.storage import users

    engine = open_engine(args)
    try:
        rows = [(g.name, g.description, str(len(users.group_members(engine, g.name))))
                for g in users.list_groups(engine)]
    finally:
        engine.dispose()
    print_table([("GROUP", "DESCRIPTION", "MEMBERS"), *rows])
    return 0
