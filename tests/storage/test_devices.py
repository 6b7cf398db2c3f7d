"""The device registry rows on SQLite and PostgreSQL: codes hashed, single use, atomic."""

from __future__ import annotations

import importlib.util
import threading
from datetime import UTC, datetime, timedelta
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, Table, inspect, select

from sekisho.storage import devices, users
from sekisho.storage.models import Device, EnrolmentCode

NOW = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


def _code(engine: Engine, digest: str = "a" * 64, ttl: float = 3600) -> int:
    user = users.create_user(engine, "tanaka") if users.get_user_by_name(
        engine, "tanaka") is None else users.require_user(engine, "tanaka")
    devices.insert_code(engine, code_hash=digest, user_id=user.id, created_by="admin",
                        now=NOW, expires_at=NOW + timedelta(seconds=ttl))
    return int(user.id)


def _spend(engine: Engine, user_id: int, device_id: str, digest: str = "a" * 64,
           now: datetime = NOW) -> bool:
    return devices.consume_code_and_add_device(
        engine, code_hash=digest, now=now, device_id=device_id, inventory_id="PC-1",
        user_id=user_id, name="窓口PC", cert_serial="abc123",
        cert_not_after=NOW + timedelta(days=365))


def test_code_is_spent_once_and_records_the_device(engine: Engine) -> None:
    user_id = _code(engine)
    assert _spend(engine, user_id, "dev-1")
    assert not _spend(engine, user_id, "dev-2")  # replay of a spent code
    assert devices.get_device(engine, "dev-2") is None
    device = devices.require_device(engine, "dev-1")
    assert (device.username, device.status, device.name) == ("tanaka", "active", "窓口PC")
    code = devices.load_code(engine, "a" * 64)
    assert code is not None and code.used_at == NOW and code.device_id == "dev-1"


def test_expired_code_and_foreign_user_are_refused(engine: Engine) -> None:
    user_id = _code(engine, ttl=60)
    assert not _spend(engine, user_id + 1000, "dev-x")  # bound to its user
    assert not _spend(engine, user_id, "dev-1", now=NOW + timedelta(seconds=60))
    assert devices.list_devices(engine) == []


def test_two_concurrent_spends_exactly_one_wins(engine: Engine) -> None:
    for round_ in range(5):
        digest = f"{round_:064x}"
        user_id = _code(engine, digest)
        barrier = threading.Barrier(2)
        results: list[bool] = []

        def race(name: str, digest: str = digest, user_id: int = user_id) -> None:
            barrier.wait()
            results.append(_spend(engine, user_id, name, digest))

        threads = [threading.Thread(target=race, args=(f"dev-{round_}-{n}",)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(results) == [False, True]
    assert len(devices.list_devices(engine)) == 5


def test_suspend_then_revoke_and_crl_listing(engine: Engine) -> None:
    user_id = _code(engine)
    assert _spend(engine, user_id, "dev-1")
    assert devices.listed_in_crl(engine, NOW) == []
    assert devices.set_status(engine, "dev-1", "suspended", now=NOW, reason="lost")
    assert not devices.set_status(engine, "dev-1", "suspended", now=NOW)  # no change
    assert [d.device_id for d in devices.listed_in_crl(engine, NOW)] == ["dev-1"]
    assert devices.set_status(engine, "dev-1", "revoked", now=NOW, reason="key_compromise")
    assert not devices.set_status(engine, "dev-1", "suspended", now=NOW)  # revoked is final
    device = devices.require_device(engine, "dev-1")
    assert (device.status, device.revoked_reason, device.revoked_at) == (
        "revoked", "key_compromise", NOW)
    # An expired certificate needs no CRL entry.
    assert devices.listed_in_crl(engine, NOW + timedelta(days=366)) == []
    with pytest.raises(devices.DeviceNotFound):
        devices.set_status(engine, "nope", "revoked", now=NOW)


def test_rename_and_list_by_user(engine: Engine) -> None:
    user_id = _code(engine)
    _spend(engine, user_id, "dev-1")
    assert devices.rename_device(engine, "dev-1", "新しい名前").name == "新しい名前"
    other = users.create_user(engine, "sato")
    assert devices.list_devices(engine, other.id) == []
    assert [d.device_id for d in devices.list_devices(engine, user_id)] == ["dev-1"]


def test_only_the_hash_is_stored(engine: Engine) -> None:
    _code(engine, "b" * 64)
    with engine.connect() as conn:
        assert conn.execute(select(EnrolmentCode.code_hash)).scalars().all() == ["b" * 64]


def _run_migration(engine: Engine, step: str) -> None:
    import sekisho.storage

    path = Path(sekisho.storage.__file__).parent / "migrations" / "versions" / "0006_devices.py"
    loader = SourceFileLoader("sekisho_migration_0006", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    assert (module.revision, module.down_revision) == ("0006", "0005")
    with engine.begin() as connection:
        context = MigrationContext.configure(connection)
        with Operations.context(context):
            getattr(module, step)()


def test_migration_0006_matches_the_models(engine: Engine) -> None:
    _run_migration(engine, "downgrade")
    assert not {"devices", "enrolment_codes"} & set(inspect(engine).get_table_names())
    _run_migration(engine, "upgrade")
    inspector = inspect(engine)
    for table in (Device.__table__, EnrolmentCode.__table__):
        assert isinstance(table, Table)
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert {n: c["nullable"] for n, c in columns.items()} == \
            {c.name: c.nullable for c in table.columns}, table.name
        key = inspector.get_pk_constraint(table.name)["constrained_columns"]
        assert set(key) == {c.name for c in table.primary_key.columns}
    uniques = inspector.get_unique_constraints("devices")
    assert [u["column_names"] for u in uniques] == [["device_id"]]
