"""A real admin context for the audit and dashboard operations: a migrated database (SQLite
or PostgreSQL), the real audit log with a settable clock, and the identity context that
`build_signin_handlers` builds; operations are called through `ops.run`, as the API does."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from sekisho.audit.log import AuditLog
from sekisho.config.model import Config, SessionSettings
from sekisho.console.admin import audit as _audit  # noqa: F401  (registers audit.*)
from sekisho.console.admin import dashboard as _dashboard  # noqa: F401  (dashboard.get)
from sekisho.console.admin import ops
from sekisho.console.admin.ops import Actor, AdminContext, Call, Role
from sekisho.identity.extensions import IdentityContext
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.storage.audit_log import iter_records
from sekisho.storage.database import create_database_engine, upgrade

SUPER = Actor(name="sato", role=Role.SUPERADMIN, via="session", source_ip="127.0.0.1")
HELPDESK = Actor(name="kato", role=Role.HELPDESK, via="session", source_ip="127.0.0.1")
AUDITOR = Actor(name="suzuki", role=Role.AUDITOR, via="token", source_ip="192.0.2.9")
ACTORS = (SUPER, HELPDESK, AUDITOR)


class Clock:
    """The one clock of the stack: the audit log stamps with it, operations read it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Kit:
    engine: Engine
    identity: IdentityContext
    sessions: SessionManager
    audit: AuditLog
    clock: Clock

    @property
    def ctx(self) -> AdminContext:
        return AdminContext(self.identity)

    def run(self, actor: Actor, op_id: str, *, query: dict[str, Any] | None = None,
            body: Any = None, lang: str = "ja") -> Any:
        op = ops.REGISTRY[op_id]
        return asyncio.run(ops.run(self.ctx, actor, op, Call(query=query or {}, body=body,
                                                             lang=lang)))

    def refused(self, actor: Actor, op_id: str, **kwargs: Any) -> ops.AdminError:
        try:
            self.run(actor, op_id, **kwargs)
        except ops.AdminError as exc:
            assert exc.ja and exc.en and exc.ja != exc.en, exc
            return exc
        raise AssertionError(f"{op_id} was not refused")

    def events(self, event_type: str) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in iter_records(self.engine)
                if r.event_type == event_type]


def build(url: str, now: datetime | None = None) -> Kit:
    engine = create_database_engine(url)
    upgrade(engine)
    clock = Clock(now or datetime.now(UTC))
    config = Config(source="<audit-tests>")
    sessions = SessionManager(engine, SessionSettings(), clock)
    audit = AuditLog(engine, now=clock, max_lag=120.0)
    captured: list[IdentityContext] = []

    def capture(context: IdentityContext) -> dict[str, Any]:
        captured.append(context)
        return {}

    build_signin_handlers(current_config=lambda: config, engine=engine, sessions=sessions,
                          audit=audit, clock=clock, builders=[capture])
    return Kit(engine, captured[0], sessions, audit, clock)
