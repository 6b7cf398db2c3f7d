"""The seams between parts: what the gateway needs from identity and audit, as protocols.

The composition root (`sekisho.app`) builds the real objects; tests build real ones too
(over a temporary SQLite or PostgreSQL database), never mocks.
"""

from __future__ import annotations

from typing import Protocol

from sekisho.audit.events import AuditEvent
from sekisho.identity.principal import SessionInfo


class SessionLookup(Protocol):
    async def lookup(self, token: str) -> SessionInfo | None:
        """The live session for a cookie token, or None (unknown, expired, revoked, disabled).

        Raises `StorageError` when storage cannot answer: the caller denies (fail closed).
        """


class AuditSink(Protocol):
    def record(self, event: AuditEvent) -> None:
        """Queue a non-durable event (access decisions) for the group-commit writer.

        Raises `AuditUnavailable` if the writer has failed: the caller denies.
        """

    async def append(self, event: AuditEvent) -> None:
        """Append a durable event; returns only once it is committed."""
