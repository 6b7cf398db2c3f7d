"""KeyRing: the assertion signing key in use and the public keys upstreams may verify with.

Loaded from storage (`storage.keys`); the first start generates an ES256 key. `rotate()`
makes a new active key and keeps the older ones published until their retirement time, so
tokens signed a moment before a rotation still verify. Workers call `reload()` now and then
(the gateway does it in the background) to pick up a rotation made by `sekisho keys rotate`.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc.jwk import ECKey

from sekisho.errors import StorageError
from sekisho.storage.keys import SigningKeyRepository, StoredKey

DEFAULT_RETIRE_AFTER = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class ActiveKey:
    kid: str
    key: ECKey


def new_key(now: datetime) -> tuple[StoredKey, ECKey]:
    kid = now.strftime("%Y%m%d") + "-" + secrets.token_hex(6)
    key = ECKey.generate_key("P-256", parameters={"kid": kid}, private=True)
    public = public_jwk(key, kid)
    pem = key.as_pem(private=True).decode("ascii")
    return StoredKey(kid, "ES256", pem, json.dumps(public, sort_keys=True), now, None), key


def public_jwk(key: ECKey, kid: str) -> dict[str, Any]:
    data = dict(key.as_dict(private=False))
    data.pop("d", None)  # belt and braces: a JWKS never carries the private scalar
    data.update(kid=kid, use="sig", alg="ES256")
    return data


class KeyRing:
    """The signing key and the published JWKS; thread-safe swap on reload."""

    def __init__(self, repository: SigningKeyRepository, clock: Any = None) -> None:
        self._repository = repository
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._active: ActiveKey | None = None
        self._jwks: bytes = b'{"keys":[]}'
        self._published: list[dict[str, Any]] = []

    @property
    def active(self) -> ActiveKey:
        if self._active is None:
            raise StorageError("no signing key loaded", code="keys-unavailable")
        return self._active

    @property
    def jwks_json(self) -> bytes:
        return self._jwks

    @property
    def published(self) -> list[dict[str, Any]]:
        return list(self._published)

    def ensure(self) -> None:
        """Load the keys; generate the first one when the table is empty."""
        if not self._active_rows(self._repository.all()):
            stored, _ = new_key(self._clock())
            self._repository.add(stored, retire_others_after=None, now=self._clock())
        self.reload()

    def _active_rows(self, rows: list[StoredKey]) -> list[StoredKey]:
        return [r for r in rows if r.retired_at is None]

    def reload(self) -> None:
        now = self._clock()
        rows = self._repository.all()
        active_rows = self._active_rows(rows)
        if not active_rows:
            raise StorageError("no active signing key; run `sekisho keys rotate`",
                               code="keys-unavailable")
        newest = active_rows[0]
        if self._active is not None and self._active.kid == newest.kid:
            key = self._active.key
        else:
            key = ECKey.import_key(newest.private_pem, {"kid": newest.kid})
        published = [
            json.loads(r.public_jwk) for r in rows
            if r.retired_at is None or r.retired_at > now
        ]
        for item in published:
            item.pop("d", None)
        jwks = json.dumps({"keys": published}, sort_keys=True, separators=(",", ":"))
        with self._lock:
            self._active = ActiveKey(newest.kid, key)
            self._published = published
            self._jwks = jwks.encode("ascii")

    def rotate(self, retire_after: timedelta = DEFAULT_RETIRE_AFTER) -> str:
        """Create a new active key; the others stay published for `retire_after`."""
        now = self._clock()
        stored, _ = new_key(now)
        self._repository.add(stored, retire_others_after=retire_after, now=now)
        self.reload()
        return stored.kid
