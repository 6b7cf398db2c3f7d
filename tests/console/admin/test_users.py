"""Users and groups through `ops.run` over a real migrated database and the durable audit log.

Checked: generated passwords are returned once and stored hashed, the password policy's
messages reach the caller, helpdesk cannot act on an administrator nor change admin groups,
nobody locks themself out, every change is audited with the actor, revocations are seen by
the SessionManager at once, and a page of 10,000 accounts costs a fixed number of queries
walking the username index (no sort of the whole table).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, text

from sekisho.audit.log import AuditUnavailable
from sekisho.identity.passwords import PasswordHasher
from sekisho.storage import factors, oidc, users
from sekisho.storage.models import User

from .people_kit import AUDITOR, HELPDESK, SUPER, TOKEN, Admin, build


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    kit = build(f"sqlite:///{tmp_path}/sekisho.db")
    yield kit
    kit.engine.dispose()


@pytest.fixture
def both(database_url: str) -> Iterator[Admin]:
    """The same on SQLite and on PostgreSQL (the storage queries added for the console)."""
    kit = build(database_url)
    yield kit
    kit.engine.dispose()


def test_a_generated_password_is_returned_once_and_stored_hashed(admin: Admin) -> None:
    made = admin.run(SUPER, "users.create", body={
        "username": "Ｉｔｏ", "display_name": "伊藤 花子", "email": "ito@city.example.jp",
        "groups": ["staff"]})
    password = made["password"]
    assert made["user"]["username"] == "ito" and made["user"]["groups"] == ["staff"]
    stored = users.require_user(admin.engine, "ito")
    assert stored.password_hash and password not in stored.password_hash
    assert PasswordHasher().verify(stored.password_hash, password)
    shown = admin.run(SUPER, "users.get", path={"username": "ito"})
    assert "password" not in shown and password not in json.dumps(shown)
    assert "password_hash" not in json.dumps(shown)
    assert password not in json.dumps(admin.events())  # the audit log never holds it
    created = admin.events("user.changed")[-1]
    assert (created["admin"], created["user"], created["action"]) == ("sato", "ito", "create")
    given = admin.run(SUPER, "users.create", body={"username": "ono",
                                                   "password": "a-good-long-passphrase"})
    assert "password" not in given


def test_the_password_policy_answers_with_its_messages(admin: Admin) -> None:
    refused = admin.refused(SUPER, "users.create",
                            body={"username": "sato2", "password": "password"})
    assert (refused.code, refused.status) == ("password-policy", 422)
    codes = [problem["code"] for problem in refused.details]
    assert codes == ["too-short", "too-common"]
    assert "12 文字以上" in refused.ja and "at least 12 characters" in refused.en
    assert users.get_user_by_name(admin.engine, "sato2") is None
    own = admin.refused(SUPER, "users.reset_password", path={"username": "tanaka"},
                        body={"password": "tanaka-tanaka-tanaka"})
    assert "contains-username" in [p["code"] for p in own.details]


def test_invalid_input_is_a_4xx_with_a_code(admin: Admin) -> None:
    assert admin.refused(SUPER, "users.create", body={"username": "a b"}).status == 400
    assert admin.refused(SUPER, "users.create", body={"username": "x", "extra": 1}).code \
        == "invalid-input"
    assert admin.refused(SUPER, "users.update", path={"username": "tanaka"},
                         body={"email": "not-an-address"}).status == 422
    assert admin.refused(SUPER, "users.update", path={"username": "tanaka"},
                         body={}).status == 422
    # Control characters would forge lines in logs and CLI tables.
    assert admin.refused(SUPER, "users.update", path={"username": "tanaka"},
                         body={"display_name": "田中\n[admin] ok"}).status == 422
    exists = admin.refused(SUPER, "users.create", body={"username": "TANAKA"})
    assert (exists.code, exists.status) == ("already-exists", 409)
    missing = admin.refused(SUPER, "users.get", path={"username": "nobody"})
    assert (missing.code, missing.status) == ("not-found", 404)
    assert admin.refused(AUDITOR, "users.list").code == "role-forbidden"


@pytest.mark.parametrize(("op_id", "extra"), [
    ("users.update", {"body": {"display_name": "x"}}),
    ("users.update", {"body": {"disabled": True}}),
    ("users.reset_password", {"body": {}}),
    ("users.reset_factors", {"body": None}),
    ("users.set_groups", {"body": {"groups": ["admins", "staff"]}}),
    ("users.unlink_idp", {"path": {"idp": "entra"}}),
    ("sessions.revoke_user", {}),
])
def test_helpdesk_cannot_act_on_an_administrator(admin: Admin, op_id: str,
                                                 extra: dict[str, Any]) -> None:
    admin.sign_in("sato")
    before = len(admin.events())
    for target in ("sato", "kato"):  # a superadmin, and helpdesk itself (also an admin role)
        path = {"username": target, **extra.get("path", {})}
        refused = admin.refused(HELPDESK, op_id, path=path, body=extra.get("body"))
        expected = {("target-is-admin", 403)}
        if target == "kato" and extra.get("body") == {"disabled": True}:
            expected.add(("self-lockout", 409))  # the lock-out rule answers first
        assert (refused.code, refused.status) in expected
    assert len(admin.events()) == before  # nothing changed, nothing audited
    assert admin.sessions.lookup_sync(admin.tokens["sato"][0]) is not None


def test_helpdesk_manages_staff_but_not_admin_groups(admin: Admin) -> None:
    token = admin.sign_in("tanaka")
    assert admin.run(HELPDESK, "users.update", path={"username": "tanaka"},
                     body={"display_name": "田中 一郎"})["user"]["display_name"] == "田中 一郎"
    for op_id, kwargs in (
            ("groups.add_member", {"path": {"name": "admins", "username": "tanaka"}}),
            ("groups.remove_member", {"path": {"name": "admins", "username": "sato"}}),
            ("users.set_groups", {"path": {"username": "tanaka"},
                                  "body": {"groups": ["staff", "helpdesk"]}}),
            ("users.create", {"body": {"username": "mori", "groups": ["auditors"]}})):
        refused = admin.refused(HELPDESK, op_id, **kwargs)
        assert (refused.code, refused.status) == ("admin-group-forbidden", 403), op_id
    assert users.groups_of_user(admin.engine, users.require_user(admin.engine, "tanaka").id) \
        == ["staff"]
    assert admin.sessions.lookup_sync(token) is not None
    # A superadmin may: tanaka becomes an auditor.
    assert admin.run(SUPER, "groups.add_member",
                     path={"name": "auditors", "username": "tanaka"}) == {"added": True}
    assert admin.run(SUPER, "users.get", path={"username": "tanaka"})["user"]["admin_role"] \
        == "auditor"
    # ...and from then on helpdesk may not touch tanaka.
    assert admin.refused(HELPDESK, "users.reset_password", path={"username": "tanaka"},
                         body={}).code == "target-is-admin"


def test_nobody_locks_themself_out(admin: Admin) -> None:
    disabled = admin.refused(SUPER, "users.update", path={"username": "sato"},
                             body={"disabled": True})
    assert (disabled.code, disabled.status) == ("self-lockout", 409)
    assert admin.refused(SUPER, "users.set_groups", path={"username": "SATO"},
                         body={"groups": ["staff"]}).code == "self-lockout"
    assert admin.refused(SUPER, "groups.remove_member",
                         path={"name": "admins", "username": "sato"}).code == "self-lockout"
    assert not users.require_user(admin.engine, "sato").disabled
    # Keeping another admin group is no lock-out (sato steps down to helpdesk).
    assert admin.run(SUPER, "users.set_groups", path={"username": "sato"},
                     body={"groups": ["admins", "helpdesk"]})["added"] == ["helpdesk"]
    assert admin.run(SUPER, "groups.remove_member",
                     path={"name": "admins", "username": "sato"}) == {"removed": True}
    # An API token is nobody's account: it may disable an administrator.
    admin.run(SUPER, "groups.add_member", path={"name": "admins", "username": "kato"})
    assert admin.run(TOKEN, "users.update", path={"username": "sato"},
                     body={"disabled": True})["user"]["disabled"] is True


def test_disabling_ends_every_session_at_once(admin: Admin) -> None:
    token = admin.sign_in("tanaka")
    assert admin.sessions.lookup_sync(token) is not None
    assert admin.sessions.lookup_sync(token) is not None  # cached now
    answer = admin.run(HELPDESK, "users.update", path={"username": "tanaka"},
                       body={"disabled": True})
    assert answer["user"]["disabled"] is True
    import asyncio

    assert asyncio.run(admin.sessions.lookup(token)) is None
    assert [e["event_type"] for e in admin.events()][-2:] == ["user.changed",
                                                              "session.revoked"]
    revoked = admin.events("session.revoked")[-1]
    assert (revoked["admin"], revoked["user"], revoked["reason"]) == ("kato", "tanaka",
                                                                      "disabled")
    admin.run(HELPDESK, "users.update", path={"username": "tanaka"}, body={"disabled": False})
    assert admin.events("user.changed")[-1]["action"] == "enable"


def test_a_password_reset_ends_the_sessions(admin: Admin) -> None:
    token = admin.sign_in("tanaka")
    answer = admin.run(HELPDESK, "users.reset_password", path={"username": "tanaka"},
                       body={})
    assert answer["sessions_revoked"] == 1 and len(answer["password"]) == 23
    assert admin.sessions.lookup_sync(token) is None
    stored = users.require_user(admin.engine, "tanaka").password_hash
    assert PasswordHasher().verify(stored, answer["password"])
    chosen = admin.run(HELPDESK, "users.reset_password", path={"username": "tanaka"},
                       body={"password": "another-good-passphrase"})
    assert "password" not in chosen


def test_reset_factors_removes_totp_passkeys_and_codes(admin: Admin) -> None:
    user = users.require_user(admin.engine, "tanaka")
    now = datetime.now(UTC)
    factor = factors.add_factor(admin.engine, user_id=user.id, kind="totp", name="phone",
                                secret="s", data={}, now=now)
    assert factors.accept_step(admin.engine, factor, 1, now, confirm=True)
    factors.replace_recovery_codes(admin.engine, user.id, ["a" * 64, "b" * 64], now)
    from sekisho.storage import webauthn

    webauthn.add_credential(admin.engine, user_id=user.id, credential_id="cred-1",
                            public_key="pk", sign_count=0, name="YubiKey", transports=(),
                            aaguid="", user_verified=True, backed_up=False, now=now)
    token = admin.sign_in("tanaka")
    detail = admin.run(HELPDESK, "users.get", path={"username": "tanaka"})["factors"]
    assert [f["name"] for f in detail["totp"]] == ["phone"]
    assert [p["name"] for p in detail["passkeys"]] == ["YubiKey"]
    assert detail["recovery_codes_unused"] == 2
    answer = admin.run(HELPDESK, "users.reset_factors", path={"username": "tanaka"})
    assert answer == {"factors_removed": 2, "recovery_codes_removed": 2,
                      "sessions_revoked": 1}
    assert admin.sessions.lookup_sync(token) is None
    assert not factors.has_factor(admin.engine, user.id, "totp")
    assert not webauthn.has_credentials(admin.engine, user.id)
    reset = admin.events("mfa.factors.reset")[-1]
    assert (reset["admin"], reset["user"], reset["factors"]) == ("kato", "tanaka", 2)


def test_unlinking_an_idp_ends_only_its_sessions(both: Admin) -> None:
    admin = both
    user = users.require_user(admin.engine, "tanaka")
    oidc.record_identity(admin.engine, idp="entra", sub="sub-1", user_id=user.id,
                         email="tanaka@city.example.jp", now=datetime.now(UTC))
    federated, local = admin.sign_in("tanaka", idp="entra"), admin.sign_in("tanaka")
    links = admin.run(SUPER, "users.get", path={"username": "tanaka"})["idp_links"]
    assert [(link["idp"], link["sub"]) for link in links] == [("entra", "sub-1")]
    answer = admin.run(HELPDESK, "users.unlink_idp",
                       path={"username": "tanaka", "idp": "entra"})
    assert answer == {"links_removed": 1, "sessions_revoked": 1}
    assert admin.sessions.lookup_sync(federated) is None
    assert admin.sessions.lookup_sync(local) is not None
    assert oidc.find_identity(admin.engine, "entra", "sub-1") is None
    assert admin.events("user.changed")[-1]["action"] == "idp-unlink"
    again = admin.refused(HELPDESK, "users.unlink_idp",
                          path={"username": "tanaka", "idp": "entra"})
    assert (again.code, again.status) == ("not-found", 404)


def test_set_groups_is_the_whole_list_in_one_step(both: Admin) -> None:
    admin = both
    admin.run(SUPER, "groups.create", body={"name": "Kokuho", "description": "国保"})
    answer = admin.run(HELPDESK, "users.set_groups", path={"username": "tanaka"},
                       body={"groups": ["kokuho"]})
    assert answer == {"groups": ["kokuho"], "added": ["kokuho"], "removed": ["staff"]}
    missing = admin.refused(HELPDESK, "users.set_groups", path={"username": "tanaka"},
                            body={"groups": ["kokuho", "nothere"]})
    assert (missing.code, missing.status) == ("not-found", 404) and "nothere" in missing.en
    assert users.groups_of_user(admin.engine, users.require_user(admin.engine, "tanaka").id) \
        == ["kokuho"]
    changed = [(e["group"], e["action"]) for e in admin.events("group.changed")[-2:]]
    assert changed == [("kokuho", "add-member"), ("staff", "remove-member")]


def test_groups_listing_detail_and_members(both: Admin) -> None:
    admin = both
    listed = {g["name"]: g for g in admin.run(HELPDESK, "groups.list")["groups"]}
    assert listed["staff"]["members"] == 2 and listed["admins"]["admin_role"] == "superadmin"
    assert listed["staff"]["admin_role"] is None
    created = admin.run(HELPDESK, "groups.create", body={"name": "Kokuho"})
    assert created["group"]["name"] == "kokuho"
    assert admin.refused(HELPDESK, "groups.create", body={"name": "KOKUHO"}).status == 409
    first = admin.run(HELPDESK, "groups.get", path={"name": "staff"}, query={"limit": 1})
    assert [m["username"] for m in first["members"]] == ["tanaka"]
    rest = admin.run(HELPDESK, "groups.get", path={"name": "staff"},
                     query={"limit": 1, "cursor": first["next_cursor"]})
    assert [m["username"] for m in rest["members"]] == ["yamada"]
    assert rest["next_cursor"] is None
    assert admin.run(HELPDESK, "groups.add_member",
                     path={"name": "kokuho", "username": "tanaka"}) == {"added": True}
    assert admin.run(HELPDESK, "groups.add_member",
                     path={"name": "kokuho", "username": "tanaka"}) == {"added": False}
    assert admin.run(HELPDESK, "groups.remove_member",
                     path={"name": "kokuho", "username": "tanaka"}) == {"removed": True}
    actions = [e["action"] for e in admin.events("group.changed")]
    assert actions[-3:] == ["create", "add-member", "remove-member"]


def test_search_users_prefix_filters_and_cursor(both: Admin) -> None:
    admin = both
    admin.run(SUPER, "users.create", body={"username": "ta_ro",
                                           "display_name": "Hanako Tanabe 100%"})
    admin.run(SUPER, "users.update", path={"username": "yamada"}, body={"disabled": True})

    def names(**query: Any) -> list[str]:
        return [u["username"] for u in admin.run(HELPDESK, "users.list", query=query)["users"]]

    assert names(q="TAN") == ["ta_ro", "tanaka"]  # a word of the display name, a username
    assert names(q="hanako") == ["ta_ro"]
    assert names(q="ta_") == ["ta_ro"]  # _ is literal, not "any character" (tanaka)
    assert names(q="100%") == ["ta_ro"] and names(q="%") == []  # so is %
    assert names(q="sato@city") == ["sato"]  # e-mail prefix
    assert names(disabled=True) == ["yamada"]
    assert "yamada" not in names(disabled=False)
    page = admin.run(HELPDESK, "users.list", query={"limit": 2})
    assert [u["username"] for u in page["users"]] == ["kato", "sato"]
    after = admin.run(HELPDESK, "users.list", query={"limit": 10,
                                                     "cursor": page["next_cursor"]})
    assert [u["username"] for u in after["users"]] == ["suzuki", "ta_ro", "tanaka", "yamada"]
    assert after["next_cursor"] is None
    assert page["users"][1]["groups"] == ["admins"]


def test_a_page_of_ten_thousand_users_costs_a_fixed_number_of_queries(admin: Admin) -> None:
    now = datetime.now(UTC) - timedelta(days=1)
    with admin.engine.begin() as conn:
        conn.execute(insert(User), [
            {"username": f"user{i:05d}", "display_name": f"職員 {i}", "email": "",
             "password_hash": None, "disabled": i % 10 == 0, "created_at": now,
             "updated_at": now} for i in range(10_000)])
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(admin.engine, "before_cursor_execute", count)
    try:
        first = admin.run(HELPDESK, "users.list", query={"limit": 200})
        deep = admin.run(HELPDESK, "users.list", query={"limit": 200, "cursor": "user09000"})
        found = admin.run(HELPDESK, "users.list", query={"q": "user0999", "limit": 200})
    finally:
        event.remove(admin.engine, "before_cursor_execute", count)
    # kato, sato, suzuki and tanaka come first: the page ends at user00195.
    assert len(first["users"]) == 200 and first["next_cursor"] == "user00195"
    assert deep["users"][0]["username"] == "user09001"
    assert len(found["users"]) == 10
    assert len(statements) == 6  # per page: one read of the page, one of its groups
    # The page walks the unique username index and stops at the limit: no full sort.
    with admin.engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.execute(text(
            "EXPLAIN QUERY PLAN SELECT id FROM users WHERE username > 'user05000' "
            "ORDER BY username LIMIT 201")))
    assert "INDEX" in plan and "TEMP B-TREE" not in plan, plan


def test_a_change_whose_audit_record_fails_is_reported_as_failed(admin: Admin) -> None:
    admin.audit.close()
    with pytest.raises(AuditUnavailable):
        admin.run(SUPER, "groups.create", body={"name": "kokuho"})
