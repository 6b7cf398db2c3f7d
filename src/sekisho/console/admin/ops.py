"""Admin operations, declared once: the admin API, its OpenAPI spec, the console pages and
the authorisation matrix test all read this registry.

An operation is a plain async function `handler(ctx, actor, call) -> JSON value` with its
method, path, roles and JSON Schemas beside it. `run` is the one door: it checks the role
(deny unless listed), validates path, query and body against the schemas, runs the handler
and leaves auditing to the handler (each mutating operation appends its own typed event,
durably, before it answers). A console page and an API call of the same operation therefore
cannot differ in who may do it or what input is accepted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from jsonschema import Draft202012Validator

from sekisho.errors import SekishoError

if TYPE_CHECKING:
    from sekisho.identity.extensions import IdentityContext


class Role(StrEnum):
    """Admin roles, widest first. `helpdesk` manages people and their things (users, factors,
    devices, sessions); `auditor` reads the audit log and the configuration, nothing else."""

    SUPERADMIN = "superadmin"
    HELPDESK = "helpdesk"
    AUDITOR = "auditor"


ALL_ROLES = frozenset(Role)
MANAGERS = frozenset({Role.SUPERADMIN, Role.HELPDESK})
SUPERADMIN_ONLY = frozenset({Role.SUPERADMIN})
READERS = ALL_ROLES  # audit log and configuration: every admin role may read


@dataclass(frozen=True, slots=True)
class Actor:
    """Who calls: a signed-in administrator or an API token (never both)."""

    name: str  # username, or "token:<token name>"
    role: Role
    via: Literal["session", "token"]
    source_ip: str
    session: str = ""  # short session id (sessions) or token id (tokens), for the audit log


@dataclass(frozen=True, slots=True)
class Call:
    """One invocation's validated input."""

    path: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, Any] = field(default_factory=dict)
    body: Any = None
    lang: str = "ja"  # for messages in the answer (Accept-Language / the console's choice)


class AdminError(SekishoError):
    """A refusal with a stable code, a Japanese and an English message and a 4xx status."""

    def __init__(self, code: str, ja: str, en: str, status: int = 400,
                 details: Any = None) -> None:
        super().__init__(en, code=code)
        self.ja, self.en, self.status, self.details = ja, en, status, details

    def message(self, lang: str) -> str:
        return self.ja if lang == "ja" else self.en

    def as_json(self, lang: str) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message(lang),
                                "message_ja": self.ja, "message_en": self.en}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


def forbidden() -> AdminError:
    return AdminError("role-forbidden", "この操作を行う権限がありません。",
                      "Your admin role does not allow this operation.", 403)


def not_found(what_ja: str, what_en: str) -> AdminError:
    return AdminError("not-found", f"{what_ja}が見つかりません。", f"{what_en} not found.", 404)


@dataclass(frozen=True, slots=True)
class Answer:
    """A handler's answer when the operation's defaults do not fit: another success status
    (202: saved, still being applied) or a download with its media type and headers."""

    body: Any
    status: int | None = None  # None: the operation's `status`
    media_type: str | None = None  # one of the operation's `produces`; None: the first
    headers: tuple[tuple[str, str], ...] = ()


def unwrap(result: Any) -> Any:
    """The body of a handler's result, whether it came as an `Answer` or bare."""
    return result.body if isinstance(result, Answer) else result


Handler = Callable[["AdminContext", Actor, Call], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Operation:
    id: str  # "users.create": stable, used as OpenAPI operationId and in audit events
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str  # relative to API_PREFIX, with {name} placeholders: "/users/{username}"
    roles: frozenset[Role]
    summary_ja: str
    summary_en: str
    handler: Handler
    tag: str  # OpenAPI tag: users, groups, devices, sessions, config, audit, tokens, dashboard
    path_params: Mapping[str, Any] = field(default_factory=dict)  # name -> JSON Schema
    query: Mapping[str, Any] | None = None  # JSON Schema of the query object (type: object)
    body: Mapping[str, Any] | None = None  # JSON Schema of the request body
    response: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    status: int = 200  # success status (201 for creations, 204 for an empty answer)
    # Media types of the success body, the usual one first; not JSON: the handler returns
    # bytes, or an `Answer` naming which of these it is.
    produces: tuple[str, ...] = ("application/json",)
    also: tuple[int, ...] = ()  # other success statuses a handler may answer (via `Answer`)

    @property
    def mutating(self) -> bool:
        return self.method != "GET"


API_PREFIX = "/.sekisho/api"
REGISTRY: dict[str, Operation] = {}


def register(*operations: Operation) -> None:
    """Add operations; an id or (method, path) used twice is a programming error."""
    for op in operations:
        taken = {(o.method, o.path) for o in REGISTRY.values()}
        if op.id in REGISTRY or (op.method, op.path) in taken:
            raise ValueError(f"admin operation declared twice: {op.id} {op.method} {op.path}")
        REGISTRY[op.id] = op


@dataclass(frozen=True, slots=True)
class AdminContext:
    """What an operation may use: the identity context (engine, sessions, audit, clock,
    pages, throttle, device trust, live runtime and configuration)."""

    identity: IdentityContext

    @property
    def now(self) -> datetime:
        return self.identity.clock()

    @property
    def config_path(self) -> str | None:
        """The configuration file in force; None for a snapshot built without a file."""
        source = self.identity.current_config().source
        return None if source.startswith("<") else source


def _validate(schema: Mapping[str, Any] | None, value: Any, where: str) -> None:
    if schema is None:
        return
    errors = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: e.path)
    if errors:
        first = errors[0]
        field_name = ".".join(str(p) for p in first.absolute_path) or where
        raise AdminError(
            "invalid-input", f"入力が正しくありません（{field_name}）: {first.message}",
            f"Invalid input ({field_name}): {first.message}", 422,
            details=[{"field": ".".join(str(p) for p in e.absolute_path) or where,
                      "problem": e.message} for e in errors[:20]])


async def run(ctx: AdminContext, actor: Actor, op: Operation, call: Call) -> Any:
    """Role check, input validation, then the handler (which audits what it changes)."""
    if actor.role not in op.roles:
        raise forbidden()
    _validate({"type": "object", "properties": dict(op.path_params)} if op.path_params
              else None, dict(call.path), "path")
    _validate(op.query, dict(call.query), "query")
    if op.body is not None:
        _validate(op.body, call.body, "body")
    return await op.handler(ctx, actor, call)
