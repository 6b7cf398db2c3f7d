"""`sekisho user add|list|disable|enable|passwd`: local accounts, with the password policy.

What each change does is `identity.accounts` (the admin API does the same through it).
Every change is appended to the audit chain (`UserChanged`) with the operating-system user
as the administrator. Passwords are read with a hidden prompt (twice) on a terminal, or one
line from standard input with `--password-stdin` (scripts); never from the command line,
where they would land in the shell history and the process list.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sekisho.cli._common import add_config_option, add_database_option, open_engine
from sekisho.errors import BadRequest

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from sekisho.audit.events import AuditEvent
    from sekisho.identity.sessions import SessionManager

def admin_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers): still record that it was the CLI
        return "cli"


def audit_event(engine: Engine, event: AuditEvent) -> None:
    """Append durably; a change whose audit record cannot be written fails loudly."""
    from sekisho.audit.log import AuditLog

    AuditLog(engine).append_sync(event)


def _common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_config_option(parser)
    add_database_option(parser)
    return parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("user", help="ユーザー管理 / local user accounts")
    commands = parser.add_subparsers(dest="user_command", metavar="ACTION", required=True)

    add = _common(commands.add_parser("add", help="ユーザーを追加 / add a user"))
    add.add_argument("name")
    add.add_argument("--email", default="")
    add.add_argument("--display-name", default="", help="表示名 (氏名) / display name")
    add.add_argument("--password-stdin", action="store_true",
                     help="標準入力の1行をパスワードとする / read the password from stdin")
    add.add_argument("--group", action="append", default=[], metavar="G",
                     help="所属グループ (複数可) / add to group (repeatable)")
    add.set_defaults(handler=run_add)

    lst = _common(commands.add_parser("list", help="ユーザー一覧 / list users"))
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=run_list)

    for action, text in (("disable", "無効化 / disable (and end its sessions)"),
                         ("enable", "有効化 / enable")):
        cmd = _common(commands.add_parser(action, help=text))
        cmd.add_argument("name")
        cmd.set_defaults(handler=run_disable if action == "disable" else run_enable)

    passwd = _common(commands.add_parser("passwd", help="パスワード変更 / set a password"))
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.set_defaults(handler=run_passwd)

    reset = _common(commands.add_parser(
        "reset-factors",
        help="2 段階目の認証要素（TOTP・パスキー）とリカバリーコードをすべて削除 / remove every "
             "second factor (TOTP, passkeys) and recovery code (lost phone); ends the user's "
             "sessions"))
    reset.add_argument("name")
    reset.set_defaults(handler=run_reset_factors)


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise BadRequest("端末がないため --password-stdin を指定してください / no terminal: "
                         "use --password-stdin", code="password-input")
    first = getpass.getpass("パスワード / Password: ")
    second = getpass.getpass("もう一度 / Again: ")
    if first != second:
        raise BadRequest("パスワードが一致しません / the passwords do not match",
                         code="password-mismatch")
    return first


def _checked_hash(password: str, name: str, display_name: str, email: str) -> str | None:
    from sekisho.identity.accounts import PasswordRejected, hash_new_password

    try:
        return hash_new_password(password, username=name, display_name=display_name,
                                 email=email)
    except PasswordRejected as exc:
        print("パスワードが要件を満たしていません / the password does not meet the policy:",
              file=sys.stderr)
        for problem in exc.problems:
            print(f"  - [{problem.code}] {problem.ja} / {problem.en}", file=sys.stderr)
        return None


def session_manager(engine: Engine) -> SessionManager:
    """Revocations through the manager, as the gateway makes them (change feed included)."""
    from sekisho.config.model import SessionSettings
    from sekisho.identity.sessions import SessionManager

    return SessionManager(engine, SessionSettings())


def _audit(engine: Engine) -> Callable[[AuditEvent], None]:
    return lambda event: audit_event(engine, event)


def run_add(args: argparse.Namespace) -> int:
    from sekisho.identity.accounts import create_account
    from sekisho.storage import users

    name = users.valid_name(args.name)
    password = read_password(args.password_stdin)
    password_hash = _checked_hash(password, name, args.display_name, args.email)
    if password_hash is None:
        return 1
    engine = open_engine(args)
    try:
        user = create_account(engine, _audit(engine), username=name, admin=admin_name(),
                              display_name=args.display_name, email=args.email,
                              password_hash=password_hash, groups=args.group)
    finally:
        engine.dispose()
    print(f"ユーザー {user.username} を追加しました / added user {user.username}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from sekisho.storage import users

    engine = open_engine(args)
    try:
        rows = [(u, users.groups_of_user(engine, u.id)) for u in users.list_users(engine)]
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([{
            "username": u.username, "display_name": u.display_name, "email": u.email,
            "disabled": u.disabled, "groups": groups, "created_at": u.created_at.isoformat(),
            "password_changed_at": (u.password_changed_at.isoformat()
                                    if u.password_changed_at else None),
        } for u, groups in rows], ensure_ascii=False, indent=2))
        return 0
    table = [("USERNAME", "DISPLAY NAME", "EMAIL", "STATUS", "GROUPS")]
    table += [(u.username, u.display_name, u.email, "disabled" if u.disabled else "active",
               ",".join(groups)) for u, groups in rows]
    print_table(table)
    return 0


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    from unicodedata import east_asian_width

    def width(text: str) -> int:  # full-width characters take two terminal columns
        return sum(2 if east_asian_width(c) in "WF" else 1 for c in text)

    widths = [max(width(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell + " " * (w - width(cell)) for cell, w in zip(row, widths, strict=True))
              .rstrip())


def _set_disabled(args: argparse.Namespace, disabled: bool) -> int:
    from sekisho.identity.accounts import set_disabled

    engine = open_engine(args)
    try:  # disabling ends the user's sessions now, not only at the next lookup
        user = set_disabled(engine, session_manager(engine), _audit(engine), args.name,
                            disabled, admin=admin_name())
    finally:
        engine.dispose()
    state = "無効化しました / disabled" if disabled else "有効化しました / enabled"
    print(f"{user.username}: {state}")
    return 0


def run_disable(args: argparse.Namespace) -> int:
    return _set_disabled(args, True)


def run_enable(args: argparse.Namespace) -> int:
    return _set_disabled(args, False)


def run_passwd(args: argparse.Namespace) -> int:
    from sekisho.identity.accounts import set_password
    from sekisho.storage import users

    engine = open_engine(args)
    try:
        user = users.require_user(engine, args.name)
        password = read_password(args.password_stdin)
        password_hash = _checked_hash(password, user.username, user.display_name, user.email)
        if password_hash is None:
            return 1
        # An administrator's reset ends the user's sessions (the old password may be known).
        ended = set_password(engine, session_manager(engine), _audit(engine), user.username,
                             password_hash, admin=admin_name())
    finally:
        engine.dispose()
    print(f"{user.username}: パスワードを設定しました / password set")
    if ended:
        print(f"セッション {ended} 件を終了しました / ended {ended} session(s)")
    return 0


def run_reset_factors(args: argparse.Namespace) -> int:
    """Lost phone: the user enrols again at the next sign-in (MFA stays required); their
    sessions end."""
    from sekisho.identity.accounts import reset_factors
    from sekisho.storage import users

    engine = open_engine(args)
    try:
        user = users.require_user(engine, args.name)
        removed, codes, _ = reset_factors(engine, session_manager(engine), _audit(engine),
                                          user.username, admin=admin_name())
    finally:
        engine.dispose()
    print(f"{user.username}: 認証要素 {removed} 件とリカバリーコード {codes} 件を削除しました / "
          f"removed {removed} factor(s) and {codes} recovery code(s)")
    return 0
