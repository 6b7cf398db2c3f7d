"""A software WebAuthn authenticator (ECDSA P-256, attestation "none"), for tests and bench.

It builds the real byte structures a browser and an authenticator would send: client data
JSON, authenticator data with flags and counter, a CBOR attestation object with a COSE key,
and an ECDSA signature over authenticatorData ‖ SHA-256(clientDataJSON). Nothing is mocked:
the `webauthn` package verifies these exactly as it verifies a real device's answers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SoftKey:
    """One credential on one authenticator; `counter` is its signature counter."""

    def __init__(self, origin: str, *, uv: bool = True, counter: int = 0,
                 backed_up: bool = False) -> None:
        self.origin, self.uv, self.counter, self.backed_up = origin, uv, counter, backed_up
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(32)
        self.user_handle: bytes | None = None
        self.rp_id = ""

    def _flags(self, extra: int = 0) -> int:
        flags = UP | extra | (UV if self.uv else 0)
        return flags | (BE | BS if self.backed_up else 0)

    def _cose(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"),
                            -3: numbers.y.to_bytes(32, "big")})

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge,
                           "origin": origin or self.origin, "crossOrigin": False},
                          separators=(",", ":")).encode()

    def create(self, options: str | dict[str, Any], *, origin: str | None = None
               ) -> dict[str, Any]:
        """navigator.credentials.create(): the registration JSON for these options."""
        opts = json.loads(options) if isinstance(options, str) else options
        self.rp_id = opts["rp"]["id"]
        self.user_handle = unb64url(opts["user"]["id"])
        attested = (b"\x00" * 16 + struct.pack(">H", len(self.credential_id))
                    + self.credential_id + self._cose())
        auth_data = (hashlib.sha256(self.rp_id.encode()).digest()
                     + bytes([self._flags(AT)]) + struct.pack(">I", self.counter) + attested)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client = self._client_data("webauthn.create", opts["challenge"], origin)
        return {"id": b64url(self.credential_id), "rawId": b64url(self.credential_id),
                "type": "public-key", "clientExtensionResults": {},
                "response": {"clientDataJSON": b64url(client),
                             "attestationObject": b64url(attestation),
                             "transports": ["internal"]}}

    def get(self, options: str | dict[str, Any], *, origin: str | None = None,
            counter: int | None = None, user_handle: bytes | None = None,
            rp_id: str | None = None) -> dict[str, Any]:
        """navigator.credentials.get(): an assertion; the counter grows by one unless given."""
        opts = json.loads(options) if isinstance(options, str) else options
        self.counter = self.counter + 1 if counter is None else counter
        rp = rp_id or opts.get("rpId") or self.rp_id
        auth_data = (hashlib.sha256(rp.encode()).digest() + bytes([self._flags()])
                     + struct.pack(">I", self.counter))
        client = self._client_data("webauthn.get", opts["challenge"], origin)
        signature = self.key.sign(auth_data + hashlib.sha256(client).digest(),
                                  ec.ECDSA(hashes.SHA256()))
        handle = user_handle if user_handle is not None else self.user_handle
        return {"id": b64url(self.credential_id), "rawId": b64url(self.credential_id),
                "type": "public-key", "clientExtensionResults": {},
                "response": {"clientDataJSON": b64url(client),
                             "authenticatorData": b64url(auth_data),
                             "signature": b64url(signature),
                             "userHandle": b64url(handle) if handle else None}}
