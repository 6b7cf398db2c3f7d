"""The connector registry rows on SQLite and PostgreSQL: tokens hashed, single use even
under a race, bound to their site; revocation, the broker's sweep query, last_seen; the
migration goes down and up again."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from sekisho.storage import connectors
from sekisho.storage.database import _alembic_config, head_revision

NOW = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


def _token(engine: Engine, digest: str = "a" * 64, ttl: float = 3600,
           site: str = "lgwan-dc") -> None:
    connectors.insert_token(engine, token_hash=digest, site=site, created_by="admin", now=NOW,
                            expires_at=NOW + timedelta(seconds=ttl))


def _spend(engine: Engine, connector_id: str, digest: str = "a" * 64,
           now: datetime = NOW, site: str = "lgwan-dc") -> bool:
    return connectors.consume_token_and_add_connector(
        engine, token_hash=digest, now=now, connector_id=connector_id, site=site,
        name="データセンター", cert_serial=f"{abs(hash(connector_id)):x}",
        cert_not_after=NOW + timedelta(days=365))


def test_a_token_is_spent_once_and_records_the_connector(engine: Engine) -> None:
    _token(engine)
    assert _spend(engine, "con-1")
    assert not _spend(engine, "con-2")  # replay
    token = connectors.load_token(engine, "a" * 64)
    assert token is not None and token.used_at == NOW and token.connector_id == "con-1"
    record = connectors.require_connector(engine, "con-1")
    assert (record.site, record.status, record.name) == ("lgwan-dc", "active", "データセンター")
    assert connectors.by_serial(engine, record.cert_serial) == record
    assert connectors.by_serial(engine, "ffff") is None


def test_expired_and_other_site_tokens_enrol_nothing(engine: Engine) -> None:
    _token(engine, ttl=60)
    assert not _spend(engine, "con-x", site="other-site")  # bound to its site
    assert not _spend(engine, "con-y", now=NOW + timedelta(seconds=60))
    assert connectors.list_connectors(engine) == []


def test_two_concurrent_spends_exactly_one_wins(engine: Engine) -> None:
    for round_ in range(4):
        digest = f"{round_:064x}"
        _token(engine, digest)
        barrier = threading.Barrier(2)
        results: list[bool] = []

        def race(name: str, digest: str = digest) -> None:
            barrier.wait()
            results.append(_spend(engine, name, digest))

        threads = [threading.Thread(target=race, args=(f"con-{round_}-{n}",)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(results) == [False, True]
    assert len(connectors.list_connectors(engine)) == 4


def test_revoke_sweep_and_last_seen(engine: Engine) -> None:
    for n in (1, 2):
        _token(engine, f"{n:064x}")
        assert _spend(engine, f"con-{n}", f"{n:064x}")
    assert connectors.active_among(engine, ["con-1", "con-2", "con-9"]) == {"con-1", "con-2"}
    assert connectors.revoke(engine, "con-1", now=NOW)
    assert not connectors.revoke(engine, "con-1", now=NOW)  # already
    with pytest.raises(connectors.ConnectorNotFound):
        connectors.revoke(engine, "con-9", now=NOW)
    assert connectors.active_among(engine, ["con-1", "con-2"]) == {"con-2"}
    assert connectors.active_among(engine, []) == set()
    connectors.touch(engine, ["con-2"], now=NOW + timedelta(minutes=5))
    assert connectors.require_connector(engine, "con-2").last_seen == NOW + timedelta(minutes=5)
    assert [c.connector_id for c in connectors.list_connectors(engine, "lgwan-dc")] == [
        "con-1", "con-2"]


def test_the_migration_goes_down_and_up(engine: Engine) -> None:
    config = _alembic_config(engine)
    before = ScriptDirectory.from_config(config).get_revision("0012").down_revision
    command.downgrade(config, str(before))
    assert "connectors" not in inspect(engine).get_table_names()
    command.upgrade(config, head_revision())
    assert {"connectors", "connector_tokens"} <= set(inspect(engine).get_table_names())
