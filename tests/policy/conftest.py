"""Facts for policy tests: a signed-in staff member in the office, overridable per test."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from sekisho.policy import Facts

MakeFacts = Callable[..., Facts]


def facts(**overrides: Any) -> Facts:
    values: dict[str, Any] = {
        "authenticated": True,
        "user": "tanaka",
        "email": "tanaka@city.example.lg.jp",
        "groups": frozenset({"staff"}),
        "source_ip": ipaddress.ip_address("10.20.30.40"),
        "method": "GET",
        "path": "/app",
        "host": "apps.city.example.lg.jp",
        "route": "app",
        "segment": "internet",
        "now": datetime(2025, 4, 1, 0, 30, tzinfo=UTC),
    }
    if isinstance(overrides.get("source_ip"), str):
        overrides["source_ip"] = ipaddress.ip_address(overrides["source_ip"])
    if isinstance(overrides.get("groups"), list | set | tuple):
        overrides["groups"] = frozenset(overrides["groups"])
    values.update(overrides)
    return Facts(**values)


@pytest.fixture
def make_facts() -> MakeFacts:
    return facts
