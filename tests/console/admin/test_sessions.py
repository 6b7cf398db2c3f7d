"""Sessions through `ops.run`: list, end one by its short id, end all of a user.

A revoked session is refused by the SessionManager at once, even when it was cached, and the
revocation is on the change feed for every other process; an ambiguous short id is refused
(409) rather than ending "the first" match.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sekisho.storage import changes, users
from sekisho.storage import sessions as store

from .people_kit import AUDITOR, HELPDESK, SUPER, Admin, build


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    kit = build(f"sqlite:///{tmp_path}/sekisho.db")
    yield kit
    kit.engine.dispose()


@pytest.fixture
def both(database_url: str) -> Iterator[Admin]:
    kit = build(database_url)
    yield kit
    kit.engine.dispose()


def _short(token: str, admin: Admin) -> str:
    info = admin.sessions.lookup_sync(token)
    assert info is not None
    return info.session_id[:12]


def test_list_filter_and_limit(both: Admin) -> None:
    admin = both
    for _ in range(3):
        admin.sign_in("tanaka")
    admin.sign_in("yamada")
    listed = admin.run(HELPDESK, "sessions.list")["sessions"]
    assert sorted(s["user"] for s in listed) == ["tanaka", "tanaka", "tanaka", "yamada"]
    assert all(len(s["id"]) == 12 and s["methods"] == ["password", "totp"] for s in listed)
    mine = admin.run(HELPDESK, "sessions.list", query={"user": "Yamada"})["sessions"]
    assert [s["user"] for s in mine] == ["yamada"]
    limited = admin.run(HELPDESK, "sessions.list", query={"limit": 2})
    assert len(limited["sessions"]) == 2 and limited["truncated"] is True
    assert admin.refused(AUDITOR, "sessions.list").code == "role-forbidden"
    assert admin.refused(HELPDESK, "sessions.list", query={"user": "nobody"}).status == 404


def test_a_revoked_session_is_refused_at_once_even_if_cached(admin: Admin) -> None:
    token = admin.sign_in("tanaka")
    other = admin.sign_in("tanaka")
    assert asyncio.run(admin.sessions.lookup(token)) is not None  # now in the cache
    short = _short(token, admin)
    last = changes.latest_id(admin.engine)
    answer = admin.run(HELPDESK, "sessions.revoke", path={"id": short.upper()},
                       query={"reason": "lost laptop"})
    assert answer == {"revoked": short, "user": "tanaka"}
    assert asyncio.run(admin.sessions.lookup(token)) is None
    assert admin.sessions.lookup_sync(other) is not None
    # Every other gateway process learns it from the change feed (one row, this session).
    feed = changes.since(admin.engine, last)
    assert [(c.kind, c.subject[:12]) for c in feed] == [(changes.SESSION, short)]
    event = admin.events("session.revoked")[-1]
    assert (event["admin"], event["user"], event["session"], event["reason"]) == (
        "kato", "tanaka", short, "lost laptop")
    again = admin.refused(HELPDESK, "sessions.revoke", path={"id": short})
    assert (again.code, again.status) == ("not-found", 404)


def test_an_ambiguous_short_id_is_refused(admin: Admin) -> None:
    user = users.require_user(admin.engine, "tanaka")
    now = datetime.now(UTC)
    for suffix in ("1", "2"):
        store.create_session(admin.engine, session_id="abcdef12" + suffix * 56,
                             user_id=user.id, now=now, expires_at=now + timedelta(hours=1),
                             auth_time=now, methods=["password"])
    ambiguous = admin.refused(HELPDESK, "sessions.revoke", path={"id": "abcdef12"})
    assert (ambiguous.code, ambiguous.status) == ("session-ambiguous", 409)
    assert admin.run(HELPDESK, "sessions.revoke", path={"id": "abcdef121"})["user"] == "tanaka"
    assert admin.refused(HELPDESK, "sessions.revoke", path={"id": "0123456789ab"}).status \
        == 404
    short = admin.refused(HELPDESK, "sessions.revoke", path={"id": "abc"})
    assert (short.code, short.status) == ("invalid-input", 422)
    assert admin.refused(HELPDESK, "sessions.revoke", path={"id": "zzzzzzzzzzzz"}).status \
        == 422


def test_helpdesk_cannot_end_an_administrators_session(admin: Admin) -> None:
    token = admin.sign_in("sato")
    refused = admin.refused(HELPDESK, "sessions.revoke", path={"id": _short(token, admin)})
    assert (refused.code, refused.status) == ("target-is-admin", 403)
    assert admin.sessions.lookup_sync(token) is not None
    assert admin.run(SUPER, "sessions.revoke", path={"id": _short(token, admin)})["user"] \
        == "sato"


def test_end_every_session_of_a_user(admin: Admin) -> None:
    tokens = [admin.sign_in("tanaka") for _ in range(3)]
    kept = admin.sign_in("yamada")
    answer = admin.run(HELPDESK, "sessions.revoke_user", path={"username": "TANAKA"})
    assert answer["revoked"] == 3 and len(answer["sessions"]) == 3
    assert all(admin.sessions.lookup_sync(token) is None for token in tokens)
    assert admin.sessions.lookup_sync(kept) is not None
    assert [e["user"] for e in admin.events("session.revoked")] == ["tanaka"] * 3
    assert admin.run(HELPDESK, "sessions.revoke_user",
                     path={"username": "tanaka"}) == {"revoked": 0, "sessions": []}
