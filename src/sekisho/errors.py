"""The small error vocabulary: a machine code, a human description, a status hint.

Callers branch on the class only where they must (configuration vs. storage vs. request);
everything else reads `code`. Descriptions never contain secrets.
"""

from __future__ import annotations


class SekishoError(Exception):
    """Base error: `code` is stable and machine-readable, `description` is for people."""

    code = "sekisho-error"
    status = 500

    def __init__(self, description: str, *, code: str | None = None) -> None:
        super().__init__(description)
        self.description = description
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.description


class ConfigError(SekishoError):
    """The configuration file is invalid; the message names file, line and field."""

    code = "config-invalid"


class StorageError(SekishoError):
    """The database is unreachable, un-migrated or returned something impossible."""

    code = "storage-unavailable"
    status = 503


class BadRequest(SekishoError):
    """The peer broke HTTP or sent something we refuse to interpret."""

    code = "bad-request"
    status = 400


class AuditUnavailable(SekishoError):
    """The audit log cannot take the event now; the caller must deny (fail closed)."""

    code = "audit-unavailable"
    status = 503


class SessionNotFound(SekishoError):
    code = "session-not-found"
    status = 404
