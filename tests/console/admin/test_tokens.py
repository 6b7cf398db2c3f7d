"""API tokens: storage on SQLite and PostgreSQL (hashed at rest, revocation, use stamps), the
`tokens.*` operations (secret once, role scope, life limits, audit) and `sekisho token`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

sys.path.insert(0, str(Path(__file__).parent))
from admin_support import Stack, close, make_stack, request, run

from sekisho.console.admin import access
from sekisho.console.admin.ops import REGISTRY, Actor, AdminError, Call, Role
from sekisho.console.admin.ops import run as run_op
from sekisho.storage import api_tokens
from sekisho.storage.database import create_database_engine, upgrade

SATO = Actor("sato", Role.SUPERADMIN, "session", "127.0.0.1", "abc")
T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


# -- storage (both databases) -----------------------------------------------------------------

def test_only_the_hash_of_the_secret_is_stored(engine: Engine) -> None:
    record, token = api_tokens.create(engine, name="backup", role="auditor", created_by="sato",
                                      now=T0, expires_at=T0 + timedelta(days=3))
    prefix, token_id, secret = token.split("_", 2)
    assert (prefix, token_id) == ("skt", record.id) and len(secret) >= 43
    assert api_tokens.parse(token) == (record.id, secret)
    with engine.connect() as conn:
        row = [str(v) for v in conn.execute(text("SELECT * FROM api_tokens")).one()]
    assert not any(secret in value for value in row)
    assert hashlib.sha256(secret.encode()).hexdigest() in row
    again = api_tokens.get(engine, record.id)
    assert again == record and again.expires_at == T0 + timedelta(days=3)


def test_revoke_once_and_list_newest_first(engine: Engine) -> None:
    first, _ = api_tokens.create(engine, name="a", role="auditor", created_by="x", now=T0,
                                 expires_at=T0 + timedelta(days=1))
    second, _ = api_tokens.create(engine, name="b", role="helpdesk", created_by="x",
                                  now=T0 + timedelta(seconds=1), expires_at=T0 + timedelta(days=1))
    assert [r.id for r in api_tokens.list_tokens(engine)] == [second.id, first.id]
    assert api_tokens.revoke(engine, first.id, T0) is True
    assert api_tokens.revoke(engine, first.id, T0) is False  # once
    assert api_tokens.revoke(engine, "0" * 16, T0) is False
    gone = api_tokens.get(engine, first.id)
    assert gone is not None and gone.revoked_at == T0 and not gone.live(T0)


def test_use_is_stamped_at_most_once_a_minute(engine: Engine) -> None:
    record, _ = api_tokens.create(engine, name="a", role="auditor", created_by="x", now=T0,
                                  expires_at=T0 + timedelta(days=1))
    for seconds, expected in ((0, 0), (30, 0), (59, 0), (60, 60), (61, 60), (125, 125)):
        api_tokens.touch(engine, record.id, T0 + timedelta(seconds=seconds))
        stamp = api_tokens.get(engine, record.id).last_used_at  # type: ignore[union-attr]
        assert stamp == T0 + timedelta(seconds=expected), seconds


TOKEN_ID = "a" * 16


@pytest.mark.parametrize("text_", [
    "", "skt_", "skt_abc_" + "x" * 43, "SKT_" + TOKEN_ID + "_" + "x" * 43,
    "skt_" + "A" * 16 + "_" + "x" * 43, "skt_" + TOKEN_ID + "_short",
    "skt_" + TOKEN_ID + "_" + "x" * 200, "skt_" + TOKEN_ID + "_" + "é" * 43])
def test_malformed_token_texts_never_reach_storage(text_: str) -> None:
    assert api_tokens.parse(text_) is None


# -- operations -------------------------------------------------------------------------------

@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    found = make_stack(tmp_path, extra="admin:\n  token_max_days: 30\n")
    found.user("sato", "admins")
    try:
        yield found
    finally:
        close(found)


def _op(stack: Stack, op_id: str, actor: Actor = SATO, **call: Any) -> Any:
    return run(run_op(stack.ctx, actor, REGISTRY[op_id], Call(**call)))


def _refused(stack: Stack, op_id: str, actor: Actor = SATO, **call: Any) -> AdminError:
    with pytest.raises(AdminError) as caught:
        _op(stack, op_id, actor, **call)
    return caught.value


def test_create_shows_the_secret_once_and_it_works_for_its_role(stack: Stack) -> None:
    made = _op(stack, "tokens.create", body={"name": "夜間バックアップ", "role": "auditor",
                                             "expires_in_days": 30})
    assert made["created_by"] == "sato" and made["state"] == "active"
    assert made["token"].startswith(f"skt_{made['id']}_")
    listed = _op(stack, "tokens.list")["tokens"]
    assert [t["id"] for t in listed] == [made["id"]] and "token" not in listed[0]
    assert made["token"] not in json.dumps(listed)
    sent = request("GET", "/.sekisho/api/me",
                   headers=[("Authorization", f"Bearer {made['token']}")])
    actor = run(access.token_actor(stack.ctx, sent))
    assert isinstance(actor, Actor) and actor.role is Role.AUDITOR
    events = stack.events("admin.api_token")
    assert [(e["admin"], e["action"], e["token"], e["role"]) for e in events] == [
        ("sato", "created", made["id"], "auditor")]
    assert made["token"].split("_", 2)[2] not in json.dumps(events)


def test_life_is_limited_by_token_max_days_and_defaults_within_it(stack: Stack) -> None:
    too_long = _refused(stack, "tokens.create", body={"name": "x", "role": "auditor",
                                                      "expires_in_days": 31})
    assert (too_long.status, too_long.code) == (422, "token-too-long")
    assert "30" in too_long.en
    made = _op(stack, "tokens.create", body={"name": "x", "role": "auditor"})
    life = datetime.fromisoformat(made["expires_at"]) - stack.clock()
    assert life == timedelta(days=30)  # min(90, token_max_days)
    bad_name = _refused(stack, "tokens.create", body={"name": "x\n", "role": "auditor"})
    assert bad_name.status == 422


def test_a_token_made_by_a_token_never_outlives_it(stack: Stack) -> None:
    parent = _op(stack, "tokens.create", body={"name": "parent", "role": "superadmin",
                                               "expires_in_days": 2})
    by_token = Actor("token:parent", Role.SUPERADMIN, "token", "127.0.0.1", parent["id"])
    child = _op(stack, "tokens.create", by_token, body={"name": "child", "role": "auditor",
                                                        "expires_in_days": 30})
    assert child["expires_at"] == parent["expires_at"]
    assert child["created_by"] == "token:parent"


def test_revoke_ends_the_token_once_and_is_audited(stack: Stack) -> None:
    made = _op(stack, "tokens.create", body={"name": "x", "role": "helpdesk"})
    revoked = _op(stack, "tokens.revoke", path={"id": made["id"]})
    assert revoked["state"] == "revoked" and revoked["revoked_at"] is not None
    again = _refused(stack, "tokens.revoke", path={"id": made["id"]})
    assert (again.status, again.code) == (409, "already-revoked")
    missing = _refused(stack, "tokens.revoke", path={"id": "0" * 16})
    assert missing.status == 404
    malformed = _refused(stack, "tokens.revoke", path={"id": "../etc"})
    assert malformed.status == 422
    sent = request("GET", "/.sekisho/api/me",
                   headers=[("Authorization", f"Bearer {made['token']}")])
    assert isinstance(run(access.token_actor(stack.ctx, sent)), AdminError)
    assert [e["action"] for e in stack.events("admin.api_token")] == ["created", "revoked"]


@pytest.mark.parametrize("role", [Role.HELPDESK, Role.AUDITOR])
def test_only_a_superadmin_manages_tokens_but_everyone_may_ask_who_they_are(
        stack: Stack, role: Role) -> None:
    actor = Actor("someone", role, "session", "127.0.0.1", "x")
    for op_id, call in (("tokens.list", {}), ("tokens.create", {"body": {
            "name": "x", "role": "auditor"}}), ("tokens.revoke", {"path": {"id": "0" * 16}})):
        assert _refused(stack, op_id, actor, **call).code == "role-forbidden"
    assert _op(stack, "me", actor) == {"name": "someone", "role": role.value, "via": "session"}


# -- the CLI ----------------------------------------------------------------------------------

def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sekisho", "token", *args,
                           "--database-url", url], capture_output=True, text=True, timeout=60,
                          check=False)


def test_cli_creates_lists_and_revokes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    engine = create_database_engine(url)
    upgrade(engine)
    try:
        made = _cli("create", "--name", "ci", "--role", "auditor", "--days", "5", url=url)
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        assert token.startswith("skt_") and "\n" not in token  # the secret alone on stdout
        record = api_tokens.get(engine, api_tokens.parse(token)[0])  # type: ignore[index]
        assert record is not None and record.role == "auditor"
        assert record.expires_at - record.created_at == timedelta(days=5)
        listed = json.loads(_cli("list", "--json", url=url).stdout)
        assert [(t["id"], t["state"]) for t in listed] == [(record.id, "active")]
        assert token not in _cli("list", url=url).stdout
        too_long = _cli("create", "--name", "ci", "--role", "auditor", "--days", "400", url=url)
        assert too_long.returncode == 2 and "token-too-long" in too_long.stderr
        assert _cli("revoke", record.id, url=url).returncode == 0
        again = _cli("revoke", record.id, url=url)
        assert again.returncode == 2 and "already-revoked" in again.stderr
        with engine.connect() as conn:
            kinds = [row[0] for row in conn.execute(text(
                "SELECT body FROM audit_events ORDER BY seq"))]
        actions = [json.loads(b)["action"] for b in kinds if '"action"' in b]
        assert actions == ["created", "revoked"]
    finally:
        engine.dispose()
