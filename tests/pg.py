"""The test PostgreSQL: where it is, whether it answers, and a URL where none does.

A plain module rather than a conftest, so that test files import it by a name that no
other directory's `conftest` can shadow in a full run (`from pg import PG_URL`); the root
conftest builds its fixtures on it. Without a server (SEKISHO_TEST_PG_URL unset and
nothing on 127.0.0.1:5432) PostgreSQL tests are skipped with a note on how to enable them,
unless SEKISHO_REQUIRE_POSTGRES=1 (set by `.ci/run`) turns the skip into a failure.
"""

from __future__ import annotations

import os
import socket

import pytest
from sqlalchemy import create_engine, text

PG_URL = os.environ.get("SEKISHO_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("SEKISHO_REQUIRE_POSTGRES") == "1"
_PG_HELP = (
    "PostgreSQL not reachable at {url}: start one (trust auth, database `test`) or set "
    "SEKISHO_TEST_PG_URL to run these tests"
)
_PG_STATE: dict[str, bool] = {}


def _postgres_available() -> bool:
    try:
        engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def postgres_or_skip() -> None:
    """Skip the calling test without a server (fail it under SEKISHO_REQUIRE_POSTGRES=1)."""
    if "ok" not in _PG_STATE:
        _PG_STATE["ok"] = _postgres_available()
    if not _PG_STATE["ok"]:
        message = _PG_HELP.format(url=PG_URL)
        if REQUIRE_PG:
            pytest.fail(message + " (SEKISHO_REQUIRE_POSTGRES=1)")
        pytest.skip(message)


def unreachable_url() -> str:
    """A PostgreSQL URL on a loopback port nobody listens on (fail-closed tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return f"postgresql://postgres@127.0.0.1:{port}/none"
