"""An in-process admin stack for the access, API and token tests: a real SQLite database built
by the migrations, the real audit log, real sessions, a runtime loaded from a real file, and
requests shaped exactly as the gateway hands them to a reserved-path handler."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from sekisho import app
from sekisho.audit.log import AuditLog
from sekisho.console.admin.ops import AdminContext
from sekisho.identity.extensions import IdentityContext
from sekisho.identity.principal import SessionInfo
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.storage import users
from sekisho.storage.audit_log import iter_records
from sekisho.storage.database import create_database_engine, upgrade
from sekisho.web import Request, Response

CONFIG = """\
server:
  data_dir: "{data}"
tls:
  self_signed: true
storage:
  url: "sqlite:///{db}"
session:
  cache_ttl: 0s
throttle:
  ip_max_failures: 5
  base_delay: 1s
  max_delay: 1s
networks:
  office: ["127.0.0.0/8"]
policies:
  staff:
    allow:
      and:
        - authenticated: true
        - group: [staff]
{policies}routes:
  - id: wiki
    from: https://wiki.localhost/
    to: http://127.0.0.1:9
    segment: internet
    policy: staff
{extra}"""
HOST = "wiki.localhost"
OFFICE_IP, REMOTE_IP = "127.0.0.1", "203.0.113.5"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Stack:
    engine: Engine
    audit: AuditLog
    holder: app.RuntimeHolder
    ctx: AdminContext
    clock: Clock
    sessions: SessionManager
    cookie_name: str = "__Host-sekisho"
    users: dict[str, users.UserRecord] = field(default_factory=dict)

    @property
    def identity(self) -> IdentityContext:
        return self.ctx.identity

    def user(self, name: str, *groups: str) -> users.UserRecord:
        for group in groups:
            try:
                users.create_group(self.engine, group)
            except users.AlreadyExists:
                pass
        record = users.create_user(self.engine, name)
        for group in groups:
            users.add_member(self.engine, group, name)
        self.users[name] = record
        return record

    def session(self, name: str, methods: Iterable[str] = ("pwd", "webauthn_uv"),
                age: float = 0.0) -> tuple[str, SessionInfo]:
        """A session whose last proof (all of `methods`) was `age` seconds ago."""
        proof = self.clock() - timedelta(seconds=age)
        second = any(m != "pwd" for m in methods)
        return self.sessions.create(self.users[name], methods, OFFICE_IP, "test",
                                    auth_time=proof, mfa_time=proof if second else None)

    def events(self, event_type: str) -> list[dict[str, Any]]:
        self.audit.flush()
        return [json.loads(r.body) for r in iter_records(self.engine)
                if r.event_type == event_type]


def request(method: str, path: str, *, cookie: str | None = None, query: str = "",
            headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
            client_ip: str = OFFICE_IP, cookie_name: str = "__Host-sekisho") -> Request:
    sent = [("host", HOST), *((k.lower(), v) for k, v in headers)]
    if cookie is not None:
        sent.append(("cookie", f"{cookie_name}={cookie}"))
    target = path + ("?" + query if query else "")
    return Request(method, target, path, query, sent, client_ip, "https", HOST, body)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def body(response: Response) -> Any:
    return json.loads(response.body)


def _identity(engine: Engine, holder: app.RuntimeHolder, audit: AuditLog,
              sessions: SessionManager, clock: Clock) -> IdentityContext:
    found: list[IdentityContext] = []

    def capture(context: IdentityContext) -> dict[str, Any]:
        found.append(context)
        return {}

    build_signin_handlers(current_config=lambda: holder.get().config, engine=engine,
                          sessions=sessions, audit=audit, clock=clock, builders=[capture],
                          current_runtime=holder.get)
    return found[0]


def make_stack(tmp: Path, extra: str = "", policies: str = "") -> Stack:
    data, db = tmp / "data", tmp / "sekisho.db"
    engine = create_database_engine(f"sqlite:///{db}")
    upgrade(engine)
    path = tmp / "sekisho.yaml"
    path.write_text(CONFIG.format(data=data, db=db, extra=extra, policies=policies),
                    encoding="utf-8")
    runtime, _ = app.load_snapshot(str(path))
    holder = app.RuntimeHolder(runtime)
    audit = AuditLog(engine)
    audit.start()
    clock = Clock()
    sessions = SessionManager(engine, runtime.config.session, clock)
    ctx = AdminContext(_identity(engine, holder, audit, sessions, clock))
    return Stack(engine, audit, holder, ctx, clock, sessions)


def close(stack: Stack) -> None:
    stack.audit.close()
    stack.engine.dispose()
