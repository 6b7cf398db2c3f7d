"""`sekisho serve --demo`: demo apps, demo configuration, migrated SQLite, demo users.

Everything lands in one data directory (./var/demo by default) so `rm -rf var` resets it.
The demo runs from its configuration FILE there, like any installation (SIGHUP and the admin
console's editor reload it): the first start writes it, later starts keep it as edited and
only move a demo app whose port is no longer free; `--demo-reset` writes it afresh.
The demo passwords are fixed and printed: the demo listens on loopback only. A demo CA for
device certificates is created in `<data_dir>/ca` once; the banner says how to enrol this
machine as a device through the CLI, and how `sekisho policy explain` shows each segment's
guardrail.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sekisho.app import Launch
from sekisho.config.model import Config

log = logging.getLogger("sekisho.demo")

LISTEN_PORT = 8443
ADMIN_PORT = 9100


@dataclass(frozen=True)
class DemoUser:
    username: str
    display_name: str
    email: str
    password: str
    groups: tuple[str, ...]


DEMO_USERS = (
    DemoUser("tanaka", "田中 花子", "tanaka@city.example.jp", "Usuzan-Kazan-2026", ("staff",)),
    DemoUser("sato", "佐藤 一郎", "sato@city.example.jp", "Toyako-Onsen-2026", ("staff", "admins")),
)
DEMO_GROUPS = {"staff": "職員 / staff", "admins": "情報政策課の管理者 / IT administrators"}


def seed(engine: object) -> list[str]:
    """Create the demo groups and users that are missing; return the names created."""
    from sqlalchemy import Engine

    from sekisho.audit.events import GroupChanged, UserChanged
    from sekisho.audit.log import AuditLog
    from sekisho.identity.passwords import PasswordHasher
    from sekisho.storage import users

    assert isinstance(engine, Engine)
    created: list[str] = []
    audit = AuditLog(engine)
    audit.start()
    try:
        for name, description in DEMO_GROUPS.items():
            if users.get_group(engine, name) is None:
                users.create_group(engine, name, description=description)
                audit.append_sync(GroupChanged(admin="demo", group=name, action="create"))
        hasher = PasswordHasher()
        for demo in DEMO_USERS:
            if users.get_user_by_name(engine, demo.username) is not None:
                continue
            users.create_user(
                engine, demo.username, display_name=demo.display_name, email=demo.email,
                password_hash=hasher.hash(demo.password),
            )
            audit.append_sync(UserChanged(admin="demo", user=demo.username, action="create"))
            for group in demo.groups:
                users.add_member(engine, group, demo.username)
                audit.append_sync(GroupChanged(
                    admin="demo", group=group, action="add-member", user=demo.username))
            created.append(demo.username)
    finally:
        audit.close()
    return created


def banner(config: Config, *, kept: bool = False, extra: Sequence[str] = ()) -> str:
    """What the demo prints once it listens; `extra`: the demo connector's lines."""
    port = config.server.listen[0].port
    lines = [
        "",
        "Sekisho デモが起動しました / the Sekisho demo is running",
        "",
        f"  職員ポータル / staff portal:  https://{config.portal.host}:{port}/",
        "",
        "  アプリ / apps (自己署名証明書の警告は「詳細設定 → 続行」/ "
        "accept the self-signed certificate):",
    ]
    for route in config.routes:
        lines.append(f"    https://{route.host}:{port}{route.path_prefix.rstrip('/')}/"
                     f"   {route.title}")
    lines += ["", "  デモ利用者 / demo users:"]
    for user in DEMO_USERS:
        lines.append(f"    {user.username:8} / {user.password:20} ({user.display_name}, "
                     f"groups: {', '.join(user.groups)})")
    lines += _segment_lines(config, port)
    lines += extra
    lines += [
        "",
        f"  設定ファイル / configuration file: {config.source}",
        "    " + ("以前の起動で作成・編集されたものをそのまま使っています / kept as edited "
                  "since an earlier start" if kept else
                  "新しく作成しました。編集は次回以降の起動でも保たれます / written now; "
                  "edits are kept across restarts"),
        f"    管理コンソールで編集 / edit in the admin console: https://{config.portal.host}:"
        f"{port}/.sekisho/admin/config  (sato, パスキー / passkey)",
        "    初期状態に戻す / restore it: sekisho serve --demo --demo-reset",
    ]
    admin = config.server.admin_listen
    lines += [
        "",
        f"  メトリクス / metrics:  http://{admin}/metrics   ヘルス / health: http://{admin}/readyz",
        f"  監査ログ / audit log:  sekisho audit export --config {config.server.data_dir}"
        "/sekisho.demo.yaml --format csv",
        "  停止 / stop: Ctrl+C",
        "",
    ]
    return "\n".join(lines)


def _segment_lines(config: Config, port: int) -> list[str]:
    """Which app is in which segment, how to enrol a demo device, how to ask why."""
    data = config.server.data_dir
    file, device_dir = f"{data}/sekisho.demo.yaml", f"{data}/device"
    # A route host: it is in the self-signed certificate, and the enrolment endpoint answers
    # on every route host (the device CLI verifies the gateway with --cafile).
    host = config.routes[0].host if config.routes else "localhost"
    gateway = f"https://{host}:{port} --cafile {data}/tls/self-signed.crt"
    by_segment: dict[str, list[str]] = {}
    for route in config.routes:
        by_segment.setdefault(route.segment, []).append(route.id)
    segments = "   ".join(f"{segment}: {', '.join(ids)}" for segment, ids in by_segment.items())
    docs = next((r.host for r in config.routes if r.segment == "lgwan"), "docs.localhost")
    return [
        "",
        f"  セグメント / segments (profile {config.profile}, docs/segments.md): {segments}",
        "  このPCは庁内かつマイナンバーの指定端末 / this machine is the office and the designated"
        " My Number terminal",
        "",
        "  デモ端末の登録 / enrol this machine as a demo device (CLI; *.localhost を引けない"
        f"環境では /etc/hosts に 127.0.0.1 {host} / add it to /etc/hosts if *.localhost does"
        " not resolve):",
        f"    sekisho device code tanaka --config {file}",
        f"    sekisho device enroll --gateway {gateway} --name demo-pc "
        f"--dir {device_dir} --code <CODE>",
        f"    sekisho device report --gateway {gateway} --dir {device_dir}",
        f"    → {device_dir}/device.p12 をブラウザに取り込み、juki はパスキーで / import it into"
        " the browser; juki then asks for a passkey",
        "",
        "  判定の理由 / why (BYOD from home → LGWAN: denied):",
        f"    sekisho policy explain --config {file} --url https://{docs}/ --user tanaka "
        "--group staff --ip 203.0.113.5 --mfa totp --device-profile byod",
    ]


def _jwks_url(admin: object) -> str:
    return f"http://{admin}/.well-known/sekisho/jwks.json"


def _kept_config(file: Path, port: int) -> Config:
    """Start the demo apps for a kept (perhaps edited) file: on the ports it names when they
    are free; an app that had to move gets its new port written into the file."""
    import re

    from sekisho.config.loader import load_config
    from sekisho.demo.apps import APPS, start_demo_apps

    config = load_config(file)  # an edit broken by hand: a clear ConfigError, exit 2
    keys = {app.key for app in APPS}
    named = {route.id: int(found.group(1)) for route in config.routes if route.id in keys
             and (found := re.fullmatch(r"http://127\.0\.0\.1:(\d+)/?", route.to))}
    ports = start_demo_apps(_jwks_url(config.server.admin_listen), config.assertion.issuer,
                            named)
    moved = {key: (old, ports[key]) for key, old in named.items() if ports[key] != old}
    if moved:
        text = file.read_text(encoding="utf-8")
        for old, new in moved.values():
            text = re.sub(rf"//127\.0\.0\.1:{old}(?!\d)", f"//127.0.0.1:{new}", text)
        file.write_text(text, encoding="utf-8")
        log.warning("demo apps moved to free ports; the demo file was updated",
                    extra={"fields": {"moved": {k: v[1] for k, v in moved.items()}}})
        config = load_config(file)
    if config.server.listen and config.server.listen[0].port != port:
        log.warning("the kept demo file sets its own port; --demo-reset applies --port",
                    extra={"fields": {"file_port": config.server.listen[0].port,
                                      "port": port}})
    return config


def prepare_demo(data_dir: Path, workers: int | None, *, port: int = LISTEN_PORT,
                 admin_port: int = ADMIN_PORT, reset: bool = False,
                 connector: bool = True) -> Launch:
    """Everything the demo needs before the gateway starts; `connector`: also start the
    demo connector's agent (a child process that dials the gateway once it listens)."""
    from sekisho.config.demo import DEMO_FILE, demo_config
    from sekisho.demo import connector as closed
    from sekisho.demo.apps import APPS, start_demo_apps
    from sekisho.demo.desktop import kept_desktop, start_demo_desktop
    from sekisho.devices.ca import CaPaths, init_ca
    from sekisho.gateway.keys import KeyRing
    from sekisho.storage.database import create_database_engine, upgrade
    from sekisho.storage.keys import SigningKeyRepository

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if not CaPaths.of(data_dir / "ca").intermediate_cert.exists():
        # The demo's device CA (tls.client_certificates: optional reads it from here).
        init_ca(data_dir / "ca", organisation="Sekisho Demo")
    file = data_dir / DEMO_FILE
    kept = file.exists() and not reset
    if kept:
        config = _kept_config(file, port)
        config = kept_desktop(file, closed.kept_connector(
            file, config, _jwks_url(config.server.admin_listen)))
    else:
        jwks, issuer = _jwks_url(f"127.0.0.1:{admin_port}"), f"https://portal.localhost:{port}"
        ports = start_demo_apps(jwks, issuer)
        # 画面転送: a VNC desktop and its route, when Xvnc (or Xvfb + x11vnc) is installed;
        # the closed network's app and the desktop are reached through the demo connector.
        config = demo_config(data_dir, {app.key: ports[app.key] for app in APPS},
                             listen_port=port, admin_port=admin_port,
                             desktop_port=start_demo_desktop(),
                             connector_port=closed.free_port(
                                 port + 1 if port < 65535 else closed.CONNECTOR_PORT),
                             internal_port=closed.start_internal_app(jwks, issuer))
    engine = create_database_engine(config.storage_url.reveal())
    try:
        upgrade(engine)
        created = seed(engine)
        KeyRing(SigningKeyRepository(engine)).ensure()
        running = closed.start_demo_connector(config, engine) if connector else None
    finally:
        engine.dispose()
    if created:
        log.info("demo users created", extra={"fields": {"users": created}})
    return Launch(config, str(file), workers or 1,
                  lambda shown: banner(shown, kept=kept, extra=closed.banner_lines(running)))
