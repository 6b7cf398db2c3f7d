"""`sekisho serve`: run the gateway from a configuration file, or the embedded demo."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sekisho.cli._common import add_config_option


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="ゲートウェイを起動 / run the gateway",
        description="ゲートウェイを起動します。--demo は SQLite・デモ用アプリ・デモ利用者で"
        "起動します。 Run the gateway; --demo runs the embedded demo "
        "(SQLite, demo apps and users).",
    )
    add_config_option(parser)
    parser.add_argument("--demo", action="store_true",
                        help="組み込みのデモ構成で起動 / run the embedded demo")
    parser.add_argument("--demo-reset", action="store_true",
                        help="デモの設定ファイルを初期状態で書き直して起動 (--demo を含む) / "
                             "rewrite the demo configuration file afresh (implies --demo)")
    parser.add_argument("--data-dir", default="./var/demo",
                        help="デモのデータ置き場 / demo data directory (default ./var/demo)")
    parser.add_argument("--port", type=int, default=8443,
                        help="デモの公開ポート / demo public port (default 8443)")
    parser.add_argument("--admin-port", type=int, default=9100,
                        help="デモの管理用ポート / demo admin port (default 9100)")
    parser.add_argument("--workers", type=int, default=None,
                        help="ワーカープロセス数 (server.workers を上書き) / worker processes")
    parser.add_argument("--worker-process", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from sekisho import app
    from sekisho.observability import logs

    logs.configure(os.environ.get("SEKISHO_LOG_LEVEL", "INFO"))
    if args.demo or args.demo_reset or not args.config:
        from sekisho.demo.setup import prepare_demo

        launch = prepare_demo(Path(args.data_dir), args.workers, port=args.port,
                              admin_port=args.admin_port, reset=args.demo_reset)
        return app.serve(launch)
    from sekisho.config.loader import load_config

    config = app.with_workers(load_config(args.config), args.workers)
    if args.worker_process:
        app._run(lambda: app.run_worker(
            app.Launch(config, args.config, 1), reuse_port=True, admin=False, audit_reloads=False))
        return 0
    return app.serve(app.Launch(config, args.config, config.server.workers))
