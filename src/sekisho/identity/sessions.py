"""Server-side sessions: issue opaque tokens, look them up fast, expire and revoke them.

The cookie carries `secrets.token_urlsafe(32)`; storage keeps only its SHA-256, so the
database never holds a usable token. A looked-up session is cached in this process for at
most `SessionSettings.cache_ttl` seconds. A revocation through this manager evicts at once;
one made by *another* process (the CLI, another gateway worker) is announced on the change
feed, and the gateway's watch evicts it here within a poll (`storage.changes`) —
`cache_ttl` remains the bound should that feed be unreadable. `last_seen_at` is written at
most once per `touch_interval` per session, never on every request; the idle timeout is
therefore precise to that interval.

Storage work runs in a thread (`asyncio.to_thread`) so the event loop never waits on the
database; a storage failure raises `StorageError` and the gateway denies (fail closed).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from sekisho.audit.events import SessionRevoked
from sekisho.config.model import SessionSettings
from sekisho.errors import SekishoError
from sekisho.identity.principal import SessionInfo
from sekisho.storage import sessions as store
from sekisho.storage.users import UserRecord, groups_of_user, require_user

Clock = Callable[[], datetime]
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # token_urlsafe(32): 43 base64url characters
MIN_PREFIX = 8


def utcnow() -> datetime:
    return datetime.now(UTC)


def session_id_for(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class SessionNotFound(SekishoError):
    code = "session-not-found"
    status = 404


@dataclass(slots=True)
class _Cached:
    info: SessionInfo
    fetched_at: datetime
    last_seen_at: datetime


class SessionManager:
    """Implements `sekisho.services.SessionLookup` over the `sessions` table."""

    touch_interval: float = 60.0
    cache_max: int = 50_000

    def __init__(self, engine: Engine, settings: SessionSettings, clock: Clock = utcnow) -> None:
        self._engine = engine
        self.settings = settings
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def update_settings(self, settings: SessionSettings) -> None:
        """A new config snapshot: new timeouts apply from the next lookup."""
        self.settings = settings
        self._evict_all()

    # -- issuing --------------------------------------------------------------------------

    def create(
        self, user: UserRecord, methods: Iterable[str], source_ip: str, user_agent: str, *,
        auth_time: datetime | None = None, mfa_time: datetime | None = None, idp: str = "",
        expires_at: datetime | None = None,
    ) -> tuple[str, SessionInfo]:
        """A new session: returns the cookie token (shown once) and the session value.

        `auth_time` defaults to now (a fresh primary proof); a step-up passes the old
        session's `auth_time` and `expires_at`, so rotation never extends a session's life.
        """
        token = secrets.token_urlsafe(32)
        session_id = session_id_for(token)
        now = self._clock()
        auth_time = now if auth_time is None else auth_time
        expires = now + timedelta(seconds=self.settings.absolute_lifetime)
        if expires_at is not None:
            expires = min(expires, expires_at)
        method_set = frozenset(methods)
        store.create_session(
            self._engine, session_id=session_id, user_id=user.id, now=now, expires_at=expires,
            auth_time=auth_time, methods=method_set, source_ip=source_ip,
            user_agent=user_agent, mfa_time=mfa_time, idp=idp)
        info = SessionInfo(
            session_id=session_id, user_id=user.id, username=user.username,
            display_name=user.display_name, email=user.email,
            groups=frozenset(groups_of_user(self._engine, user.id)), auth_methods=method_set,
            auth_time=auth_time, created_at=now, expires_at=expires, source_ip=source_ip,
            mfa_time=mfa_time, idp=idp)
        return token, info

    # -- lookup ---------------------------------------------------------------------------

    async def lookup(self, token: str) -> SessionInfo | None:
        if not _TOKEN_RE.fullmatch(token or ""):
            return None  # malformed: never reaches storage
        session_id = session_id_for(token)
        now = self._clock()
        cached = self._fresh(session_id, now)
        if cached is not None:
            if self._expired(cached.info, cached.last_seen_at, now):
                self._evict(session_id)
                return None
            if (now - cached.last_seen_at).total_seconds() >= self.touch_interval:
                await asyncio.to_thread(self._touch, session_id, now)
            return cached.info
        return await asyncio.to_thread(self._load, session_id, now)

    async def lookup_fresh(self, token: str, *, activity: bool) -> SessionInfo | None:
        """Read the session from storage, never from the cache (re-checking an open
        WebSocket right after a change must not see a stale cached copy). Only `activity`
        (the client sent something since the last check) counts towards the idle timeout:
        an unattended tab's WebSocket must not keep its session alive."""
        if not _TOKEN_RE.fullmatch(token or ""):
            return None
        return await asyncio.to_thread(self._load, session_id_for(token), self._clock(),
                                       activity)

    def lookup_sync(self, token: str) -> SessionInfo | None:
        """The same as `lookup` for synchronous callers (tests, CLI)."""
        if not _TOKEN_RE.fullmatch(token or ""):
            return None
        return self._load(session_id_for(token), self._clock())

    def _fresh(self, session_id: str, now: datetime) -> _Cached | None:
        with self._lock:
            entry = self._cache.get(session_id)
        if entry is None:
            return None
        age = (now - entry.fetched_at).total_seconds()
        if age < 0 or age >= self.settings.cache_ttl:
            return None
        return entry

    def _expired(self, info: SessionInfo, last_seen: datetime, now: datetime) -> bool:
        idle = (now - last_seen).total_seconds()
        return now >= info.expires_at or idle >= self.settings.idle_timeout

    def _load(self, session_id: str, now: datetime, touch: bool = True) -> SessionInfo | None:
        record = store.load_session(self._engine, session_id)
        if record is None or record.revoked_at is not None or record.user_disabled:
            self._evict(session_id)
            return None
        info = SessionInfo(
            session_id=record.id, user_id=record.user_id, username=record.username,
            display_name=record.display_name, email=record.email, groups=record.groups,
            auth_methods=record.auth_methods, auth_time=record.auth_time,
            created_at=record.created_at, expires_at=record.expires_at,
            source_ip=record.source_ip, mfa_time=record.mfa_time, idp=record.idp)
        if self._expired(info, record.last_seen_at, now):
            self._evict(session_id)
            return None
        last_seen = record.last_seen_at
        if touch and (now - last_seen).total_seconds() >= self.touch_interval:
            store.touch(self._engine, session_id, now)
            last_seen = now
        with self._lock:
            if len(self._cache) >= self.cache_max:
                self._cache.clear()  # bounded memory under a flood of distinct sessions
            self._cache[session_id] = _Cached(info, now, last_seen)
        return info

    def _touch(self, session_id: str, now: datetime) -> None:
        store.touch(self._engine, session_id, now)
        with self._lock:
            entry = self._cache.get(session_id)
            if entry is not None:
                entry.last_seen_at = now

    def _evict(self, session_id: str) -> None:
        with self._lock:
            self._cache.pop(session_id, None)

    def evict(self, session_ids: Iterable[str]) -> None:
        """Forget sessions revoked in storage by someone else's transaction (EDR webhook)."""
        with self._lock:
            for session_id in session_ids:
                self._cache.pop(session_id, None)

    def evict_user(self, user_id: int) -> None:
        """Forget every cached session of a user (disabled, signed out everywhere, groups
        changed: announced on the change feed by another process)."""
        with self._lock:
            for session_id in [k for k, v in self._cache.items() if v.info.user_id == user_id]:
                del self._cache[session_id]

    def evict_all(self) -> None:
        """Forget everything cached (the change feed may have been missed)."""
        self._evict_all()

    def _evict_all(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- revocation -----------------------------------------------------------------------

    def revoke_id(self, session_id: str, reason: str) -> bool:
        """Revoke one session by its full id (sign-out, rotation at sign-in)."""
        self._evict(session_id)
        return store.revoke(self._engine, session_id, self._clock(), reason)

    def revoke(self, session_id_or_prefix: str, admin: str, reason: str) -> list[SessionRevoked]:
        """Revoke the one session whose id starts with the prefix (at least 8 hex digits).

        Refuses ambiguous or too-short prefixes rather than revoking several sessions.
        Returns the audit events to append.
        """
        prefix = session_id_or_prefix.strip().lower()
        if len(prefix) < MIN_PREFIX:
            raise SessionNotFound(
                f"セッション ID は {MIN_PREFIX} 桁以上で指定してください / "
                f"give at least {MIN_PREFIX} hex digits of the session id")
        matches = store.find_by_prefix(self._engine, prefix, limit=2)
        if not matches:
            raise SessionNotFound(f"セッション {prefix} が見つかりません / no session {prefix}")
        if len(matches) > 1:
            raise SessionNotFound(f"{prefix} に一致するセッションが複数あります / "
                                  f"{prefix} matches several sessions; give more digits")
        session_id = matches[0]
        record = store.load_session(self._engine, session_id)
        self.revoke_id(session_id, reason)
        username = record.username if record else ""
        return [SessionRevoked(admin=admin, session=session_id[:12], user=username,
                               reason=reason)]

    def revoke_user(self, username: str, admin: str, reason: str) -> list[SessionRevoked]:
        user = require_user(self._engine, username)
        ids = store.revoke_user(self._engine, user.id, self._clock(), reason)
        for session_id in ids:
            self._evict(session_id)
        return [SessionRevoked(admin=admin, session=sid[:12], user=user.username, reason=reason)
                for sid in ids]

    def list_active(self, username: str | None = None) -> list[store.SessionRecord]:
        user_id = require_user(self._engine, username).id if username else None
        return store.list_active(self._engine, self._clock(), self.settings.idle_timeout,
                                 user_id=user_id)
