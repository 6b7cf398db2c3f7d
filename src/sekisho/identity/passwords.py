"""Password hashing with argon2id, and equal work for accounts that do not exist.

Parameters are class attributes (RFC 9106 §4 "second recommended option": t=3, m=64 MiB,
p=4), so a stored hash made with older parameters is recognised and re-hashed at the next
successful sign-in. Passwords are NFKC-normalised before hashing, so the full-width digits a
Japanese IME may produce verify the same as half-width ones.

`verify(None, password)` checks against a dummy hash made with the same parameters: an
unknown user costs as much time as a wrong password, so response timing does not tell an
attacker which user names exist (user enumeration).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import unicodedata
from typing import ClassVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# One dummy hash per parameter set, made on first use (not at import: the CLI should not pay).
_DUMMY_HASHES: dict[tuple[int, int, int, int, int], str] = {}
_DUMMY_LOCK = threading.Lock()


def normalise_password(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


class PasswordHasher:
    """argon2id hashing; subclass and change the attributes to move to new parameters."""

    time_cost: ClassVar[int] = 3
    memory_cost: ClassVar[int] = 64 * 1024  # KiB
    parallelism: ClassVar[int] = 4
    hash_len: ClassVar[int] = 32
    salt_len: ClassVar[int] = 16

    def __init__(self) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=self.time_cost, memory_cost=self.memory_cost,
            parallelism=self.parallelism, hash_len=self.hash_len, salt_len=self.salt_len,
            type=argon2.Type.ID,
        )

    @property
    def _params(self) -> tuple[int, int, int, int, int]:
        return (self.time_cost, self.memory_cost, self.parallelism, self.hash_len,
                self.salt_len)

    def hash(self, password: str) -> str:
        return self._hasher.hash(normalise_password(password))

    def dummy_hash(self) -> str:
        with _DUMMY_LOCK:
            dummy = _DUMMY_HASHES.get(self._params)
            if dummy is None:
                dummy = self._hasher.hash(secrets.token_urlsafe(24))
                _DUMMY_HASHES[self._params] = dummy
        return dummy

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True only for a matching hash. `None` (no such user / no password) does the same
        work against the dummy hash and returns False."""
        target = stored_hash if stored_hash else self.dummy_hash()
        try:
            ok = self._hasher.verify(target, normalise_password(password))
        except (VerifyMismatchError, VerificationError):
            return False
        except InvalidHashError:
            # A corrupt stored hash must not be cheaper than a real one (timing) nor pass.
            with contextlib.suppress(VerifyMismatchError, VerificationError):
                self._hasher.verify(self.dummy_hash(), normalise_password(password))
            return False
        return bool(ok) and stored_hash is not None and stored_hash != ""

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True
