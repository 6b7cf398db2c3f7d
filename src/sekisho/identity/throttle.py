"""Sign-in throttling per account and per source address: a pure decision plus a storage shell.

Against online password guessing: after the n-th consecutive failure on a key, the next
attempt is refused (without checking the password) until `base_delay·2^(n−1)` seconds
(capped at `max_delay`) have passed; after `account_max_failures` (per account) or
`ip_max_failures` (per address) failures the key is locked for `lockout` seconds. A success
resets the account key; address keys only age out. Failures older than `lockout` seconds
are forgotten, so occasional typos over weeks never add up to a lock.

Unknown user names are throttled exactly like real ones, so the throttle cannot be used to
learn which accounts exist (user enumeration).
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from sekisho.audit.events import AccountLocked
from sekisho.config.model import ThrottleSettings
from sekisho.storage import throttle as store
from sekisho.storage.throttle import ThrottleRecord


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: float = 0.0  # seconds until the next attempt may be checked
    reason: str = ""  # "" | "backoff" | "locked"


def account_key(username: str) -> str:
    return "account:" + unicodedata.normalize("NFKC", username).strip().casefold()[:150]


def ip_key(address: str) -> str:
    return "ip:" + address[:64]


def mfa_account_key(username: str) -> str:
    """Second-factor guesses (TOTP, recovery codes) are counted apart from passwords."""
    return "mfa-" + account_key(username)


def mfa_ip_key(address: str) -> str:
    return "mfa-" + ip_key(address)


def decide(state: ThrottleRecord, now: datetime, settings: ThrottleSettings) -> Verdict:
    """May an attempt on this key be checked now? Pure."""
    if state.locked_until is not None and now < state.locked_until:
        return Verdict(False, (state.locked_until - now).total_seconds(), "locked")
    if _forgotten(state, now, settings) or state.locked_until is not None:
        return Verdict(True)  # the lock (if any) has run out: a fresh start
    if state.failures <= 0 or state.last_failure_at is None:
        return Verdict(True)
    delay = min(settings.base_delay * 2 ** (state.failures - 1), settings.max_delay)
    ready = state.last_failure_at + timedelta(seconds=delay)
    if now < ready:
        return Verdict(False, (ready - now).total_seconds(), "backoff")
    return Verdict(True)


def after_failure(
    state: ThrottleRecord, now: datetime, settings: ThrottleSettings, max_failures: int
) -> ThrottleRecord:
    """The state after one more failure. Pure."""
    expired_lock = state.locked_until is not None and now >= state.locked_until
    failures = 1 if (expired_lock or _forgotten(state, now, settings)) else state.failures + 1
    locked_until = None
    if failures >= max_failures:
        locked_until = now + timedelta(seconds=settings.lockout)
    return ThrottleRecord(state.key, failures, now, locked_until)


def _forgotten(state: ThrottleRecord, now: datetime, settings: ThrottleSettings) -> bool:
    return (state.last_failure_at is not None
            and (now - state.last_failure_at).total_seconds() >= settings.lockout)


def is_address_key(key: str) -> bool:
    """`ip:<addr>` or any `<purpose>-ip:<addr>` (`mfa-ip:`, `enrol-ip:`, `edr-ip:`, …).

    Only the purpose — the text before the first colon — is looked at: an account key is
    `account:<name>`, and a user named `x-ip:y` must not get the address limit.
    """
    purpose = key.partition(":")[0]
    return purpose == "ip" or purpose.endswith("-ip")


def _max_for(key: str, settings: ThrottleSettings) -> int:
    """An address is shared (an office behind one NAT address): it gets `ip_max_failures`,
    so a few typos by colleagues never lock the whole office out; anything else is an
    account and gets `account_max_failures`."""
    if is_address_key(key):
        return settings.ip_max_failures
    return settings.account_max_failures


class Throttle:
    """The storage shell: synchronous, call it from a thread in async code."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] | None = None) -> None:
        self._engine = engine
        self._clock = clock or (lambda: datetime.now(UTC))

    def check(self, username: str, source_ip: str, settings: ThrottleSettings) -> Verdict:
        """The strictest verdict over the account key and the address key."""
        return self.check_keys([account_key(username), ip_key(source_ip)], settings)

    def check_keys(self, keys: list[str], settings: ThrottleSettings) -> Verdict:
        """The strictest verdict over any keys (e.g. the `mfa-` ones)."""
        now = self._clock()
        states = store.read_states(self._engine, keys)
        verdicts = [decide(state, now, settings) for state in states.values()]
        refused = [v for v in verdicts if not v.allowed]
        if not refused:
            return Verdict(True)
        return max(refused, key=lambda v: v.retry_after)

    def record_failure(
        self, username: str, source_ip: str, settings: ThrottleSettings
    ) -> list[AccountLocked]:
        """Count a failure on both keys; returns a lockout event for each key that locked."""
        return self.record_failure_keys(
            [account_key(username), ip_key(source_ip)], source_ip, settings)

    def record_failure_keys(
        self, keys: list[str], source_ip: str, settings: ThrottleSettings
    ) -> list[AccountLocked]:
        now = self._clock()
        events: list[AccountLocked] = []
        for key in keys:
            maximum = _max_for(key, settings)
            step = functools.partial(after_failure, now=now, settings=settings,
                                     max_failures=maximum)
            new = store.apply_failure(self._engine, key, step)
            if new.locked_until is not None and new.failures == maximum:
                events.append(AccountLocked(
                    key=key, failures=new.failures,
                    locked_until=new.locked_until.isoformat(), source_ip=source_ip))
        return events

    def reset_account(self, username: str) -> None:
        store.reset(self._engine, account_key(username))

    def reset_key(self, key: str) -> None:
        store.reset(self._engine, key)

    def state(self, key: str) -> ThrottleRecord:
        return store.read_states(self._engine, [key])[key]
