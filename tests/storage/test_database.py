from __future__ import annotations

import pytest
from sqlalchemy import Engine, inspect

from sekisho.errors import StorageError
from sekisho.storage.database import (
    create_database_engine,
    current_revision,
    head_revision,
    redact_url,
    require_current_schema,
    upgrade,
)


def test_migrated_database_has_every_table(engine: Engine) -> None:
    names = set(inspect(engine).get_table_names())
    assert {"users", "groups", "group_members", "sessions", "audit_events", "audit_head",
            "signing_keys", "throttle_state"} <= names
    assert current_revision(engine) == head_revision()
    require_current_schema(engine)


def test_unmigrated_database_is_refused_with_the_command_to_run(tmp_path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path}/fresh.db")
    with pytest.raises(StorageError) as caught:
        require_current_schema(engine)
    assert "sekisho db upgrade" in caught.value.description
    assert caught.value.code == "storage-unmigrated"
    before, after = upgrade(engine)
    assert before is None and after == head_revision()
    require_current_schema(engine)


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path}/wal.db")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_redacted_url_hides_the_password() -> None:
    assert "hunter2" not in redact_url("postgresql://sekisho:hunter2@db.example/sekisho")


def test_unreachable_database_is_a_storage_error() -> None:
    engine = create_database_engine("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(StorageError):
        current_revision(engine)
