"""The `/.sekisho/oidc/start` token bucket, pure: burst, refill, per address, bounded memory."""

from __future__ import annotations

from sekisho.identity.oidc.ratelimit import StartLimiter


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_per_address():
    ticks = Ticks()
    limiter = StartLimiter(rate=1.0, burst=3.0, monotonic=ticks)
    assert [limiter.allow("203.0.113.7") for _ in range(4)] == [True, True, True, False]
    assert limiter.retry_after("203.0.113.7") == 1
    assert limiter.allow("198.51.100.1")  # another address has its own bucket
    ticks.now += 1.0
    assert limiter.allow("203.0.113.7") and not limiter.allow("203.0.113.7")
    ticks.now += 3600
    assert [limiter.allow("203.0.113.7") for _ in range(4)] == [True, True, True, False]


def test_refused_requests_do_not_extend_the_wait():
    ticks = Ticks()
    limiter = StartLimiter(rate=0.5, burst=1.0, monotonic=ticks)
    assert limiter.allow("a") and not limiter.allow("a")
    ticks.now += 1.0
    assert not limiter.allow("a")  # half a token
    ticks.now += 1.0
    assert limiter.allow("a")


def test_memory_is_bounded_by_forgetting_the_longest_idle_address():
    ticks = Ticks()
    limiter = StartLimiter(rate=0.0, burst=1.0, max_keys=2, monotonic=ticks)
    assert limiter.allow("a") and limiter.allow("b")
    assert not limiter.allow("a")  # "a" is now the most recently seen
    assert limiter.allow("c")  # "b" is forgotten
    assert len(limiter._buckets) == 2 and not limiter.allow("a")


def test_defaults_allow_a_morning_rush_behind_one_nat_address():
    limiter = StartLimiter(monotonic=Ticks())
    assert sum(limiter.allow("192.0.2.1") for _ in range(100)) == int(StartLimiter.burst)
