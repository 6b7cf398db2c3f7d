"""The OIDC tables on SQLite and on the real PostgreSQL: migration 0005 matches the models,
transactions are single-use, the replay ledger refuses a second use, IdP group grants are
synchronised without touching manual memberships."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from importlib.machinery import SourceFileLoader
from types import ModuleType

from alembic.migration import MigrationContext
from alembic.operations import Operations
from oidc_stack import OIDC_TABLES
from sqlalchemy import Engine, inspect

from sekisho.storage import oidc as store
from sekisho.storage import users
from sekisho.storage.database import MIGRATIONS, current_revision, head_revision

NOW = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


def _migration() -> ModuleType:
    path = MIGRATIONS / "versions" / "0005_oidc_federation.py"
    loader = SourceFileLoader("sekisho_migration_0005", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _run(engine: Engine, step: str) -> None:
    module = _migration()
    with engine.begin() as connection:
        context = MigrationContext.configure(
            connection, opts={"render_as_batch": connection.dialect.name == "sqlite"})
        with Operations.context(context):
            getattr(module, step)()


def test_migration_0005_creates_exactly_the_model_tables(engine: Engine) -> None:
    module = _migration()
    assert (module.revision, module.down_revision) == ("0005", "0004")
    if "oidc_sessions" in inspect(engine).get_table_names():
        _run(engine, "downgrade")
    assert not {t.__tablename__ for t in OIDC_TABLES} & set(inspect(engine).get_table_names())
    _run(engine, "upgrade")
    inspector = inspect(engine)
    for model in OIDC_TABLES:
        table = model.__table__
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(columns) == {c.name for c in table.columns}, table.name
        assert {n: c["nullable"] for n, c in columns.items()} == \
            {c.name: c.nullable for c in table.columns}, table.name
        key = inspector.get_pk_constraint(table.name)["constrained_columns"]
        assert set(key) == {c.name for c in table.primary_key.columns}
    _run(engine, "downgrade")
    assert not {t.__tablename__ for t in OIDC_TABLES} & set(inspect(engine).get_table_names())
    _run(engine, "upgrade")


def _transaction(engine: Engine, state: str, *, expires: datetime) -> None:
    store.create_transaction(engine, state=state, browser="b" * 43, idp="alpha", nonce="n",
                             code_verifier="v", redirect_uri="https://x/cb", rd="/",
                             now=NOW, expires_at=expires)


def test_transactions_are_single_use_and_expire(oidc_engine: Engine) -> None:
    _transaction(oidc_engine, "state-1", expires=NOW + timedelta(minutes=10))
    record = store.take_transaction(oidc_engine, "state-1", NOW)
    assert record is not None and record.browser_hash == store.digest("b" * 43)
    assert store.take_transaction(oidc_engine, "state-1", NOW) is None  # replay
    _transaction(oidc_engine, "state-2", expires=NOW + timedelta(seconds=1))
    assert store.take_transaction(oidc_engine, "state-2", NOW + timedelta(seconds=2)) is None


def test_replay_ledger_accepts_a_value_once_until_it_expires(oidc_engine: Engine) -> None:
    until = NOW + timedelta(minutes=5)
    assert store.use_once(oidc_engine, "nonce", "a", now=NOW, expires_at=until)
    assert not store.use_once(oidc_engine, "nonce", "a", now=NOW, expires_at=until)
    assert store.use_once(oidc_engine, "jti", "a", now=NOW, expires_at=until)  # other kind
    later = until + timedelta(seconds=1)
    assert store.use_once(oidc_engine, "nonce", "a", now=later,
                          expires_at=later + timedelta(minutes=5))


def test_group_sync_adds_and_removes_only_idp_granted_memberships(oidc_engine: Engine) -> None:
    user = users.create_user(oidc_engine, "kimura@city.example.jp")
    for name in ("staff", "finance", "manual"):
        users.create_group(oidc_engine, name)
    users.add_member(oidc_engine, "manual", user.username)
    added, removed = store.sync_groups(oidc_engine, user_id=user.id, idp="alpha",
                                       desired=frozenset({"staff", "finance", "missing"}))
    assert (added, removed) == (["finance", "staff"], [])
    added, removed = store.sync_groups(oidc_engine, user_id=user.id, idp="alpha",
                                       desired=frozenset({"staff", "manual"}))
    assert (added, removed) == ([], ["finance"])
    assert set(users.groups_of_user(oidc_engine, user.id)) == {"staff", "manual"}
    # The IdP stops asserting "manual": the membership an administrator gave stays.
    store.sync_groups(oidc_engine, user_id=user.id, idp="alpha", desired=frozenset())
    assert users.groups_of_user(oidc_engine, user.id) == ["manual"]
    assert users.get_group(oidc_engine, "missing") is None  # never created by an IdP


def test_session_links_by_sid_sub_and_pending_flow(oidc_engine: Engine) -> None:
    user = users.create_user(oidc_engine, "mori@city.example.jp")
    store.link_session(oidc_engine, session_id="s" * 64, user_id=user.id, idp="alpha",
                       sub="sub-1", sid="sid-1", id_token="t", now=NOW,
                       expires_at=NOW + timedelta(hours=1))
    store.link_session(oidc_engine, flow_id="f" * 64, user_id=user.id, idp="alpha",
                       sub="sub-1", sid="sid-2", id_token="t2", now=NOW,
                       expires_at=NOW + timedelta(hours=1))
    assert [link.session_id for link in store.links_for_logout(
        oidc_engine, "alpha", "", "sid-1")] == ["s" * 64]
    assert len(store.links_for_logout(oidc_engine, "alpha", "sub-1", "")) == 2
    assert store.links_for_logout(oidc_engine, "beta", "sub-1", "") == []
    # Only the exact session matches; a pending flow's link names its session once the flow
    # completes (SignInFlows.on_session_issued), never by user + IdP + time.
    assert store.link_for_session(oidc_engine, "x" * 64) is None
    assert store.link_for_session(oidc_engine, "s" * 64).sid == "sid-1"
    assert store.attach_session(oidc_engine, "f" * 64, "x" * 64) == 1
    assert store.link_for_session(oidc_engine, "x" * 64).flow_id == "f" * 64
    assert store.attach_session(oidc_engine, "f" * 64, "y" * 64) == 0  # set exactly once
    assert store.attach_session(oidc_engine, "g" * 64, "y" * 64) == 0


def test_the_migrated_head_has_the_oidc_tables(oidc_engine: Engine) -> None:
    assert current_revision(oidc_engine) == head_revision()
    assert {t.__tablename__ for t in OIDC_TABLES} <= set(inspect(oidc_engine).get_table_names())
