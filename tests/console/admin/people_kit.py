"""A real admin context for the people operations: a migrated database (SQLite or
PostgreSQL), the real durable audit log, a real SessionManager and the identity context that
`build_signin_handlers` builds — operations are called through `ops.run`, as the API does."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from sekisho.audit.log import AuditLog
from sekisho.config.model import Config, SessionSettings
from sekisho.console.admin import devices as _devices  # noqa: F401  (registers devices.*)
from sekisho.console.admin import ops
from sekisho.console.admin import sessions as _sessions  # noqa: F401
from sekisho.console.admin import users as _users  # noqa: F401  (users.*, groups.*)
from sekisho.console.admin.ops import Actor, AdminContext, Call, Role
from sekisho.devices import enrolment
from sekisho.identity.extensions import IdentityContext
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.storage import devices as device_store
from sekisho.storage import users
from sekisho.storage.audit_log import iter_records
from sekisho.storage.database import create_database_engine, upgrade

PEOPLE = {"sato": "admins", "kato": "helpdesk", "suzuki": "auditors", "tanaka": "staff",
          "yamada": "staff"}
SUPER = Actor(name="sato", role=Role.SUPERADMIN, via="session", source_ip="127.0.0.1")
HELPDESK = Actor(name="kato", role=Role.HELPDESK, via="session", source_ip="127.0.0.1")
AUDITOR = Actor(name="suzuki", role=Role.AUDITOR, via="session", source_ip="127.0.0.1")
TOKEN = Actor(name="token:ops", role=Role.SUPERADMIN, via="token", source_ip="127.0.0.1")


@dataclass
class Admin:
    engine: Engine
    identity: IdentityContext
    sessions: SessionManager
    audit: AuditLog
    tokens: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ctx(self) -> AdminContext:
        return AdminContext(self.identity)

    def run(self, actor: Actor, op_id: str, *, path: dict[str, str] | None = None,
            query: dict[str, Any] | None = None, body: Any = None) -> Any:
        op = ops.REGISTRY[op_id]
        return asyncio.run(ops.run(self.ctx, actor, op, Call(path=path or {},
                                                              query=query or {}, body=body)))

    def refused(self, actor: Actor, op_id: str, **kwargs: Any) -> ops.AdminError:
        try:
            self.run(actor, op_id, **kwargs)
        except ops.AdminError as exc:
            assert exc.ja and exc.en and exc.ja != exc.en, exc
            return exc
        raise AssertionError(f"{op_id} was not refused")

    def sign_in(self, username: str, *, idp: str = "") -> str:
        """A live session of the user; returns its cookie token."""
        user = users.require_user(self.engine, username)
        token, _ = self.sessions.create(user, ["password", "totp"], "192.0.2.7", "pytest",
                                        idp=idp)
        self.tokens.setdefault(username, []).append(token)
        return token

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in iter_records(self.engine)
                if event_type is None or r.event_type == event_type]

    def add_device(self, username: str, name: str = "庁内PC") -> str:
        """A registered device (code spent and row written as the enrolment endpoint does;
        no certificate is needed for the registry operations)."""
        now = datetime.now(UTC)
        code, _ = enrolment.create_code(self.engine, username, "setup", timedelta(hours=1))
        device_id = f"dev-{len(device_store.list_devices(self.engine)):016x}"
        assert device_store.consume_code_and_add_device(
            self.engine, code_hash=enrolment.code_hash(code), now=now, device_id=device_id,
            inventory_id="INV-1", user_id=users.require_user(self.engine, username).id,
            name=name, cert_serial=device_id[-8:], cert_not_after=now + timedelta(days=365))
        return device_id


def build(url: str) -> Admin:
    """The context over a migrated database at `url`, with the people of `PEOPLE`."""
    engine = create_database_engine(url)
    upgrade(engine)
    config = Config(source="<people-tests>")
    sessions = SessionManager(engine, SessionSettings())
    audit = AuditLog(engine)
    captured: list[IdentityContext] = []

    def capture(context: IdentityContext) -> dict[str, Any]:
        captured.append(context)
        return {}

    build_signin_handlers(current_config=lambda: config, engine=engine, sessions=sessions,
                          audit=audit, builders=[capture])
    for group in sorted(set(PEOPLE.values())):
        users.create_group(engine, group)
    for username, group in PEOPLE.items():
        users.create_user(engine, username, display_name=username.title(),
                          email=f"{username}@city.example.jp", password_hash="x")
        users.add_member(engine, group, username)
    return Admin(engine, captured[0], sessions, audit)
