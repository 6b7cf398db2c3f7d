"""Sessions repository on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sekisho.storage import sessions, users

T0 = datetime(2026, 4, 1, tzinfo=UTC)


def _make(engine, sid, user_id, now=T0, lifetime=3600):
    sessions.create_session(
        engine, session_id=sid, user_id=user_id, now=now,
        expires_at=now + timedelta(seconds=lifetime), auth_time=now, methods=["pwd"],
        source_ip="192.0.2.1", user_agent="ua")


def test_create_load_with_user_and_groups(engine):
    user = users.create_user(engine, "hanako", display_name="花子", email="h@city.jp")
    users.create_group(engine, "staff")
    users.add_member(engine, "staff", "hanako")
    _make(engine, "a" * 64, user.id)
    record = sessions.load_session(engine, "a" * 64)
    assert record is not None
    assert (record.username, record.display_name, record.email) == ("hanako", "花子", "h@city.jp")
    assert record.groups == frozenset({"staff"})
    assert record.auth_methods == frozenset({"pwd"})
    assert record.created_at == T0 and record.expires_at == T0 + timedelta(hours=1)
    assert record.revoked_at is None and not record.user_disabled
    assert sessions.load_session(engine, "b" * 64) is None


def test_touch_revoke_and_list_active(engine):
    one = users.create_user(engine, "one")
    two = users.create_user(engine, "two")
    _make(engine, "1" * 64, one.id)
    _make(engine, "2" * 64, one.id, now=T0 + timedelta(seconds=1))
    _make(engine, "3" * 64, two.id)
    _make(engine, "4" * 64, two.id, lifetime=10)  # absolute lifetime ends early
    now = T0 + timedelta(seconds=100)
    active = sessions.list_active(engine, now, idle_timeout=1800)
    assert [r.id[0] for r in active] == ["2", "1", "3"]
    # Idle: nothing seen for 2000 s except the touched one.
    sessions.touch(engine, "1" * 64, T0 + timedelta(seconds=1900))
    later = T0 + timedelta(seconds=2000)
    assert [r.id[0] for r in sessions.list_active(engine, later, idle_timeout=1800)] == ["1"]
    assert sessions.revoke(engine, "1" * 64, later, "admin")
    assert not sessions.revoke(engine, "1" * 64, later, "again")
    assert sessions.load_session(engine, "1" * 64).revoked_reason == "admin"
    assert sorted(sessions.revoke_user(engine, two.id, now, "bulk")) == ["3" * 64, "4" * 64]
    assert sessions.list_active(engine, now, 1800, user_id=two.id) == []
    assert [r.id[0] for r in sessions.list_active(engine, now, 1800, user_id=one.id)] == ["2"]


def test_find_by_prefix(engine):
    user = users.create_user(engine, "p")
    _make(engine, "abc" + "0" * 61, user.id)
    _make(engine, "abd" + "0" * 61, user.id)
    assert sessions.find_by_prefix(engine, "ab") == ["abc" + "0" * 61, "abd" + "0" * 61]
    assert sessions.find_by_prefix(engine, "ABC") == ["abc" + "0" * 61]
    assert sessions.find_by_prefix(engine, "a%") == []  # LIKE wildcards are not hex
    assert sessions.find_by_prefix(engine, "") == []
