"""`sekisho connector …`: enrolment tokens and the registry (admin), and `run` (the agent).

Admin commands work on the database like `sekisho device`; every change is appended to the
audit chain, and a revocation reaches the broker within a second (it re-reads the registry
for its live tunnels). `run` runs inside the closed network and needs no database: it dials
out to the gateway's connector listener (see `connector.agent`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

from sekisho.cli._common import add_config_option, add_database_option, open_engine
from sekisho.cli.user import admin_name, audit_event, print_table

DEFAULT_STATE_DIR = "/var/lib/sekisho-connector"


def _admin(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_config_option(parser)
    add_database_option(parser)
    return parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("connector", help="閉域網のコネクタ / connectors in closed "
                                   "networks")
    commands = parser.add_subparsers(dest="connector_command", metavar="ACTION", required=True)

    token = _admin(commands.add_parser("token", help="一回限りの登録トークンを作成 / create a "
                                       "one-time enrolment token"))
    token.add_argument("--site", required=True, help="サイト名 / site (e.g. lgwan-dc)")
    token.add_argument("--days", type=float, default=1.0,
                       help="有効日数 / validity in days (default 1, at most "
                            "connector.token_max_days)")
    token.set_defaults(handler=run_token)

    lst = _admin(commands.add_parser("list", help="コネクタの一覧 / list connectors"))
    lst.add_argument("--site", default=None)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=run_list)

    revoke = _admin(commands.add_parser("revoke", help="コネクタを失効 (トンネルを即時切断) / "
                                        "revoke a connector (its tunnel is cut at once)"))
    revoke.add_argument("id")
    revoke.set_defaults(handler=run_revoke)

    run = commands.add_parser("run", help="コネクタを動かす (閉域網の中で実行) / run the "
                              "connector agent (inside the closed network)")
    run.add_argument("--gateway", default=None, help="ゲートウェイのコネクタ用 HOST:PORT / the "
                     "gateway's connector listener HOST:PORT")
    run.add_argument("--token", default=os.environ.get("SEKISHO_CONNECTOR_TOKEN", ""),
                     help="一回限りの登録トークン (初回のみ) / one-time token (first run only; "
                          "default $SEKISHO_CONNECTOR_TOKEN)")
    run.add_argument("--pin", default=None, help="ゲートウェイの公開鍵のピン sha256:… (sekisho "
                     "connector token が表示) / the gateway key's pin")
    run.add_argument("--gateway-ca", default=None, help="ピンの代わりにゲートウェイを CA で検証 / "
                     "verify the gateway with this CA file instead of a pin")
    run.add_argument("--state-dir", default=None, help=f"鍵と証明書の保存先 / key and "
                     f"certificate directory (default {DEFAULT_STATE_DIR})")
    run.add_argument("--allow", action="append", default=None, metavar="HOST:PORT",
                     help="到達を許す宛先 (複数可、CIDR:PORT も可) / destination allowed "
                          "(repeatable; CIDR:PORT too)")
    run.add_argument("--name", default=None, help="コネクタ名 / connector name (default: the "
                     "host name)")
    run.add_argument("--config", default=None, help="YAML の設定ファイル (gateway, pin, "
                     "gateway_ca, state_dir, allow, name) / agent configuration file")
    run.set_defaults(handler=run_agent)


def _config(args: argparse.Namespace) -> Any:
    if not args.config:
        return None
    from sekisho.config.loader import load_config

    return load_config(args.config)


def run_token(args: argparse.Namespace) -> int:
    from sekisho.connector.enrolment import create_token

    config = _config(args)
    max_days = config.connector.token_max_days if config is not None else 30
    engine = open_engine(args)
    try:
        token, event = create_token(engine, args.site, admin_name(),
                                    timedelta(days=args.days), max_days=max_days)
        audit_event(engine, event)
    finally:
        engine.dispose()
    print(f"登録トークン / enrolment token for site {event.site}: {token}")
    print(f"有効期限 / expires: {event.expires_at} (一回限り / single use)")
    if config is not None and config.connector.listen is not None:
        from sekisho.connector.service import listener_pin

        print(f"ゲートウェイのピン / gateway pin: {listener_pin(config)}")
        print(f"実行例 / run: sekisho connector run --gateway HOST:{config.connector.listen.port}"
              f" --pin {listener_pin(config)} --token {token} --allow HOST:PORT")
    print("このトークンは二度と表示されません / this token is not shown again")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from sekisho.storage import connectors

    engine = open_engine(args)
    try:
        records = connectors.list_connectors(engine, args.site)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([_as_json(r) for r in records], ensure_ascii=False, indent=2))
        return 0
    fmt = "%Y-%m-%d %H:%M"
    table = [("ID", "SITE", "NAME", "STATUS", "ENROLLED (UTC)", "LAST SEEN (UTC)",
              "EXPIRES (UTC)")]
    table += [(r.connector_id, r.site, r.name, r.status, r.enrolled_at.strftime(fmt),
               r.last_seen.strftime(fmt) if r.last_seen else "-",
               r.cert_not_after.strftime(fmt)) for r in records]
    print_table(table)
    return 0


def _as_json(record: Any) -> dict[str, Any]:
    return {"connector_id": record.connector_id, "site": record.site, "name": record.name,
            "status": record.status, "serial": record.cert_serial,
            "enrolled_at": record.enrolled_at.isoformat(),
            "last_seen": record.last_seen.isoformat() if record.last_seen else None,
            "not_after": record.cert_not_after.isoformat(),
            "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None}


def run_revoke(args: argparse.Namespace) -> int:
    from sekisho.connector.enrolment import revoke

    engine = open_engine(args)
    try:
        connector, event = revoke(engine, args.id, admin=admin_name())
        if event is not None:
            audit_event(engine, event)
    finally:
        engine.dispose()
    if event is None:
        print(f"{connector.connector_id}: 変更なし / unchanged ({connector.status})")
    else:
        print(f"{connector.connector_id}: revoked (トンネルは 1 秒以内に切断 / its tunnel is "
              "cut within a second)")
    return 0


def run_agent(args: argparse.Namespace) -> int:
    from sekisho.connector.agent import Agent, AgentError, AgentSettings, allow_rules
    from sekisho.observability import logs

    logs.configure(os.environ.get("SEKISHO_LOG_LEVEL", "INFO"))
    file: dict[str, Any] = {}
    if args.config:
        import yaml

        try:
            loaded = yaml.safe_load(Path(args.config).read_text("utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise AgentError(f"設定ファイルを読めません / cannot read {args.config}: "
                             f"{type(exc).__name__}") from None
        if not isinstance(loaded, dict):
            raise AgentError(f"設定ファイルは対応表です / {args.config} must be a mapping")
        file = loaded
    gateway = args.gateway or file.get("gateway") or ""
    host, _, port = str(gateway).rpartition(":")
    if not host or not port.isdigit():
        raise AgentError("--gateway HOST:PORT が必要です / --gateway HOST:PORT is required")
    allow = args.allow if args.allow is not None else file.get("allow") or []
    if not isinstance(allow, list) or not allow:
        raise AgentError("--allow で到達を許す宛先を 1 つ以上指定してください / give at least "
                         "one --allow HOST:PORT (nothing is reachable otherwise)")
    settings = AgentSettings(
        gateway_host=host.strip("[]"), gateway_port=int(port),
        state_dir=Path(args.state_dir or file.get("state_dir") or DEFAULT_STATE_DIR),
        allow=allow_rules(str(a) for a in allow), token=args.token or "",
        pin=args.pin or str(file.get("pin") or ""),
        ca_file=args.gateway_ca or str(file.get("gateway_ca") or ""),
        name=args.name or str(file.get("name") or ""))
    agent = Agent(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await agent.run(stop)

    import uvloop  # a dependency; halves the tunnel's added round trip (docs/benchmarks.md)

    uvloop.run(main())
    return 0
