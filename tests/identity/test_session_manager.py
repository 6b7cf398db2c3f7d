"""SessionManager on SQLite and PostgreSQL: issue, look up, expire, revoke, cache, touch."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from sqlalchemy import text

from sekisho.config.model import SessionSettings
from sekisho.errors import StorageError
from sekisho.identity.sessions import SessionManager, SessionNotFound
from sekisho.storage import sessions as store
from sekisho.storage import users
from sekisho.storage.database import create_database_engine

SETTINGS = SessionSettings(idle_timeout=1800, absolute_lifetime=8 * 3600, cache_ttl=1.0)


@pytest.fixture
def manager(engine, clock):
    return SessionManager(engine, SETTINGS, clock=clock)


@pytest.fixture
def user(engine):
    created = users.create_user(engine, "kato", display_name="加藤", email="kato@city.jp")
    users.create_group(engine, "staff")
    users.add_member(engine, "staff", "kato")
    return created


def lookup(manager, token):
    return asyncio.run(manager.lookup(token))


def test_create_and_lookup(manager, user, engine):
    token, info = manager.create(user, ["pwd"], "192.0.2.1", "Firefox")
    assert len(token) == 43
    assert info.session_id == hashlib.sha256(token.encode()).hexdigest()
    assert info.groups == frozenset({"staff"}) and info.auth_methods == frozenset({"pwd"})
    found = lookup(manager, token)
    assert found is not None and found.username == "kato" and found.email == "kato@city.jp"
    # Only the digest is stored: the token itself appears nowhere in the table.
    with engine.connect() as conn:
        ids = [row[0] for row in conn.execute(text("select id from sessions"))]
    assert ids == [info.session_id] and token not in ids


@pytest.mark.parametrize("token", ["", "short", "x" * 44, "a" * 42 + "!", "../" * 15])
def test_malformed_token_never_touches_storage(clock, token, tmp_path):
    # A manager over an unusable database still answers None for malformed tokens.
    broken = SessionManager(create_database_engine(f"sqlite:///{tmp_path}"), SETTINGS,
                            clock=clock)
    assert lookup(broken, token) is None


def test_unknown_token(manager, user):
    assert lookup(manager, "A" * 43) is None


def test_idle_timeout(manager, user, clock):
    token, _ = manager.create(user, ["pwd"], "", "")
    clock.advance(1799)
    assert lookup(manager, token) is not None  # also touches last_seen
    clock.advance(1799)
    assert lookup(manager, token) is not None
    clock.advance(1800)
    assert lookup(manager, token) is None


def test_absolute_lifetime(manager, user, clock):
    token, _ = manager.create(user, ["pwd"], "", "")
    for _ in range(16):  # active every 30 minutes, never idle …
        clock.advance(1790)
        assert lookup(manager, token) is not None
    clock.advance(8 * 3600 - 16 * 1790)
    assert lookup(manager, token) is None  # … but the absolute lifetime ends it


def test_last_seen_written_at_most_once_a_minute(manager, user, clock, engine):
    token, info = manager.create(user, ["pwd"], "", "")
    created = store.load_session(engine, info.session_id).last_seen_at
    for _ in range(10):
        clock.advance(5)
        assert lookup(manager, token) is not None
    assert store.load_session(engine, info.session_id).last_seen_at == created
    clock.advance(15)  # 65 s after creation
    lookup(manager, token)
    assert store.load_session(engine, info.session_id).last_seen_at == clock.now


def test_revocation_same_manager_is_immediate(manager, user):
    token, info = manager.create(user, ["pwd"], "", "")
    assert lookup(manager, token) is not None  # now cached
    manager.revoke_id(info.session_id, "signout")
    assert lookup(manager, token) is None


def test_revocation_elsewhere_is_seen_after_cache_ttl(manager, user, engine, clock):
    token, info = manager.create(user, ["pwd"], "", "")
    assert lookup(manager, token) is not None
    other = SessionManager(engine, SETTINGS, clock=clock)  # e.g. the CLI
    events = other.revoke(info.session_id[:10], admin="ops", reason="lost laptop")
    assert [(e.user, e.session, e.admin) for e in events] == [("kato", info.short_id, "ops")]
    clock.advance(0.5)
    assert lookup(manager, token) is not None  # within the documented cache window
    clock.advance(0.5)
    assert lookup(manager, token) is None


def test_disabled_user_loses_sessions(manager, user, engine, clock):
    token, _ = manager.create(user, ["pwd"], "", "")
    users.set_disabled(engine, "kato", True)
    assert lookup(manager, token) is None


def test_revoke_user_and_list_active(manager, user, clock):
    t1, _ = manager.create(user, ["pwd"], "192.0.2.1", "")
    t2, _ = manager.create(user, ["pwd"], "192.0.2.2", "")
    assert len(manager.list_active("kato")) == 2
    events = manager.revoke_user("kato", admin="ops", reason="offboarding")
    assert len(events) == 2
    assert lookup(manager, t1) is None and lookup(manager, t2) is None
    assert manager.list_active() == []


def test_revoke_refuses_short_or_unknown_prefix(manager, user):
    manager.create(user, ["pwd"], "", "")
    with pytest.raises(SessionNotFound):
        manager.revoke("abc", "ops", "")
    with pytest.raises(SessionNotFound):
        manager.revoke("0" * 64, "ops", "")


@pytest.mark.parametrize("url", ["sqlite:///{tmp}", "postgresql://postgres@127.0.0.1:9/none"])
def test_storage_failure_raises_not_none(clock, tmp_path, url):
    """Fail closed: the gateway must see an error (deny), not 'no session' nor a session."""
    engine = create_database_engine(url.format(tmp=tmp_path))  # a directory / a closed port
    broken = SessionManager(engine, SETTINGS, clock=clock)
    with pytest.raises(StorageError):
        lookup(broken, "A" * 43)
    engine.dispose()
