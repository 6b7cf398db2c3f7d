"""Sekisho's own second factor: TOTP factors and recovery codes, over the storage rows.

Secrets at rest: a TOTP key is encrypted with AES-256-GCM under a key derived (HKDF-SHA256)
from the installation secret "mfa"; the user id is the associated data, so a ciphertext
copied onto another user's row does not decrypt (row swapping). A database dump alone does
not reveal TOTP keys if the installation secret is kept elsewhere (see docs/mfa.md).

Recovery codes are 80 random bits (16 base32 characters). They are stored as
HMAC-SHA256(key, user id | code) rather than argon2id: a slow hash protects *guessable*
secrets such as passwords; against 80 random bits a brute force is hopeless even at GPU
speed (2^80 HMACs), so the cost would only slow down every sign-in that uses one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Engine

from sekisho.identity import totp
from sekisho.storage import factors as store

RECOVERY_CODES = 10
_RECOVERY_BYTES = 10  # 80 bits → 16 base32 characters
_CIPHER_PREFIX = "v1."


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def normalise_recovery(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isascii() and ch.isalnum())[:32]


def format_recovery(raw: str) -> str:
    return "-".join(raw[i:i + 4] for i in range(0, len(raw), 4))


class TotpFactors:
    """Enrol and verify TOTP, issue and redeem recovery codes. Synchronous (use a thread)."""

    params = totp.TotpParams()

    def __init__(self, engine: Engine, installation_secret: bytes,
                 clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._aead = AESGCM(_derive(installation_secret, b"sekisho totp secret v1"))
        self._recovery_key = _derive(installation_secret, b"sekisho recovery code v1")
        self._clock = clock

    # -- secrets at rest --------------------------------------------------------------------

    def _seal(self, user_id: int, secret: bytes) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, secret, f"totp|{user_id}".encode())
        return _CIPHER_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def _open(self, user_id: int, stored: str) -> bytes | None:
        if not stored.startswith(_CIPHER_PREFIX):
            return None
        try:
            blob = base64.urlsafe_b64decode(stored[len(_CIPHER_PREFIX):].encode("ascii"))
            return self._aead.decrypt(blob[:12], blob[12:], f"totp|{user_id}".encode())
        except (InvalidTag, ValueError):
            return None  # tampered or moved row: treat as no factor (fail closed)

    # -- TOTP -------------------------------------------------------------------------------

    def enrolled(self, engine: Engine, user_id: int) -> bool:
        return store.has_factor(engine, user_id, "totp")

    def start_enrolment(self, user_id: int, name: str = "") -> tuple[int, bytes]:
        secret = totp.new_secret()
        factor_id = store.add_factor(
            self._engine, user_id=user_id, kind="totp", name=name or "TOTP",
            secret=self._seal(user_id, secret),
            data={"algorithm": self.params.algorithm, "digits": self.params.digits,
                  "period": self.params.period},
            now=self._clock())
        return factor_id, secret

    def pending_secret(self, user_id: int, factor_id: int) -> bytes | None:
        record = store.get_factor(self._engine, factor_id)
        if record is None or record.user_id != user_id or record.confirmed:
            return None
        return self._open(user_id, record.secret)

    def confirm(self, user_id: int, factor_id: int, code: str) -> bool:
        """Confirm an enrolment; its code's step is recorded, so it cannot sign in later."""
        secret = self.pending_secret(user_id, factor_id)
        if secret is None:
            return False
        now = self._clock()
        step = totp.verify(secret, code, now.timestamp(), self.params)
        if step is None:
            return False
        return store.accept_step(self._engine, factor_id, step, now, confirm=True)

    def verify(self, user_id: int, code: str) -> bool:
        """True once per code: the matched step must be newer than the last accepted one."""
        now = self._clock()
        for record in store.list_factors(self._engine, user_id, "totp"):
            secret = self._open(user_id, record.secret)
            if secret is None:
                continue
            step = totp.verify(secret, code, now.timestamp(), self.params)
            if step is not None and store.accept_step(self._engine, record.id, step, now):
                return True
        return False

    def remove_totp(self, user_id: int) -> list[int]:
        """Remove every TOTP factor of the user (unconfirmed ones too); their ids."""
        records = [*store.list_factors(self._engine, user_id, "totp"),
                   *store.list_factors(self._engine, user_id, "totp", confirmed=False)]
        return [r.id for r in records if store.delete_factor(self._engine, user_id, r.id)]

    # -- recovery codes ---------------------------------------------------------------------

    def _hash(self, user_id: int, code: str) -> str:
        message = f"{user_id}|{normalise_recovery(code)}".encode()
        return hmac.new(self._recovery_key, message, hashlib.sha256).hexdigest()

    def new_recovery_codes(self, user_id: int) -> list[str]:
        """Ten fresh codes (shown once); all previous codes stop working."""
        codes = [base64.b32encode(secrets.token_bytes(_RECOVERY_BYTES)).decode().lower()
                 for _ in range(RECOVERY_CODES)]
        store.replace_recovery_codes(self._engine, user_id,
                                     [self._hash(user_id, c) for c in codes], self._clock())
        return [format_recovery(c) for c in codes]

    def use_recovery_code(self, user_id: int, code: str) -> tuple[bool, int]:
        """(accepted, codes left). A code works exactly once."""
        if len(normalise_recovery(code)) != 16:
            return False, store.unused_recovery_codes(self._engine, user_id)
        ok = store.use_recovery_code(self._engine, user_id, self._hash(user_id, code),
                                     self._clock())
        return ok, store.unused_recovery_codes(self._engine, user_id)

    def clear_recovery_codes(self, user_id: int) -> None:
        """No codes at all (the last factor is gone: a code would lead nowhere)."""
        store.replace_recovery_codes(self._engine, user_id, [], self._clock())

    def unused_recovery_codes(self, user_id: int) -> int:
        return store.unused_recovery_codes(self._engine, user_id)

    def has_recovery_codes(self, user_id: int) -> bool:
        return store.unused_recovery_codes(self._engine, user_id) > 0
