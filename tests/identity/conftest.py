"""Shared pieces for the identity tests: a settable clock, a cheap hasher, an audit sink."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sekisho.audit.events import AuditEvent
from sekisho.identity.passwords import PasswordHasher


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FastHasher(PasswordHasher):
    """argon2id with small parameters so handler tests stay fast (policy is tested apart)."""

    time_cost = 1
    memory_cost = 1024
    parallelism = 1


class MemoryAudit:
    """A real in-memory implementation of the AuditSink protocol."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)

    async def append(self, event: AuditEvent) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [event.event_type for event in self.events]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def audit() -> MemoryAudit:
    return MemoryAudit()


@pytest.fixture
def fast_hasher() -> FastHasher:
    return FastHasher()
