"""The admin API's HTTP shell in process: matching, 404/405/415/400/422, query conversion,
CSRF for cookie sessions (and none for tokens), error bodies in both languages, headers,
fail-closed 503s and a 500 that never leaks a traceback. Requests are shaped exactly as the
gateway hands them to a reserved-path handler; storage, audit and sessions are real."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from admin_support import Stack, body, close, make_stack, request, run

from sekisho.audit.log import AuditUnavailable
from sekisho.console.admin import api as api_module
from sekisho.console.admin.ops import READERS, REGISTRY, Answer, Operation, register
from sekisho.errors import StorageError
from sekisho.storage import api_tokens
from sekisho.web import Response

ORIGIN = "https://wiki.localhost"


class Api:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.api = api_module.AdminApi(stack.identity)
        now = stack.clock()
        self.tokens = {role: api_tokens.create(
            stack.engine, name=f"{role}-job", role=role, created_by="sato", now=now,
            expires_at=now + timedelta(days=30))[1] for role in ("superadmin", "helpdesk",
                                                                 "auditor")}

    def call(self, method: str, path: str, *, role: str | None = "superadmin",
             json_body: Any = None, raw: bytes | None = None, query: str = "",
             headers: list[tuple[str, str]] | None = None, cookie: str | None = None) -> Response:
        sent = list(headers or [])
        if role is not None:
            sent.append(("Authorization", f"Bearer {self.tokens[role]}"))
        data = b""
        if raw is not None:
            data = raw
        elif json_body is not None:
            import json

            data = json.dumps(json_body).encode()
            sent.append(("Content-Type", "application/json"))
        handler = self.api.spec if path == "/.sekisho/api/openapi.json" else self.api.handle
        return run(handler(request(method, path, query=query, headers=sent, body=data,
                                   cookie=cookie)))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    found = make_stack(tmp_path)
    found.user("sato", "admins")
    found.user("yamada", "helpdesk")
    try:
        yield found
    finally:
        close(found)


@pytest.fixture
def api(stack: Stack) -> Api:
    return Api(stack)


async def _echo(ctx: Any, actor: Any, call: Any) -> Any:
    return {"query": dict(call.query)}


async def _explode(ctx: Any, actor: Any, call: Any) -> Any:
    kind = call.query.get("kind")
    if kind == "storage":
        raise StorageError("database down")
    if kind == "audit":
        raise AuditUnavailable("audit down")
    raise RuntimeError("secret internal detail")


@pytest.fixture
def test_ops() -> Iterator[None]:
    """Two operations for this file only (removed after): an echo of the converted query and
    one that fails in each way the shell must translate."""
    ops = (
        Operation(id="test.echo", method="GET", path="/test/echo", roles=READERS, tag="test",
                  summary_ja="試験", summary_en="test", handler=_echo,
                  query={"type": "object", "additionalProperties": False, "properties": {
                      "limit": {"type": "integer", "minimum": 1, "maximum": 10},
                      "all": {"type": "boolean"}, "q": {"type": "string"}}}),
        Operation(id="test.explode", method="GET", path="/test/explode", roles=READERS,
                  tag="test", summary_ja="試験", summary_en="test", handler=_explode,
                  query={"type": "object", "properties": {"kind": {"type": "string"}}}),
    )
    register(*ops)
    try:
        yield
    finally:
        for op in ops:
            REGISTRY.pop(op.id, None)


def _error(response: Response) -> dict[str, Any]:
    error: dict[str, Any] = body(response)["error"]
    assert {"code", "message", "message_ja", "message_en"} <= set(error)
    return error


def test_a_token_call_answers_json_with_safe_headers(api: Api) -> None:
    response = api.call("GET", "/.sekisho/api/me", role="auditor")
    assert response.status == 200
    assert body(response) == {"name": "token:auditor-job", "role": "auditor", "via": "token"}
    headers = dict(response.headers)
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_unknown_paths_are_404_and_wrong_methods_405_with_allow(api: Api) -> None:
    missing = api.call("GET", "/.sekisho/api/nothing-here")
    assert missing.status == 404 and _error(missing)["code"] == "unknown-endpoint"
    wrong = api.call("PUT", "/.sekisho/api/tokens")
    assert wrong.status == 405 and _error(wrong)["code"] == "method-not-allowed"
    assert dict(wrong.headers)["Allow"] == "GET, HEAD, POST"


def test_bodies_are_json_only(api: Api) -> None:
    form = api.call("POST", "/.sekisho/api/tokens", raw=b"name=x&role=auditor",
                    headers=[("Content-Type", "application/x-www-form-urlencoded")])
    assert form.status == 415 and _error(form)["code"] == "unsupported-media-type"
    for raw in (b"{", b"\xff\xfe", b'{"name": NaN}', b"[" * 100_000,
                b'{"name": "\\ud800x", "role": "auditor"}'):
        bad = api.call("POST", "/.sekisho/api/tokens", raw=raw,
                       headers=[("Content-Type", "application/json; charset=utf-8")])
        assert bad.status == 400 and _error(bad)["code"] == "malformed-json", raw[:10]
    invalid = api.call("POST", "/.sekisho/api/tokens", json_body={"name": "x", "role": "root"})
    assert invalid.status == 422
    error = _error(invalid)
    assert error["code"] == "invalid-input" and error["details"][0]["field"] == "role"


def test_query_values_are_converted_by_the_schema(api: Api, test_ops: None) -> None:
    ok = api.call("GET", "/.sekisho/api/test/echo", query="limit=3&all=true&q=7")
    assert body(ok) == {"query": {"limit": 3, "all": True, "q": "7"}}
    for query in ("limit=three", "limit=99", "all=yes", "limit=1&limit=2", "extra=1",
                  "limit=" + "9" * 40):
        refused = api.call("GET", "/.sekisho/api/test/echo", query=query)
        assert refused.status == 422, query
        assert _error(refused)["code"] in {"invalid-input", "duplicate-parameter"}, query


def test_failures_are_503_or_a_bare_500_never_a_traceback(api: Api, test_ops: None) -> None:
    for kind in ("storage", "audit"):
        down = api.call("GET", "/.sekisho/api/test/explode", query=f"kind={kind}")
        assert down.status == 503 and _error(down)["code"] == "storage-unavailable"
    crash = api.call("GET", "/.sekisho/api/test/explode", query="kind=bug")
    assert crash.status == 500 and _error(crash)["code"] == "internal-error"
    assert b"secret internal detail" not in crash.body and b"Traceback" not in crash.body


def test_messages_follow_accept_language(api: Api) -> None:
    ja = api.call("GET", "/.sekisho/api/nothing")
    en = api.call("GET", "/.sekisho/api/nothing", headers=[("Accept-Language", "en-US,en")])
    assert _error(ja)["message"] == _error(ja)["message_ja"] != _error(ja)["message_en"]
    assert _error(en)["message"] == _error(en)["message_en"]


def test_a_role_outside_the_operation_is_refused_and_audited(api: Api) -> None:
    refused = api.call("POST", "/.sekisho/api/tokens", role="helpdesk",
                       json_body={"name": "x", "role": "superadmin"})
    assert refused.status == 403 and _error(refused)["code"] == "role-forbidden"
    assert api_tokens.list_tokens(api.stack.engine)[0].name != "x"
    decisions = [e for e in api.stack.events("access.decision") if e["route"] == "sekisho-admin"]
    assert [(e["user"], e["decision"], e["reasons"], e["status"]) for e in decisions] == [
        ("token:helpdesk-job", "deny", ["role-forbidden"], 403)]


def test_allowed_calls_are_audited_too(api: Api) -> None:
    api.call("GET", "/.sekisho/api/me", role="auditor")
    decisions = [e for e in api.stack.events("access.decision") if e["route"] == "sekisho-admin"]
    assert [(e["user"], e["decision"], e["method"], e["path"], e["status"]) for e in decisions
            ] == [("token:auditor-job", "allow", "GET", "/.sekisho/api/me", 200)]


# -- CSRF -------------------------------------------------------------------------------------

def _session_csrf(api: Api, name: str = "sato") -> tuple[str, str]:
    cookie, _ = api.stack.session(name)
    me = api.call("GET", "/.sekisho/api/me", role=None, cookie=cookie)
    assert me.status == 200, me.body
    answer = body(me)
    assert answer["via"] == "session" and answer["name"] == name
    return cookie, answer["csrf"]


CREATE = {"name": "nightly", "role": "auditor", "expires_in_days": 7}


@pytest.mark.parametrize("headers", [
    [],  # no token, no origin
    [("Origin", ORIGIN)],  # same origin but no token
    [("X-CSRF-Token", "{csrf}")],  # a token, but neither Origin nor Sec-Fetch-Site
    [("X-CSRF-Token", "{csrf}"), ("Origin", "https://evil.example")],
    [("X-CSRF-Token", "{csrf}"), ("Sec-Fetch-Site", "cross-site")],
    [("X-CSRF-Token", "{csrf}"), ("Sec-Fetch-Site", "same-site"), ("Origin", ORIGIN)],
    [("X-CSRF-Token", "{other}"), ("Origin", ORIGIN)],  # another session's token
])
def test_a_cookie_session_needs_the_csrf_header_and_the_same_origin_to_write(
        api: Api, headers: list[tuple[str, str]]) -> None:
    cookie, csrf = _session_csrf(api)
    _, other = _session_csrf(api, "yamada")
    sent = [(k, v.format(csrf=csrf, other=other)) for k, v in headers]
    refused = api.call("POST", "/.sekisho/api/tokens", role=None, cookie=cookie,
                       json_body=CREATE, headers=sent)
    assert refused.status == 403 and _error(refused)["code"] == "csrf-invalid"
    assert api_tokens.list_tokens(api.stack.engine)[0].name != "nightly"


def test_with_csrf_and_same_origin_a_session_writes_and_a_token_needs_neither(api: Api) -> None:
    cookie, csrf = _session_csrf(api)
    for origin in ([("Origin", ORIGIN)], [("Sec-Fetch-Site", "same-origin")]):
        made = api.call("POST", "/.sekisho/api/tokens", role=None, cookie=cookie,
                        json_body=CREATE, headers=[("X-CSRF-Token", csrf), *origin])
        assert made.status == 201, made.body
        assert body(made)["created_by"] == "sato"
    by_token = api.call("POST", "/.sekisho/api/tokens", json_body=CREATE)
    assert by_token.status == 201
    # Reads by session need no CSRF header.
    assert api.call("GET", "/.sekisho/api/tokens", role=None, cookie=cookie).status == 200


def test_the_spec_is_public_and_read_only(api: Api) -> None:
    spec = api.call("GET", "/.sekisho/api/openapi.json", role=None)
    assert spec.status == 200 and body(spec)["openapi"] == "3.1.0"
    assert dict(spec.headers)["Cache-Control"] == "no-store"
    post = api.call("POST", "/.sekisho/api/openapi.json", role=None)
    assert post.status == 405 and dict(post.headers)["Allow"] == "GET, HEAD"


def test_a_handler_answer_sets_status_media_type_and_headers(api: Api) -> None:
    """A download keeps its own media type and headers (JSONL is not sent as CSV), and a
    handler may answer 202 for "saved, not yet in force"."""
    async def _download(ctx: Any, actor: Any, call: Any) -> Any:
        return Answer(b'{"seq":1}\n', status=202 if call.query.get("later") else None,
                      media_type="application/x-ndjson", headers=(("X-Count", "1"),))

    op = Operation(id="test.download", method="GET", path="/test/download", roles=READERS,
                   tag="test", summary_ja="試験", summary_en="test", handler=_download,
                   produces=("text/csv", "application/x-ndjson"), also=(202,),
                   query={"type": "object", "properties": {"later": {"type": "string"}}})
    register(op)
    try:
        response = api.call("GET", "/.sekisho/api/test/download", role="auditor")
        headers = dict(response.headers)
        assert (response.status, response.body) == (200, b'{"seq":1}\n')
        assert headers["Content-Type"] == "application/x-ndjson" and headers["X-Count"] == "1"
        assert api.call("GET", "/.sekisho/api/test/download", query="later=1",
                        role="auditor").status == 202
    finally:
        REGISTRY.pop(op.id, None)
