"""The authorisation matrix through a real gateway on 127.0.0.1: every operation in the
registry × every role's token, no credentials, an expired and a revoked token.

Expected: a role listed by the operation gets past authorisation (whatever the dummy input
then earns: 2xx, 404, 409, 422 …); any other role gets 403 `role-forbidden`; no credentials
get 401 `unauthenticated`; an expired or revoked token gets 401 `token-invalid`. A
hand-written table of well-known operations keeps the test from passing vacuously should
the registry's roles ever be widened by mistake.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

sys.path.insert(0, str(Path(__file__).parent))
from admin_gateway import ROLES, AdminGateway, start

from sekisho.console.admin import load_operations
from sekisho.console.admin.ops import REGISTRY, Operation

load_operations()

# Who may do what, written by hand from docs/admin.md (not read from the registry).
KNOWN = {
    "me": {"superadmin", "helpdesk", "auditor"},
    "tokens.list": {"superadmin"},
    "tokens.create": {"superadmin"},
    "tokens.revoke": {"superadmin"},
}
KNOWN_IF_PRESENT = {
    "users.create": {"superadmin", "helpdesk"},
    "sessions.revoke": {"superadmin", "helpdesk"},
    "audit.search": {"superadmin", "helpdesk", "auditor"},
    "config.apply": {"superadmin"},
}
CANDIDATES = ("x0", "0123456789abcdef", "20260101T000000000000Z-0123abcd.yaml")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminGateway]:
    found = start(tmp_path_factory.mktemp("matrix"))
    try:
        yield found
    finally:
        found.stop()


def _value(schema: Any) -> str:
    """A path value of the right shape, so an allowed call reaches its handler."""
    for candidate in CANDIDATES:
        if Draft202012Validator(schema or {}).is_valid(candidate):
            return candidate
    return "x0"


def _path(op: Operation) -> str:
    path = op.path
    for name, schema in op.path_params.items():
        path = path.replace("{" + name + "}", _value(schema))
    return path


def _code(response: Any) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return f"not-json:{response.status}"
    return str(error.get("code")) if isinstance(error, dict) else str(error)


def test_the_hand_written_table_matches_the_registry() -> None:
    for op_id, roles in KNOWN.items():
        assert {r.value for r in REGISTRY[op_id].roles} == roles, op_id
    for op_id, roles in KNOWN_IF_PRESENT.items():
        if op_id in REGISTRY:
            assert {r.value for r in REGISTRY[op_id].roles} == roles, op_id
    assert len(REGISTRY) >= len(KNOWN)


@pytest.mark.parametrize("op_id", sorted(REGISTRY))
def test_every_operation_for_every_credential(gateway: AdminGateway, op_id: str) -> None:
    op = REGISTRY[op_id]
    body = {} if op.body is not None else None
    seen: dict[str, tuple[int, str]] = {}
    for credential in (*ROLES, None, "expired", "revoked"):
        response = gateway.call(op.method, _path(op), credential, body=body)
        seen[str(credential)] = (response.status, _code(response))
    expected: dict[str, Any] = {}
    for role in ROLES:
        if role in {r.value for r in op.roles}:
            status, code = seen[role]
            assert status not in (401, 403, 500) and code != "role-forbidden", (role, seen)
            expected[role] = seen[role]
        else:
            expected[role] = (403, "role-forbidden")
    expected["None"] = (401, "unauthenticated")
    expected["expired"] = expected["revoked"] = (401, "token-invalid")
    assert seen == expected


def test_a_browser_session_through_the_gateway(gateway: AdminGateway) -> None:
    """The cookie path end to end: the gateway's session lookup, the admin policy, the
    passkey step-up, and CSRF on writes (sato is in `admins`, tanaka in `staff`)."""
    api = "/.sekisho/api"
    json_only = {"Accept": "application/json"}
    admin = gateway.session("sato", ("pwd", "webauthn_uv"))
    me = admin.get(gateway.host, api + "/me", headers=json_only)
    assert me.status == 200 and me.json()["via"] == "session"
    csrf = str(me.json()["csrf"])
    create = json.dumps({"name": "from-browser", "role": "auditor"}).encode()
    sent = {**json_only, "Content-Type": "application/json"}
    refused = admin.request("POST", gateway.host, api + "/tokens", body=create, headers=sent)
    assert (refused.status, _code(refused)) == (403, "csrf-invalid")
    origin = f"https://{gateway.host}"
    made = admin.request("POST", gateway.host, api + "/tokens", body=create,
                         headers={**sent, "X-CSRF-Token": csrf, "Origin": origin})
    assert made.status == 201 and made.json()["created_by"] == "sato"

    password_only = gateway.session("sato", ("pwd",))
    step = password_only.get(gateway.host, api + "/me", headers=json_only)
    assert (step.status, _code(step)) == (401, "step-up-required")
    page = password_only.get(gateway.host, "/.sekisho/admin/")
    assert page.status == 302 and "need=passkey" in (page.header("Location") or "")

    staff = gateway.session("tanaka", ("pwd", "webauthn_uv"))
    denied = staff.get(gateway.host, api + "/me", headers=json_only)
    assert (denied.status, _code(denied)) == (403, "policy-denied")
