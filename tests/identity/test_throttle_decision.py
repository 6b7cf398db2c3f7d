"""Throttling: the pure decision table and the storage shell, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sekisho.config.model import ThrottleSettings
from sekisho.identity.throttle import (
    Throttle,
    Verdict,
    account_key,
    after_failure,
    decide,
    ip_key,
    is_address_key,
    mfa_account_key,
    mfa_ip_key,
)
from sekisho.storage.throttle import ThrottleRecord

S = ThrottleSettings(account_max_failures=5, ip_max_failures=8, lockout=900, base_delay=1,
                     max_delay=6)
T0 = datetime(2026, 4, 1, tzinfo=UTC)


def _at(seconds):
    return T0 + timedelta(seconds=seconds)


def test_backoff_doubles_and_is_capped():
    state = ThrottleRecord("account:x")
    delays = []
    for n in range(1, 5):
        state = after_failure(state, T0, S, max_failures=99)
        verdict = decide(state, T0, S)
        assert not verdict.allowed and verdict.reason == "backoff"
        delays.append(verdict.retry_after)
        assert decide(state, _at(verdict.retry_after), S).allowed
        assert state.failures == n
    assert delays == [1, 2, 4, 6]  # 8 capped at max_delay


def test_lockout_after_max_and_fresh_start_after_it():
    state = ThrottleRecord("account:x")
    for _ in range(5):
        state = after_failure(state, T0, S, max_failures=5)
    assert state.locked_until == _at(900)
    assert decide(state, _at(899), S) == Verdict(False, 1.0, "locked")
    assert decide(state, _at(900), S).allowed
    again = after_failure(state, _at(901), S, max_failures=5)
    assert again.failures == 1 and again.locked_until is None


def test_old_failures_are_forgotten():
    state = after_failure(ThrottleRecord("k"), T0, S, max_failures=5)
    state = after_failure(state, _at(10), S, max_failures=5)
    assert after_failure(state, _at(10 + 900), S, max_failures=5).failures == 1


def test_key_normalisation():
    assert account_key(" ＴＡＮＡＫＡ ") == account_key("tanaka") == "account:tanaka"
    assert ip_key("192.0.2.1") == "ip:192.0.2.1"


@pytest.mark.parametrize(("key", "address"), [
    (ip_key("192.0.2.1"), True),
    (mfa_ip_key("192.0.2.1"), True),
    ("enrol-ip:192.0.2.1", True),  # device enrolment codes
    ("edr-ip:2001:db8::1", True),  # the EDR webhook (an IPv6 address has colons too)
    ("passkey-ip:192.0.2.1", True),  # any future per-address purpose
    (account_key("tanaka"), False),
    (mfa_account_key("tanaka"), False),
    (account_key("x-ip:y"), False),  # a user name never makes an account key an address key
    (account_key("ip"), False),
    ("ipx:192.0.2.1", False),
    ("ip-account:tanaka", False),
])
def test_address_keys_are_told_by_their_purpose(key, address):
    assert is_address_key(key) is address


@pytest.mark.parametrize("key", ["enrol-ip:192.0.2.1", "edr-ip:192.0.2.1"])
def test_any_address_key_locks_at_the_address_limit(shell, clock, key):
    # An office behind one NAT address: the account limit (5) must not lock it out.
    for n in range(1, 9):
        events = shell.record_failure_keys([key], "192.0.2.1", S)
        assert (events == []) is (n < 8)
        clock.advance(10)
    assert [(e.key, e.failures) for e in events] == [(key, 8)]
    assert shell.check_keys([key], S).reason == "locked"


@pytest.fixture
def shell(engine, clock):
    return Throttle(engine, clock)


def test_account_lockout_and_reset(shell, clock):
    for n in range(1, 6):
        assert shell.check("tanaka", f"198.51.100.{n}", S).allowed
        events = shell.record_failure("tanaka", f"198.51.100.{n}", S)
        clock.advance(10)  # past any back-off
        if n < 5:
            assert events == []
    assert [e.key for e in events] == ["account:tanaka"]
    assert events[0].failures == 5
    verdict = shell.check("TANAKA", "203.0.113.9", S)  # any address, any case
    assert not verdict.allowed and verdict.reason == "locked"
    clock.advance(900)
    assert shell.check("tanaka", "203.0.113.9", S).allowed
    shell.record_failure("tanaka", "203.0.113.9", S)
    shell.reset_account("tanaka")
    assert shell.state("account:tanaka").failures == 0


def test_ip_lockout_across_accounts(shell, clock):
    for n in range(8):
        assert shell.check(f"user{n}", "192.0.2.7", S).allowed
        events = shell.record_failure(f"user{n}", "192.0.2.7", S)
        clock.advance(10)
    assert [e.key for e in events] == ["ip:192.0.2.7"]
    verdict = shell.check("someone-new", "192.0.2.7", S)
    assert not verdict.allowed and verdict.reason == "locked"
    assert shell.check("someone-new", "192.0.2.8", S).allowed


def test_backoff_through_storage(shell, clock):
    shell.record_failure("sato", "192.0.2.1", S)
    shell.record_failure("sato", "192.0.2.2", S)
    verdict = shell.check("sato", "192.0.2.3", S)
    assert not verdict.allowed and verdict.reason == "backoff" and verdict.retry_after == 2
    clock.advance(2)
    assert shell.check("sato", "192.0.2.3", S).allowed
