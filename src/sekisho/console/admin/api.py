"""The admin API's HTTP shell: /.sekisho/api/* requests in, ops.run, JSON out.

The shell only translates HTTP: it matches (method, path template) over `ops.REGISTRY`,
finds the caller (`access`: a token, else the session under the admin policy), turns the
query and the JSON body into a `Call`, and answers what the operation returns. Role checks
and input validation happen in `ops.run`, the one door the console pages use too.

Defences: a mutating request by cookie needs the `X-CSRF-Token` header (a token bound to the
session, from GET /me) AND a same-origin `Sec-Fetch-Site` or `Origin`: a page on another
site can make the browser send the cookie, but can neither read the token nor forge those
headers (cross-site request forgery). Bodies are JSON only (415 otherwise): a form post from
another site is never even parsed. Every refusal is a 4xx with a code and a message in
Japanese and English; storage or audit trouble is a 503 (fail closed); anything unexpected
is logged and answered 500 `internal-error`, never a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from sekisho.audit.log import AuditUnavailable
from sekisho.console.admin import access, load_operations
from sekisho.console.admin.openapi import SPEC_PATH, spec_bytes
from sekisho.console.admin.ops import (
    API_PREFIX,
    REGISTRY,
    Actor,
    AdminContext,
    AdminError,
    Answer,
    Call,
    Operation,
    run,
)
from sekisho.console.admin.tokens import ME_ID
from sekisho.errors import StorageError
from sekisho.identity.csrf import session_binding
from sekisho.identity.principal import SessionInfo
from sekisho.web import Handler, Request, Response

if TYPE_CHECKING:
    from sekisho.identity.extensions import IdentityContext

log = logging.getLogger("sekisho.admin")

CSRF_HEADER = "x-csrf-token"
MAX_QUERY_PARAMS = 50
_JSON_TYPES = ("application/json",)
_INTEGER = re.compile(r"-?[0-9]{1,18}")
_BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True, slots=True)
class _Route:
    pattern: re.Pattern[str]
    names: tuple[str, ...]
    op: Operation


def _compile(op: Operation) -> _Route:
    names: list[str] = []
    regex = ""
    for part in re.split(r"(\{[a-z_][a-z0-9_]*\})", op.path):
        if part.startswith("{"):
            names.append(part[1:-1])
            regex += "([^/]+)"
        else:
            regex += re.escape(part)
    return _Route(re.compile(regex), tuple(names), op)


def _invalid(code: str, ja: str, en: str, status: int = 400) -> AdminError:
    return AdminError(code, ja, en, status)


class AdminApi:
    def __init__(self, context: IdentityContext) -> None:
        load_operations()
        self.ctx = AdminContext(context)
        self._routes: list[_Route] | None = None
        self._spec: bytes | None = None

    @property
    def routes(self) -> list[_Route]:
        # Built at the first request: every operation module has registered by then.
        if self._routes is None:
            self._routes = [_compile(op) for op in REGISTRY.values()]
        return self._routes

    # -- the handlers -----------------------------------------------------------------------

    async def spec(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _finish(access.error_response(_invalid(
                "method-not-allowed", "このメソッドは使えません。", "Method not allowed.", 405),
                access.language(request), [("Allow", "GET, HEAD")]))
        if self._spec is None:
            self._spec = spec_bytes(REGISTRY)
        return _finish(Response(200, [("Content-Type", "application/json")],
                                b"" if request.method == "HEAD" else self._spec))

    async def handle(self, request: Request) -> Response:
        lang = access.language(request)
        try:
            response = await self._handle(request, lang)
        except _MethodNotAllowed as error:
            response = access.error_response(error, lang, [("Allow", ", ".join(error.allowed))])
        except AdminError as error:
            response = access.error_response(error, lang)
        except (StorageError, AuditUnavailable):
            log.warning("admin API: storage or audit unavailable (fail closed)")
            response = access.error_response(access.unavailable(), lang)
        except Exception:
            log.exception("admin API: %s %s failed", request.method, request.path)
            response = access.error_response(AdminError(
                "internal-error", "内部エラーが発生しました。", "Internal error.", 500), lang)
        return _finish(response)

    async def _handle(self, request: Request, lang: str) -> Response:
        started = time.perf_counter()
        op, params = self._match(request)
        actor = await self._actor(request)
        if isinstance(actor, Response):
            return actor
        try:
            if op.mutating and actor.via == "session":
                self._check_csrf(request)
            call = Call(path=params, query=self._query(request, op),
                        body=self._body(request, op), lang=lang)
            result = await run(self.ctx, actor, op, call)
        except AdminError as error:
            if error.status in (401, 403):
                access.record_decision(self.ctx, request, (error.code,), status=error.status,
                                       started=started, user=actor.name, short=actor.session)
            raise
        if op.id == ME_ID and actor.via == "session" and isinstance(result, dict) and \
                isinstance(request.session, SessionInfo):
            result["csrf"] = self.ctx.identity.pages.csrf.issue(
                session_binding(request.session.session_id))
        response = _answer(op, result, request.method == "HEAD")
        access.record_decision(self.ctx, request, ("role-authorized",), status=response.status,
                               started=started, allow=True, user=actor.name,
                               short=actor.session, bytes_out=len(response.body))
        return response

    # -- steps ------------------------------------------------------------------------------

    def _match(self, request: Request) -> tuple[Operation, dict[str, str]]:
        path = request.path[len(API_PREFIX):]
        method = "GET" if request.method == "HEAD" else request.method
        allowed: set[str] = set()
        for route in self.routes:
            found = route.pattern.fullmatch(path)
            if found is None:
                continue
            if route.op.method == method:
                return route.op, dict(zip(route.names, found.groups(), strict=True))
            allowed.add(route.op.method)
        if not allowed:
            raise _invalid("unknown-endpoint", "この API はありません。",
                           "No such API endpoint.", 404)
        if "GET" in allowed:
            allowed.add("HEAD")
        raise _MethodNotAllowed(sorted(allowed))

    async def _actor(self, request: Request) -> Actor | Response:
        if request.header("authorization") is not None:
            # Tokens never use cookies (and a token request is judged by the token alone).
            found = await access.token_actor(self.ctx, request)
            if isinstance(found, AdminError):
                headers = []
                if found.status == 429 and isinstance(found.details, dict):
                    headers.append(("Retry-After", str(found.details.get("retry_after", 1))))
                elif found.status == 401:
                    headers.append(("WWW-Authenticate", 'Bearer realm="sekisho"'))
                return access.error_response(found, access.language(request), headers)
            return found
        return await access.session_actor(self.ctx, request, as_json=True)

    def _check_csrf(self, request: Request) -> None:
        session = request.session if isinstance(request.session, SessionInfo) else None
        token = request.header(CSRF_HEADER)
        ok = session is not None and self.ctx.identity.pages.csrf.verify(
            token, [session_binding(session.session_id)])
        site = request.header("sec-fetch-site")
        origin = request.header("origin")
        expected = f"{request.scheme}://{request.header('host') or request.host}"
        same_origin = (site is not None or origin is not None) and \
            (site is None or site == "same-origin") and (origin is None or origin == expected)
        if not (ok and same_origin):
            raise _invalid("csrf-invalid",
                           "CSRF の検査に失敗しました（X-CSRF-Token と同一オリジンが必要です）。",
                           "CSRF check failed (an X-CSRF-Token header and the same origin are "
                           "required).", 403)

    @staticmethod
    def _query(request: Request, op: Operation) -> dict[str, Any]:
        pairs = parse_qsl(request.query, keep_blank_values=True)
        if len(pairs) > MAX_QUERY_PARAMS:
            raise _invalid("too-many-parameters", "クエリのパラメータが多すぎます。",
                           "Too many query parameters.")
        query: dict[str, Any] = {}
        for key, value in pairs:
            if key in query:
                raise _invalid("duplicate-parameter", f"パラメータ {key} が重複しています。",
                               f"Query parameter {key} is given twice.", 422)
            query[key] = value
        if op.query is None:
            return query
        properties: Mapping[str, Any] = op.query.get("properties") or {}
        for key, value in query.items():
            kind = (properties.get(key) or {}).get("type")
            if kind == "integer":
                if not _INTEGER.fullmatch(value):
                    raise _not_a(key, "整数", "an integer")
                query[key] = int(value)
            elif kind == "boolean":
                if value not in _BOOLEANS:
                    raise _not_a(key, "true または false", "true or false")
                query[key] = _BOOLEANS[value]
        return query

    @staticmethod
    def _body(request: Request, op: Operation) -> Any:
        if op.body is None:
            return None
        kind = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
        if kind not in _JSON_TYPES:
            raise _invalid("unsupported-media-type",
                           "本文は application/json で送ってください。",
                           "Send the body as application/json.", 415)
        try:
            value = json.loads(request.body.decode("utf-8"), parse_constant=_no_constant)
            # `"\ud800"` is valid JSON but no text: a lone surrogate would only fail later,
            # deep in an operation or in storage, as a 500 instead of this 400.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError):
            raise _invalid("malformed-json", "本文が正しい JSON ではありません。",
                           "The body is not valid JSON.") from None
        return value


class _MethodNotAllowed(AdminError):
    def __init__(self, allowed: list[str]) -> None:
        super().__init__("method-not-allowed", "このメソッドは使えません。",
                         "Method not allowed for this endpoint.", 405,
                         details={"allow": allowed})
        self.allowed = allowed


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _not_a(key: str, ja: str, en: str) -> AdminError:
    return AdminError("invalid-input", f"入力が正しくありません（{key}）: {ja}が必要です",
                      f"Invalid input ({key}): expected {en}", 422,
                      details=[{"field": key, "problem": f"expected {en}"}])


def _answer(op: Operation, result: Any, head: bool) -> Response:
    status, kind = op.status, op.produces[0]
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(result, Answer):
        status = result.status or status
        kind = result.media_type or kind
        headers, result = result.headers, result.body
    if status == 204:
        return Response(204, [])
    if kind == "application/json":
        body = json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    else:
        body = result if isinstance(result, bytes) else str(result).encode("utf-8")
    return Response(status, [("Content-Type", kind), *headers], b"" if head else body)


def _finish(response: Response) -> Response:
    response.set_header("Cache-Control", "no-store")
    response.set_header("X-Content-Type-Options", "nosniff")
    return response


def build_handlers(context: IdentityContext) -> Mapping[str, Handler]:
    """The API's handlers (an `extensions.BUILDERS` entry): the subtree /.sekisho/api/* and
    the public spec; none without a live runtime (no admin policy to decide with)."""
    if context.current_runtime is None:
        return {}
    api = AdminApi(context)

    async def handle(request: Request) -> Response:
        return await api.handle(request)

    return {API_PREFIX + "/*": handle, SPEC_PATH: api.spec}
