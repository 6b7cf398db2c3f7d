"""`sekisho user|group|session` through a real subprocess, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys

from sekisho.audit.events import UserChanged
from sekisho.config.model import SessionSettings
from sekisho.identity.sessions import SessionManager
from sekisho.storage import users
from sekisho.storage.audit_log import iter_records
from sekisho.storage.database import create_database_engine

GOOD = "a-good-long-passphrase"


def run(url, *args, stdin=""):
    return subprocess.run(
        [sys.executable, "-m", "sekisho", *args, "--database-url", url],
        input=stdin, capture_output=True, text=True, timeout=60, check=False)


def test_user_group_session_lifecycle(database_url):
    assert run(database_url, "group", "add", "staff", "--description", "職員").returncode == 0
    added = run(database_url, "user", "add", "Tanaka", "--display-name", "田中 太郎",
                "--email", "tanaka@city.example.jp", "--password-stdin", "--group", "staff",
                stdin=GOOD + "\n")
    assert added.returncode == 0, added.stderr
    assert "tanaka" in added.stdout

    weak = run(database_url, "user", "add", "sato", "--password-stdin", stdin="password\n")
    assert weak.returncode == 1
    assert "too-short" in weak.stderr and "too-common" in weak.stderr
    assert "12 文字以上" in weak.stderr and "at least 12 characters" in weak.stderr
    own = run(database_url, "user", "passwd", "tanaka", "--password-stdin",
              stdin="tanaka-tanaka-tanaka\n")
    assert own.returncode == 1 and "contains-username" in own.stderr
    assert run(database_url, "user", "add", "TANAKA", "--password-stdin",
               stdin=GOOD + "\n").returncode == 2  # exists (case-insensitive)
    no_tty = run(database_url, "user", "add", "ito")
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr

    listed = json.loads(run(database_url, "user", "list", "--json").stdout)
    assert [(u["username"], u["groups"], u["disabled"]) for u in listed] == [
        ("tanaka", ["staff"], False)]
    table = run(database_url, "user", "list").stdout
    assert "田中 太郎" in table and "active" in table

    assert run(database_url, "user", "passwd", "tanaka", "--password-stdin",
               stdin="another-good-passphrase\n").returncode == 0
    members = run(database_url, "group", "members", "staff", "--remove", "tanaka")
    assert members.returncode == 0 and members.stdout.strip() == ""
    assert run(database_url, "group", "members", "staff", "--add", "tanaka").stdout.strip() \
        == "tanaka"

    engine = create_database_engine(database_url)
    try:
        manager = SessionManager(engine, SessionSettings())
        user = users.get_user_by_name(engine, "tanaka")
        _, first = manager.create(user, ["pwd"], "192.0.2.1", "ua")
        _, second = manager.create(user, ["pwd"], "192.0.2.2", "ua")
        sessions = json.loads(run(database_url, "session", "list", "--json").stdout)
        assert {s["id"] for s in sessions} == {first.short_id, second.short_id}
        assert run(database_url, "session", "revoke", "abc").returncode == 2  # too short
        revoked = run(database_url, "session", "revoke", first.session_id[:10])
        assert revoked.returncode == 0 and first.short_id in revoked.stdout
        left = json.loads(run(database_url, "session", "list", "--user", "tanaka",
                              "--json").stdout)
        assert [s["id"] for s in left] == [second.short_id]

        disabled = run(database_url, "user", "disable", "tanaka")
        assert disabled.returncode == 0
        assert json.loads(run(database_url, "session", "list", "--json").stdout) == []
        assert json.loads(run(database_url, "user", "list", "--json").stdout)[0]["disabled"]
        assert run(database_url, "user", "enable", "tanaka").returncode == 0

        types = [json.loads(r.body)["action"] if r.event_type == UserChanged.event_type
                 else r.event_type for r in iter_records(engine)]
    finally:
        engine.dispose()
    assert types == [
        "group.changed", "create", "group.changed", "password", "group.changed",
        "group.changed", "session.revoked", "disable", "session.revoked", "enable"]


def test_revoke_all_of_a_user(database_url):
    run(database_url, "user", "add", "kimura", "--password-stdin", stdin=GOOD + "\n")
    engine = create_database_engine(database_url)
    try:
        manager = SessionManager(engine, SessionSettings())
        user = users.get_user_by_name(engine, "kimura")
        for _ in range(3):
            manager.create(user, ["pwd"], "", "")
    finally:
        engine.dispose()
    result = run(database_url, "session", "revoke", "--user", "kimura")
    assert result.returncode == 0 and result.stdout.count("kimura") == 3
    assert json.loads(run(database_url, "session", "list", "--json").stdout) == []
