from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import EchoUpstream, GatewayProcess


@pytest.fixture
def upstream() -> Iterator[EchoUpstream]:
    server = EchoUpstream()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def gateway(request: pytest.FixtureRequest, tmp_path: Path,
            upstream: EchoUpstream) -> Iterator[GatewayProcess]:
    """A provisioned, running gateway: on SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/sekisho.db"
    else:
        url = request.getfixturevalue("pg_schema_url")
    process = GatewayProcess(tmp_path, url, upstream)
    process.provision()
    process.start()
    yield process
    process.stop()


@pytest.fixture
def sqlite_gateway(tmp_path: Path, upstream: EchoUpstream) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/sekisho.db", upstream)
    process.provision()
    process.start()
    yield process
    process.stop()
