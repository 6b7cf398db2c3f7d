"""The demo's closed network: an internal app and a connector agent in its own process.

`sekisho serve --demo` turns on `connector.listen` (loopback), and starts `sekisho connector
run` as a child process — exactly the command a city runs inside its LGWAN segment — with its
own state directory (`<data_dir>/connector`) and an allow-list of exactly the demo's internal
app (and the demo desktop, whose screen-transfer route also goes through it). The internal
app (`kintai`) listens on a loopback port that no route targets: the only route to it is
`connector:demo-lgwan/127.0.0.1:<port>`, carried by the tunnel the agent dialled out.

Enrolment is the real one: the first start creates a one-time token for site `demo-lgwan`
with the function `sekisho connector token` uses, audited the same way, and hands it to the
agent in its environment (never on its command line, which every local user can read). Later
starts reuse the enrolled certificate; a state directory the registry no longer knows (the
database was reset, the connector revoked) is cleared and enrolled again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sekisho.config.demo import DEMO_SITE, INTERNAL_ROUTE
from sekisho.demo import children

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from sekisho.config.model import Config

log = logging.getLogger("sekisho.demo")

CONNECTOR_PORT = 8444  # preferred loopback port of connector.listen; another when taken
STATE_DIR = "connector"
AGENT_LOG = "connector-agent.log"
TOKEN_TTL = timedelta(hours=1)
_TARGET = re.compile(rf"connector:{DEMO_SITE}/127\.0\.0\.1:(\d+)")
_agent: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class DemoConnector:
    """What the banner shows about the demo's closed network."""

    listen: str  # connector.listen
    internal_port: int  # the app only the connector reaches
    allow: tuple[str, ...]  # the agent's allow-list
    pid: int  # the agent's process
    enrolled_now: bool  # a token was created at this start
    log: Path


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError("no free loopback port for the demo connector")


def start_internal_app(jwks_url: str, issuer: str, port: int = 0) -> int:
    """The closed network's app (a demo app thread on loopback); its port."""
    from sekisho.demo.apps import INTERNAL_APP, start_app

    return start_app(INTERNAL_APP, jwks_url, issuer, port)


def internal_port_of(config: Config) -> int | None:
    """The port the `kintai` route reaches through the demo connector, if the file has it."""
    route = next((r for r in config.routes if r.id == INTERNAL_ROUTE), None)
    found = _TARGET.fullmatch(route.to) if route is not None else None
    return int(found.group(1)) if found else None


def kept_connector(file: Path, config: Config, jwks_url: str) -> Config:
    """For a kept demo file: start the internal app on the port its route names and keep
    `connector.listen`; either moves to a free port when taken (the file follows). A file
    without the demo connector (edited away, or older than it) is left alone."""
    from sekisho.config.loader import load_config

    old_app = internal_port_of(config)
    listen = config.connector.listen
    if old_app is None or listen is None:
        return config
    new_app = start_internal_app(jwks_url, config.assertion.issuer, old_app)
    text = file.read_text(encoding="utf-8")
    if new_app != old_app:
        text = re.sub(rf"(connector:{DEMO_SITE}/127\.0\.0\.1:){old_app}(?!\d)",
                      rf"\g<1>{new_app}", text)
    new_listen = free_port(listen.port) if listen.host == "127.0.0.1" else listen.port
    if new_listen != listen.port:
        text = re.sub(rf'(listen: "127\.0\.0\.1:){listen.port}"', rf'\g<1>{new_listen}"', text)
    if new_app == old_app and new_listen == listen.port:
        return config
    file.write_text(text, encoding="utf-8")
    log.warning("the demo connector's ports moved; the demo file was updated",
                extra={"fields": {"internal_app": new_app, "listen": new_listen}})
    return load_config(file)


def enrolment_token(engine: Engine, state: Path, *, max_days: int) -> str:
    """A one-time token when the agent in `state` must enrol ("" when its certificate is
    still good): created and audited as `sekisho connector token` does."""
    from sekisho.audit.log import AuditLog
    from sekisho.connector.agent import CERT_FILE, CHAIN_FILE, KEY_FILE, STATE_FILE
    from sekisho.connector.enrolment import create_token
    from sekisho.storage import connectors

    with contextlib.suppress(OSError, ValueError, AttributeError):
        known = json.loads((state / STATE_FILE).read_text(encoding="utf-8"))
        record = connectors.get_connector(engine, str(known.get("connector_id")))
        if (record is not None and record.site == DEMO_SITE and record.status == "active"
                and (state / KEY_FILE).exists() and (state / CERT_FILE).exists()):
            return ""
    # Unknown to this database or revoked: the old key would be refused at every handshake.
    for name in (KEY_FILE, CERT_FILE, CHAIN_FILE, STATE_FILE):
        (state / name).unlink(missing_ok=True)
    token, event = create_token(engine, DEMO_SITE, "demo", TOKEN_TTL, max_days=max_days)
    AuditLog(engine).append_sync(event)  # durable before the token is used, as in the CLI
    return token


def start_demo_connector(config: Config, engine: Engine) -> DemoConnector | None:
    """Start the agent for a configuration with the demo connector; None without one."""
    from sekisho.connector.service import listener_pin

    internal = internal_port_of(config)
    listen = config.connector.listen
    if internal is None or listen is None:
        return None
    stop_demo_connector()  # one agent per demo
    data = Path(config.server.data_dir)
    state = data / STATE_DIR
    token = enrolment_token(engine, state, max_days=config.connector.token_max_days)
    allow = [f"127.0.0.1:{internal}"]
    desktop = next((r for r in config.routes if r.id == "desktop" and r.mode == "screen"), None)
    if desktop is not None and (found := _TARGET.fullmatch(desktop.to)):
        allow.append(f"127.0.0.1:{found.group(1)}")
    command = [sys.executable, "-m", "sekisho", "connector", "run",
               "--gateway", f"127.0.0.1:{listen.port}", "--pin", listener_pin(config),
               "--state-dir", str(state), "--name", "demo-connector"]
    for entry in allow:
        command += ["--allow", entry]
    env = dict(os.environ)
    env.pop("SEKISHO_CONNECTOR_TOKEN", None)
    if token:
        env["SEKISHO_CONNECTOR_TOKEN"] = token
    agent = children.spawn(command, log=data / AGENT_LOG, env=env)
    _agent.append(agent)
    log.info("demo connector started", extra={"fields": {
        "pid": agent.pid, "site": DEMO_SITE, "allow": allow, "enrol": bool(token)}})
    return DemoConnector(f"127.0.0.1:{listen.port}", internal, tuple(allow), agent.pid,
                         bool(token), data / AGENT_LOG)


def stop_demo_connector() -> None:
    while _agent:
        children.stop(_agent.pop())


def banner_lines(running: DemoConnector | None) -> list[str]:
    if running is None:
        return []
    return [
        "",
        f"  コネクタ / connector (site {DEMO_SITE}, 別プロセス / separate process pid "
        f"{running.pid}): 閉域網の中から {running.listen} へ外向きに接続 / dials out to "
        f"{running.listen}",
        f"    許可リスト / allow-list: {', '.join(running.allow)}   "
        f"ログ / log: {running.log}",
        f"    https://{INTERNAL_ROUTE}.localhost/ はコネクタ経由でだけ届きます (ルートの宛先は "
        f"connector:{DEMO_SITE}/…) / reached only through the connector",
        "    " + ("新しく登録しました (一回限りのトークン、監査済み) / enrolled now (one-time "
                  "token, audited)" if running.enrolled_now else
                  "登録済みの証明書を使います / reusing its enrolled certificate"),
        f"    sekisho connector list --config {Path(running.log).parent}/sekisho.demo.yaml",
    ]
