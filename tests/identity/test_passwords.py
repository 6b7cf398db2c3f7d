"""argon2id hashing, rehash on parameter change, and equal work for unknown users."""

from __future__ import annotations

import statistics
import time

import pytest

from sekisho.identity.passwords import PasswordHasher


def test_hash_is_argon2id_with_rfc9106_parameters():
    hasher = PasswordHasher()
    stored = hasher.hash("correct horse battery")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert hasher.verify(stored, "correct horse battery")
    assert not hasher.verify(stored, "correct horse batterY")
    assert not hasher.needs_rehash(stored)


def test_nfkc_full_width_digits_verify(fast_hasher):
    stored = fast_hasher.hash("passphrase-1234")
    assert fast_hasher.verify(stored, "passphrase-１２３４")


def test_unknown_user_and_broken_hash_never_verify(fast_hasher):
    assert not fast_hasher.verify(None, "anything at all")
    assert not fast_hasher.verify("", "anything at all")
    assert not fast_hasher.verify("not-a-hash", "anything at all")
    # The dummy hash itself is not a password anybody knows.
    assert not fast_hasher.verify(fast_hasher.dummy_hash(), "")


def test_rehash_when_parameters_change(fast_hasher):
    old = fast_hasher.hash("passphrase-1234")
    assert PasswordHasher().needs_rehash(old)
    assert fast_hasher.needs_rehash("garbage")


@pytest.mark.slow
def test_unknown_user_costs_like_wrong_password():
    """User enumeration by timing: the medians must be within 30 % of each other."""
    hasher = PasswordHasher()
    stored = hasher.hash("the real password")
    hasher.dummy_hash()  # warm up: made once per process, not per request

    def timed(target):
        start = time.perf_counter()
        hasher.verify(target, "a wrong password")
        return time.perf_counter() - start

    unknown, wrong = [], []
    for _ in range(7):
        unknown.append(timed(None))
        wrong.append(timed(stored))
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.7 < ratio < 1.3, (unknown, wrong)
