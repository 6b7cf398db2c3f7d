"""`sekisho keys list|rotate`: the assertion signing keys.

`rotate` makes a new active ES256 key; the previous keys stay in the published JWKS for
`--retire-after` hours so assertions signed just before the rotation still verify. Running
gateways pick the new key up within a minute (they reload keys in the background).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from sekisho.cli._common import add_config_option, add_database_option, open_engine
from sekisho.gateway.keys import KeyRing
from sekisho.storage.keys import SigningKeyRepository


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("keys", help="署名鍵の一覧とローテーション / signing keys")
    commands = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    listing = commands.add_parser("list", help="鍵の一覧 / list keys")
    rotate = commands.add_parser("rotate", help="新しい鍵を作成 / make a new active key")
    rotate.add_argument("--retire-after", type=float, default=24.0, metavar="HOURS",
                        help="古い鍵を公開し続ける時間 / hours older keys stay published "
                             "(default 24)")
    for sub in (listing, rotate):
        add_config_option(sub)
        add_database_option(sub)
    listing.set_defaults(handler=_list)
    rotate.set_defaults(handler=_rotate)


def _list(args: argparse.Namespace) -> int:
    engine = open_engine(args)
    try:
        rows = SigningKeyRepository(engine).all()
    finally:
        engine.dispose()
    now = datetime.now(UTC)
    active = next((r.kid for r in rows if r.retired_at is None), None)
    print(f"{'KID':<28} {'STATUS':<10} {'CREATED (UTC)':<20} RETIRES (UTC)")
    for row in rows:
        if row.kid == active:
            status = "active"
        elif row.retired_at is None or row.retired_at > now:
            status = "published"
        else:
            status = "retired"
        retires = row.retired_at.strftime("%Y-%m-%d %H:%M") if row.retired_at else "-"
        print(f"{row.kid:<28} {status:<10} {row.created_at:%Y-%m-%d %H:%M}     {retires}")
    if not rows:
        print("鍵はまだありません (初回起動時に作成されます) / no keys yet (made at first start)")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    engine = open_engine(args)
    try:
        keyring = KeyRing(SigningKeyRepository(engine))
        kid = keyring.rotate(timedelta(hours=args.retire_after))
        _audit(engine, kid)
    finally:
        engine.dispose()
    print(f"新しい署名鍵 / new signing key: {kid}")
    return 0


def _audit(engine: object, kid: str) -> None:
    """Record the rotation in the audit chain when the audit log is available."""
    try:
        from sekisho.audit.events import SigningKeyRotated
        from sekisho.audit.log import AuditLog
    except ImportError:  # pragma: no cover - the audit package ships with Sekisho
        return
    log = AuditLog(engine)  # type: ignore[arg-type]
    try:
        log.append_sync(SigningKeyRotated(kid=kid, admin="cli"))
    finally:
        log.close()
