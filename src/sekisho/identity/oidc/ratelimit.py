"""A per-source-address token bucket for `/.sekisho/oidc/start`, held in process memory.

Every GET of the start page stores a transaction row (state, nonce, PKCE verifier) before the
browser has proven anything, so an unauthenticated client looping over it would fill the
database (storage exhaustion) and keep the writer busy. The limit is checked *before* any
write. In memory rather than through `identity.throttle`: that throttle stores its counters
in the database, so using it here would itself write a row per request — the very cost being
bounded. A per-worker bucket is enough for this purpose (N workers allow N× the rate, still
a fixed bound), costs no I/O, and forgets its state on restart, which is harmless.

The defaults fit a city hall where hundreds of staff share one NAT address at 8:30: a burst
of `burst` starts, then `rate` per second. Memory is bounded: at most `max_keys` addresses
are tracked; when full, the address idle the longest is forgotten (a forgotten address gets
a full bucket, i.e. the limiter fails *open* for it, never closed for everybody).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class StartLimiter:
    """`allow(key)` takes one token from the bucket of `key`; False when it is empty."""

    rate = 2.0  # tokens per second, per source address
    burst = 60.0  # bucket size
    max_keys = 10_000

    def __init__(self, *, rate: float | None = None, burst: float | None = None,
                 max_keys: int | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rate = self.rate if rate is None else rate
        self.burst = self.burst if burst is None else burst
        self.max_keys = self.max_keys if max_keys is None else max_keys
        self._monotonic = monotonic
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (tokens, t)

    def allow(self, key: str) -> bool:
        now = self._monotonic()
        tokens, then = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - then) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)  # the least recently seen address
        return allowed

    def clear(self) -> None:
        """Forget every address (e.g. tests, or an operator after a false alarm)."""
        self._buckets.clear()

    def retry_after(self, key: str) -> int:
        """Whole seconds until `key` has a token again (at least 1)."""
        tokens, _ = self._buckets.get(key, (self.burst, 0.0))
        return max(1, math.ceil((1.0 - tokens) / self.rate)) if self.rate > 0 else 60
