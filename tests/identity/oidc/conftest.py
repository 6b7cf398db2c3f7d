"""Fixtures for the OIDC tests; the stack itself is in `oidc_stack.py`."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from oidc_stack import Browser, Stack
from sqlalchemy import Engine


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    built = Stack(tmp_path_factory.mktemp("oidc"))
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def oidc(stack: Stack) -> Iterator[Stack]:
    """The stack with the default configuration and an empty audit list."""
    stack.configure()
    stack.audit.events.clear()
    stack.random = secrets.token_urlsafe
    stack.cache.clear()
    yield stack
    stack.configure()


@pytest.fixture
def browser(stack: Stack) -> Iterator[Browser]:
    b = Browser(stack)
    yield b
    b.close()


@pytest.fixture
def oidc_engine(engine: Engine) -> Engine:
    """A migrated database (SQLite and PostgreSQL) with the OIDC tables of migration 0005."""
    return engine
