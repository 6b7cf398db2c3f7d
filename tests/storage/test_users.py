"""Users and groups repository on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from sekisho.storage import users


def test_create_and_get_canonical_name(engine):
    created = users.create_user(engine, "  Tanaka ", display_name="田中 太郎", email="t@x.jp")
    assert created.username == "tanaka"
    # Full-width (IME) and upper case forms find the same account.
    for form in ("tanaka", "TANAKA", "ＴＡＮＡＫＡ", " Tanaka"):
        found = users.get_user_by_name(engine, form)
        assert found is not None and found.id == created.id
    assert found.display_name == "田中 太郎"
    assert found.created_at.tzinfo is not None
    assert not found.disabled and found.password_hash is None


def test_look_alike_twin_is_refused(engine):
    users.create_user(engine, "suzuki")
    with pytest.raises(users.AlreadyExists):
        users.create_user(engine, "ＳＵＺＵＫＩ")


@pytest.mark.parametrize("bad", ["", "a b", "tab\tname", "x" * 129, "semi;colon", "new\nline"])
def test_invalid_names_refused(engine, bad):
    with pytest.raises(users.InvalidName):
        users.create_user(engine, bad)


def test_canonical_name_is_nfkc_casefold():
    assert users.canonical_name("ＡＢＣ１２３") == "abc123"
    assert users.canonical_name("Straße") == "strasse"


def test_update_password_disable_enable_list(engine):
    users.create_user(engine, "b-user")
    users.create_user(engine, "a-user", password_hash="h1")
    assert [u.username for u in users.list_users(engine)] == ["a-user", "b-user"]
    changed = users.set_password_hash(engine, "B-USER", "h2")
    assert changed.password_hash == "h2" and changed.password_changed_at is not None
    assert users.set_disabled(engine, "b-user", True).disabled
    assert not users.set_disabled(engine, "b-user", False).disabled
    updated = users.update_user(engine, "b-user", display_name="B", email="b@x.jp")
    assert (updated.display_name, updated.email) == ("B", "b@x.jp")
    with pytest.raises(users.NotFound):
        users.set_disabled(engine, "nobody", True)


def test_groups_and_members(engine):
    alice = users.create_user(engine, "alice")
    users.create_user(engine, "bob")
    users.create_group(engine, "Staff", description="職員")
    users.create_group(engine, "admins")
    with pytest.raises(users.AlreadyExists):
        users.create_group(engine, "staff")
    assert [g.name for g in users.list_groups(engine)] == ["admins", "staff"]
    assert users.add_member(engine, "staff", "alice")
    assert not users.add_member(engine, "staff", "alice")  # already a member
    assert users.add_member(engine, "staff", "bob")
    assert users.add_member(engine, "admins", "alice")
    assert [u.username for u in users.group_members(engine, "staff")] == ["alice", "bob"]
    assert users.groups_of_user(engine, alice.id) == ["admins", "staff"]
    assert users.remove_member(engine, "staff", "bob")
    assert not users.remove_member(engine, "staff", "bob")
    assert [u.username for u in users.group_members(engine, "staff")] == ["alice"]
    with pytest.raises(users.NotFound):
        users.add_member(engine, "nogroup", "alice")
