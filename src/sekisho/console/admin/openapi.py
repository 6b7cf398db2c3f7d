"""The OpenAPI 3.1 document of the admin API, generated from the operation registry.

Every path, parameter, body and answer comes from `ops.REGISTRY`, the same declarations the
API shell validates against, so the document cannot drift from what the server accepts. It
holds nothing about an installation (no host, no route, no group name): it is the same for
every Sekisho of this version, which is why it is served without authentication.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sekisho import __version__
from sekisho.console.admin.ops import API_PREFIX, Operation

SPEC_PATH = API_PREFIX + "/openapi.json"
# Every refusal the API shell or an operation can give (ops.AdminError and access).
ERROR_STATUSES = {
    400: ("不正な要求（JSON の誤りなど）", "Bad request (malformed JSON and the like)"),
    401: ("認証が必要、またはトークンが無効、または再認証（パスキー）が必要",
          "Authentication needed, token not valid, or a passkey step-up required"),
    403: ("役割・ポリシー・CSRF 検査により拒否", "Refused by role, policy or CSRF check"),
    404: ("見つからない", "Not found"),
    409: ("現在の状態と矛盾する", "Conflicts with the current state"),
    415: ("本文は application/json のみ", "The body must be application/json"),
    422: ("入力が正しくない", "Invalid input"),
    429: ("失敗が多すぎる（送信元ごとの制限）", "Too many failed attempts from this address"),
    503: ("データベースまたは監査ログが利用できない（フェイルクローズ）",
          "The database or the audit log is unavailable (fail closed)"),
}
API_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message", "message_ja", "message_en"],
        "properties": {
            "code": {"type": "string", "description": "機械向けの理由コード / machine code"},
            "message": {"type": "string"},
            "message_ja": {"type": "string"},
            "message_en": {"type": "string"},
            "details": {},
        },
    }},
}
# A refusal by the gateway itself, before the API (an ambiguous path, a body over the limit).
GATEWAY_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error", "status", "message"],
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"},
                   "message": {"type": "string"}, "message_ja": {"type": "string"},
                   "message_en": {"type": "string"}, "reasons": {"type": "array"}},
}
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
DESCRIPTION = (
    "Sekisho の管理 API。ブラウザのセッション（Cookie、書き込みには X-CSRF-Token ヘッダー）"
    "または API トークン（Authorization: Bearer skt_…）で呼び出します。詳しくは docs/admin.md。\n\n"
    "The Sekisho admin API. Call it with a browser session (cookie; writes need the "
    "X-CSRF-Token header from GET /me) or an API token (Authorization: Bearer skt_…). "
    "See docs/admin.md."
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{name}"}


def _parameters(op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in _PARAM.findall(op.path):
        params.append({"name": name, "in": "path", "required": True,
                       "schema": dict(op.path_params.get(name, {"type": "string"}))})
    query = op.query or {}
    required = set(query.get("required", ()))
    for name, schema in (query.get("properties") or {}).items():
        params.append({"name": name, "in": "query", "required": name in required,
                       "schema": dict(schema)})
    if op.mutating:
        params.append({"name": "X-CSRF-Token", "in": "header", "required": False,
                       "description": "ブラウザのセッションでは必須（GET /me の csrf）。"
                                      "トークンでは不要 / Required with a browser session "
                                      "(csrf from GET /me); not used with a token",
                       "schema": {"type": "string", "maxLength": 200}})
    return params


def _success(op: Operation) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": op.summary_en}
    if op.status == 204:
        return answer
    answer["content"] = {
        kind: {"schema": dict(op.response) if kind == "application/json" else {"type": "string"}}
        for kind in op.produces}
    return answer


def operation_object(op: Operation) -> dict[str, Any]:
    roles = ", ".join(sorted(r.value for r in op.roles))
    document: dict[str, Any] = {
        "operationId": op.id,
        "summary": op.summary_en,
        "description": f"{op.summary_ja}\n\n{op.summary_en}\n\n役割 / roles: {roles}",
        "tags": [op.tag],
        "x-sekisho-roles": sorted(r.value for r in op.roles),
        "responses": {**{str(status): _success(op) for status in (op.status, *op.also)},
                      **{str(s): _ref(f"responses/E{s}") for s in ERROR_STATUSES}},
    }
    params = _parameters(op)
    if params:
        document["parameters"] = params
    if op.body is not None:
        document["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": dict(op.body)}}}
    return document


def build_spec(operations: Iterable[Operation]) -> dict[str, Any]:
    """The whole document; operations sorted by path then method, so it is reproducible."""
    ops = sorted(operations, key=lambda o: (o.path, o.method))
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method.lower()] = operation_object(op)
    error_content = {"application/json": {"schema": _ref("schemas/Error")}}
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {"title": "Sekisho admin API", "version": __version__,
                 "description": DESCRIPTION,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "servers": [{"url": API_PREFIX}],
        "tags": [{"name": tag} for tag in sorted({op.tag for op in ops})],
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "skt_<id>_<secret>",
                           "description": "API トークン（sekisho token create）/ An API token"},
                "session": {"type": "apiKey", "in": "cookie", "name": "__Host-sekisho",
                            "description": "ブラウザのセッション（名前は session.cookie_name）/ "
                                           "A browser session (cookie named by "
                                           "session.cookie_name)"},
            },
            "schemas": {"Error": {"oneOf": [_ref("schemas/ApiError"),
                                            _ref("schemas/GatewayError")]},
                        "ApiError": API_ERROR, "GatewayError": GATEWAY_ERROR},
            "responses": {f"E{status}": {"description": f"{ja} / {en}",
                                         "content": error_content}
                          for status, (ja, en) in ERROR_STATUSES.items()},
        },
    }


def spec_bytes(operations: Mapping[str, Operation]) -> bytes:
    return json.dumps(build_spec(operations.values()), ensure_ascii=False,
                      indent=1).encode("utf-8")
