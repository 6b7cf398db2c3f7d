"""`sekisho serve --demo`: demo apps, demo configuration, migrated SQLite, demo users.

Everything lands in one data directory (./var/demo by default) so `rm -rf var` resets it.
The demo passwords are fixed and printed: the demo listens on loopback only.
"""

from __future__ import annotations

import logging
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


def banner(config: Config) -> str:
    port = config.server.listen[0].port
    lines = [
        "",
        "Sekisho デモが起動しました / the Sekisho demo is running",
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


def prepare_demo(data_dir: Path, workers: int | None, *, port: int = LISTEN_PORT,
                 admin_port: int = ADMIN_PORT) -> Launch:
    from sekisho.config.demo import DEMO_FILE, demo_config
    from sekisho.demo.apps import APPS, start_demo_apps
    from sekisho.gateway.keys import KeyRing
    from sekisho.storage.database import create_database_engine, upgrade
    from sekisho.storage.keys import SigningKeyRepository

    data_dir.mkdir(parents=True, exist_ok=True)
    issuer = f"https://portal.localhost:{port}"
    ports = start_demo_apps(f"http://127.0.0.1:{admin_port}/.well-known/sekisho/jwks.json",
                            issuer)
    config = demo_config(data_dir, {app.key: ports[app.key] for app in APPS},
                         listen_port=port, admin_port=admin_port)
    engine = create_database_engine(config.storage_url.reveal())
    try:
        upgrade(engine)
        created = seed(engine)
        KeyRing(SigningKeyRepository(engine)).ensure()
    finally:
        engine.dispose()
    if created:
        log.info("demo users created", extra={"fields": {"users": created}})
    return Launch(config, str(data_dir / DEMO_FILE), workers or 1, banner)
