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

When an entry runs out, the lookups of that session in flight share one storage load instead
of each starting their own (64 keep-alive connections on one session would otherwise read the
database 64 times every `cache_ttl`: a load amplifier anyone with a session could aim at it).
An eviction forgets the loads in flight too: a read taken before a revocation is never
cached after it, and the lookups that come after the eviction read storage again.

A session in use is refreshed ahead: a lookup that finds its entry past `REFRESH_AHEAD` of
`cache_ttl` answers from it and starts that shared load in the background, so under steady
traffic no request waits for storage (each wait was a tail-latency spike for every request of
the session: the load runs in a thread that, beside a busy event loop, waits for the GIL at
each database step). No entry is ever used older than `cache_ttl`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from sqlalchemy import Engine

from sekisho.audit.events import SessionRevoked
from sekisho.config.model import SessionSettings

# In errors.py: a compiled class (mypyc) would not take its status over SekishoError's.
from sekisho.errors import SessionNotFound as SessionNotFound  # noqa: PLC0414 (re-export)
from sekisho.identity.principal import SessionInfo, proofs_from
from sekisho.storage import sessions as store
from sekisho.storage.users import UserRecord, groups_of_user, require_user

Clock = Callable[[], datetime]
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # token_urlsafe(32): 43 base64url characters
MIN_PREFIX = 8


def utcnow() -> datetime:
    return datetime.now(UTC)


def session_id_for(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class _Read:
    """One storage read of a session in progress; an eviction meanwhile voids it, so what it
    read (perhaps before a revocation) is returned to its callers but never cached."""

    __slots__ = ("void",)

    def __init__(self) -> None:
        self.void = False


def _observe(task: asyncio.Task[SessionInfo | None]) -> None:
    """Its waiters read its error; if they all left, it is read here (not logged as lost)."""
    if not task.cancelled():
        task.exception()


@dataclass(slots=True)
class _Cached:
    info: SessionInfo
    fetched_at: datetime
    last_seen_at: datetime
    # The span (epoch seconds) in which a lookup returns `info` and does nothing else.
    quiet_from: float = 0.0
    quiet_until: float = 0.0


# The fraction of `cache_ttl` after which a lookup refreshes its entry in the background.
REFRESH_AHEAD = 0.5


class SessionManager:
    """Implements `sekisho.services.SessionLookup` over the `sessions` table."""

    touch_interval: float = 60.0
    cache_max: int = 50_000

    def __init__(self, engine: Engine, settings: SessionSettings, clock: Clock = utcnow) -> None:
        self._engine = engine
        self.settings = settings
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._reads: dict[str, list[_Read]] = {}  # storage reads in flight, per session
        self._loading: dict[str, asyncio.Task[SessionInfo | None]] = {}  # shared loads
        self._lock = threading.Lock()
        # `clock` as epoch seconds, for `quiet` (the request path: no datetime arithmetic).
        self._epoch: Callable[[], float] = time.time if clock is utcnow \
            else lambda: clock().timestamp()

    def update_settings(self, settings: SessionSettings) -> None:
        """A new config snapshot: new timeouts apply from the next lookup."""
        self.settings = settings
        self._evict_all()

    # -- issuing --------------------------------------------------------------------------

    def create(
        self, user: UserRecord, methods: Iterable[str], source_ip: str, user_agent: str, *,
        auth_time: datetime | None = None, mfa_time: datetime | None = None, idp: str = "",
        expires_at: datetime | None = None, proofs: Mapping[str, datetime] | None = None,
    ) -> tuple[str, SessionInfo]:
        """A new session: returns the cookie token (shown once) and the session value.

        `auth_time` defaults to now (a fresh primary proof); a step-up passes the old
        session's `auth_time` and `expires_at`, so rotation never extends a session's life.
        `proofs` (when each method was proven) defaults to the methods at those two times;
        the sign-in flows pass the exact times.
        """
        token = secrets.token_urlsafe(32)
        session_id = session_id_for(token)
        now = self._clock()
        auth_time = now if auth_time is None else auth_time
        expires = now + timedelta(seconds=self.settings.absolute_lifetime)
        if expires_at is not None:
            expires = min(expires, expires_at)
        method_set = frozenset(methods)
        proven = proofs_from(method_set, auth_time, mfa_time) if proofs is None \
            else MappingProxyType(dict(proofs))
        store.create_session(
            self._engine, session_id=session_id, user_id=user.id, now=now, expires_at=expires,
            auth_time=auth_time, methods=method_set, source_ip=source_ip,
            user_agent=user_agent, mfa_time=mfa_time, idp=idp, proofs=proven)
        info = SessionInfo(
            session_id=session_id, user_id=user.id, username=user.username,
            display_name=user.display_name, email=user.email,
            groups=frozenset(groups_of_user(self._engine, user.id)), auth_methods=method_set,
            auth_time=auth_time, created_at=now, expires_at=expires, source_ip=source_ip,
            mfa_time=mfa_time, idp=idp, proofs=proven)
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
            age = (now - cached.fetched_at).total_seconds()
            if age >= self.settings.cache_ttl * REFRESH_AHEAD:
                self._load_task(session_id, now)  # in the background: nobody waits for it
            return cached.info
        if self.settings.cache_ttl <= 0:  # no cache: every lookup reads storage itself
            return await asyncio.to_thread(self._load, session_id, now)
        return await self._shared_load(session_id, now)

    def quiet(self, info: SessionInfo) -> bool:
        """Whether a `lookup` of this session would now return `info` itself and do nothing
        else: no storage read, no `last_seen_at` touch, no background refresh. What lets the
        gateway reuse a decision made on `info` (gateway.decisions). False as soon as the
        entry is evicted (revoked, signed out, user changed) or replaced by a newer read."""
        entry = self._cache.get(info.session_id)
        if entry is None or entry.info is not info:
            return False
        return entry.quiet_from <= self._epoch() < entry.quiet_until

    def _set_quiet(self, entry: _Cached) -> _Cached:
        """Compute `entry`'s quiet span: before the refresh-ahead point, the next touch, the
        absolute expiry and the idle timeout, whichever comes first (see `lookup`)."""
        settings = self.settings
        fetched, last_seen = entry.fetched_at.timestamp(), entry.last_seen_at.timestamp()
        entry.quiet_from = fetched
        entry.quiet_until = min(fetched + settings.cache_ttl * REFRESH_AHEAD,
                                last_seen + self.touch_interval,
                                last_seen + settings.idle_timeout,
                                entry.info.expires_at.timestamp())
        return entry

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

    async def _shared_load(self, session_id: str, now: datetime) -> SessionInfo | None:
        """Join the load of this session in flight, or start it (single flight)."""
        # shield: one waiter giving up (its client left) must not cancel the others' load.
        return await asyncio.shield(self._load_task(session_id, now))

    def _load_task(self, session_id: str, now: datetime) -> asyncio.Task[SessionInfo | None]:
        """The load of this session in flight on this loop, or a new one."""
        loop = asyncio.get_running_loop()
        with self._lock:
            task = self._loading.get(session_id)
            if task is None or task.get_loop() is not loop:
                task = loop.create_task(self._load_shared(session_id, now))
                task.add_done_callback(_observe)
                self._loading[session_id] = task
        return task

    async def _load_shared(self, session_id: str, now: datetime) -> SessionInfo | None:
        this = asyncio.current_task()
        try:
            return await asyncio.to_thread(self._load, session_id, now)
        finally:
            with self._lock:
                if self._loading.get(session_id) is this:
                    del self._loading[session_id]

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
        read = _Read()
        with self._lock:
            self._reads.setdefault(session_id, []).append(read)
        try:
            return self._read(session_id, now, touch, read)
        finally:
            with self._lock:
                reads = self._reads.get(session_id)
                if reads is not None and read in reads:
                    reads.remove(read)
                    if not reads:
                        del self._reads[session_id]

    def _read(self, session_id: str, now: datetime, touch: bool, read: _Read) -> SessionInfo | None:
        record = store.load_session(self._engine, session_id)
        if record is None or record.revoked_at is not None or record.user_disabled:
            self._forget([session_id])  # and any read of it that began before storage said so
            return None
        info = SessionInfo(
            session_id=record.id, user_id=record.user_id, username=record.username,
            display_name=record.display_name, email=record.email, groups=record.groups,
            auth_methods=record.auth_methods, auth_time=record.auth_time,
            created_at=record.created_at, expires_at=record.expires_at,
            source_ip=record.source_ip, mfa_time=record.mfa_time, idp=record.idp,
            proofs=record.proofs)
        if self._expired(info, record.last_seen_at, now):
            self._evict(session_id)
            return None
        last_seen = record.last_seen_at
        if touch and (now - last_seen).total_seconds() >= self.touch_interval:
            store.touch(self._engine, session_id, now)
            last_seen = now
        with self._lock:
            if read.void:  # evicted while we read: what we read may predate a revocation
                return info
            if len(self._cache) >= self.cache_max:
                self._cache.clear()  # bounded memory under a flood of distinct sessions
            self._cache[session_id] = self._set_quiet(_Cached(info, now, last_seen))
        return info

    def _touch(self, session_id: str, now: datetime) -> None:
        store.touch(self._engine, session_id, now)
        with self._lock:
            entry = self._cache.get(session_id)
            if entry is not None:
                entry.last_seen_at = now
                self._set_quiet(entry)

    def _evict(self, session_id: str) -> None:
        with self._lock:
            self._cache.pop(session_id, None)

    def _forget(self, session_ids: Iterable[str]) -> None:
        """Drop the cached sessions and void their reads in flight (so none is cached later),
        under the lock that guards the cache write, so no read slips between the two."""
        with self._lock:
            for session_id in session_ids:
                self._cache.pop(session_id, None)
                self._loading.pop(session_id, None)
                for read in self._reads.pop(session_id, ()):
                    read.void = True

    def evict(self, session_ids: Iterable[str]) -> None:
        """Forget sessions revoked in storage by someone else's transaction (EDR webhook),
        and any load of them in flight: lookups after this read storage again."""
        self._forget(session_ids)

    def evict_user(self, user_id: int) -> None:
        """Forget every cached session of a user (disabled, signed out everywhere, groups
        changed: announced on the change feed by another process). Whose session a read in
        flight is, is only known when it ends, so every read in flight is voided."""
        with self._lock:
            for session_id in [k for k, v in self._cache.items() if v.info.user_id == user_id]:
                del self._cache[session_id]
            self._void_reads()

    def evict_all(self) -> None:
        """Forget everything cached (the change feed may have been missed)."""
        self._evict_all()

    def _evict_all(self) -> None:
        with self._lock:
            self._cache.clear()
            self._void_reads()

    def _void_reads(self) -> None:
        """Caller holds the lock."""
        for reads in self._reads.values():
            for read in reads:
                read.void = True
        self._reads.clear()
        self._loading.clear()

    # -- revocation -----------------------------------------------------------------------

    def revoke_id(self, session_id: str, reason: str) -> bool:
        """Revoke one session by its full id (sign-out, rotation at sign-in)."""
        try:
            return store.revoke(self._engine, session_id, self._clock(), reason)
        finally:
            # After the write: a read that began before it committed is voided, one that
            # begins after it sees the revocation (evicting first would leave a gap).
            self._forget([session_id])

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
        self._forget(ids)
        return [SessionRevoked(admin=admin, session=sid[:12], user=user.username, reason=reason)
                for sid in ids]

    def list_active(self, username: str | None = None) -> list[store.SessionRecord]:
        user_id = require_user(self._engine, username).id if username else None
        return store.list_active(self._engine, self._clock(), self.settings.idle_timeout,
                                 user_id=user_id)
