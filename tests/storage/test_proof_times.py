"""sessions.proofs (migration 0013): per-method proof times stored, read back, migrated from the
two old times on SQLite and PostgreSQL, and undone by the downgrade."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text

from sekisho.storage import sessions, users
from sekisho.storage.database import _alembic_config, create_database_engine, upgrade

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)  # the sign-in
T1 = T0 + timedelta(hours=2)  # the last second factor


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database at 0012: sessions with `auth_time` and `mfa_time` only."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/old.db"
    else:
        url = request.getfixturevalue("pg_schema_url")
    engine = create_database_engine(url)
    command.upgrade(_alembic_config(engine), "0012")
    yield engine
    engine.dispose()


# (session id suffix, methods column, mfa_time) → expected proofs
OLD_SESSIONS = [
    ("1", "pwd", None, {"pwd": T0}),
    ("2", "pwd,totp", T1, {"pwd": T0, "totp": T1}),
    ("3", "pwd,webauthn,webauthn_uv", T1, {"pwd": T0, "webauthn": T1, "webauthn_uv": T1}),
    # Two kinds of second factor: which one `mfa_time` belongs to is unknown, so both get the
    # older sign-in time (never a passkey that looks fresher than it was).
    ("4", "pwd,totp,webauthn", T1, {"pwd": T0, "totp": T0, "webauthn": T0}),
    ("5", "idp_mfa,oidc", T0, {"oidc": T0, "idp_mfa": T0}),
    ("6", "pwd,totp", None, {"pwd": T0, "totp": T0}),
]


def test_existing_sessions_migrate_with_their_known_times(old_database: Engine,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import import_module

    migration = import_module("sekisho.storage.migrations.versions.0013_proof_times")
    monkeypatch.setattr(migration, "BATCH", 4)  # more than one batch
    user = users.create_user(old_database, "tanaka")
    with old_database.begin() as connection:
        for suffix, methods, mfa_time, _ in OLD_SESSIONS:
            connection.execute(text(
                "INSERT INTO sessions (id, user_id, created_at, last_seen_at, expires_at, "
                "auth_time, auth_methods, source_ip, user_agent, revoked_at, revoked_reason, "
                "mfa_time, idp) VALUES (:id, :user, :t0, :t0, :end, :t0, :methods, '', '', NULL, "
                "'', :mfa, '')"),
                {"id": suffix * 64, "user": user.id, "t0": T0, "end": T0 + timedelta(hours=12),
                 "methods": methods, "mfa": mfa_time})
    upgrade(old_database)
    for suffix, _, _, expected in OLD_SESSIONS:
        record = sessions.load_session(old_database, suffix * 64)
        assert record is not None
        assert dict(record.proofs) == expected, suffix


def test_proofs_round_trip_and_are_read_only(engine: Engine) -> None:
    user = users.create_user(engine, "sato")
    proofs = {"pwd": T0, "webauthn_uv": T1, "totp": T1 + timedelta(minutes=3)}
    sessions.create_session(engine, session_id="a" * 64, user_id=user.id, now=T0,
                            expires_at=T0 + timedelta(hours=12), auth_time=T0,
                            methods=proofs, mfa_time=T1, proofs=proofs)
    record = sessions.load_session(engine, "a" * 64)
    assert record is not None and dict(record.proofs) == proofs
    with pytest.raises(TypeError):
        record.proofs["webauthn_uv"] = T1 + timedelta(hours=1)  # type: ignore[index]
    assert [r.proofs for r in sessions.list_active(engine, T0, 3600)] == [record.proofs]


@pytest.mark.parametrize("stored", [
    "not json", "[]", '{"webauthn": 5}', '{"webauthn": "yesterday"}', '{"": "2026-04-01"}',
    "{" + ",".join(f'"m{i}":"2026-04-01T00:00:00+00:00"' for i in range(17)) + "}",
])
def test_an_unreadable_row_carries_no_proof_times(stored: str) -> None:
    """Fail closed: a method without a readable time satisfies no timed policy."""
    assert dict(sessions.decode_proofs(stored)) == {}


def test_the_migration_matches_the_model_and_reverses(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from sekisho.storage.models import Base

    engine = create_database_engine(f"sqlite:///{tmp_path}/down.db")
    upgrade(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert [d for d in diff if "proofs" in repr(d)] == []
    command.downgrade(_alembic_config(engine), "0012")
    assert "proofs" not in {c["name"] for c in inspect(engine).get_columns("sessions")}
    upgrade(engine)
    assert "proofs" in {c["name"] for c in inspect(engine).get_columns("sessions")}
    engine.dispose()
