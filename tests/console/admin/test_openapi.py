"""The OpenAPI 3.1 document: valid against the OpenAPI 3.1 meta-schema, one entry per
registered operation with its schemas, the shared error answers, both security schemes, and
the same bytes for every installation (it is served without authentication)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from schemathesis.specs.openapi.definitions import OPENAPI_31

sys.path.insert(0, str(Path(__file__).parent))
from admin_support import close, make_stack, request, run

from sekisho.console.admin import api as api_module
from sekisho.console.admin import load_operations
from sekisho.console.admin.openapi import ERROR_STATUSES, build_spec
from sekisho.console.admin.ops import REGISTRY


def _spec() -> dict[str, Any]:
    load_operations()
    return build_spec(REGISTRY.values())


def _schemas(node: Any) -> list[Any]:
    """Every `schema` value in the document (parameters, bodies, answers)."""
    found: list[Any] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema":
                found.append(value)
            found.extend(_schemas(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_schemas(value))
    return found


def test_the_document_is_valid_openapi_3_1() -> None:
    spec = _spec()
    errors = list(Draft202012Validator(OPENAPI_31).iter_errors(spec))
    assert errors == []
    for schema in _schemas(spec["paths"]) + list(spec["components"]["schemas"].values()):
        Draft202012Validator.check_schema(schema)


def test_every_operation_is_described_once_with_its_id_roles_and_answers() -> None:
    spec = _spec()
    described = {(method.upper(), path): op for path, item in spec["paths"].items()
                 for method, op in item.items()}
    assert len(described) == len(REGISTRY) >= 4
    for op in REGISTRY.values():
        entry = described[(op.method, op.path)]
        assert entry["operationId"] == op.id
        assert entry["x-sekisho-roles"] == sorted(r.value for r in op.roles)
        assert op.summary_ja in entry["description"] and op.summary_en in entry["description"]
        assert str(op.status) in entry["responses"]
        for status in ERROR_STATUSES:
            assert entry["responses"][str(status)] == {"$ref": f"#/components/responses/E{status}"}
        declared = {p["name"] for p in entry.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"\{(\w+)\}", op.path))
        if op.body is not None:
            assert entry["requestBody"]["content"]["application/json"]["schema"] == op.body
        if op.mutating:
            assert any(p["name"] == "X-CSRF-Token" for p in entry["parameters"])
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "session"}
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {t["name"] for t in spec["tags"]} == {op.tag for op in REGISTRY.values()}


def test_error_answers_share_one_schema_with_a_code_and_both_languages() -> None:
    spec = _spec()
    api_error = spec["components"]["schemas"]["ApiError"]["properties"]["error"]
    assert set(api_error["required"]) == {"code", "message", "message_ja", "message_en"}
    for status in (400, 401, 403, 404, 409, 415, 422, 503):
        response = spec["components"]["responses"][f"E{status}"]
        assert response["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}


def test_every_installation_serves_the_same_document(tmp_path: Path) -> None:
    """Nothing of the configuration leaks into it: another city, the same bytes."""
    served = []
    for n, extra in enumerate(("", "admin:\n  roles:\n    superadmin: [jouhou-seisaku]\n")):
        folder = tmp_path / str(n)
        folder.mkdir()
        stack = make_stack(folder, extra=extra)
        try:
            api = api_module.AdminApi(stack.identity)
            served.append(run(api.spec(request("GET", "/.sekisho/api/openapi.json"))).body)
        finally:
            close(stack)
    assert served[0] == served[1]
    text = served[0].decode()
    assert "wiki.localhost" not in text and "jouhou-seisaku" not in text
    assert json.loads(text)["servers"] == [{"url": "/.sekisho/api"}]
