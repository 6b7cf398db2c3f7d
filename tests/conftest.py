"""Shared fixtures: databases on SQLite and on a real PostgreSQL, ports, the test clock.

PostgreSQL tests are marked `postgres`. Without a server (SEKISHO_TEST_PG_URL unset and
nothing on 127.0.0.1:5432) they are skipped with a note on how to enable them — unless
SEKISHO_REQUIRE_POSTGRES=1 (set by `.ci/run`), which turns the skip into a failure. Where
the server is and whether it answers lives in `tests/pg.py`, which test files import.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, create_engine, text

from pg import PG_URL, postgres_or_skip
from sekisho.storage.database import create_database_engine, upgrade


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A URL to a fresh, empty schema on the real PostgreSQL, dropped afterwards."""
    postgres_or_skip()
    schema = "t_" + secrets.token_hex(6)
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    options = quote(f"-csearch_path={schema}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options={options}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    """A migrated, empty database URL: once on SQLite (WAL), once on real PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/sekisho.db"
    else:
        url = request.getfixturevalue("pg_schema_url")
    engine = create_database_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    yield engine
    engine.dispose()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = [
        report for report in terminalreporter.stats.get("skipped", [])
        if "PostgreSQL not reachable" in str(report.longrepr)
    ]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} PostgreSQL tests skipped: no server at {PG_URL}. Start PostgreSQL "
            "or set SEKISHO_TEST_PG_URL; SEKISHO_REQUIRE_POSTGRES=1 makes this a failure.",
            yellow=True,
        )
