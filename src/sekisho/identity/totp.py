"""TOTP (RFC 6238) as a pure function of a key and a time: no clock, no storage, no I/O.

HOTP(K, C) = Truncate(HMAC(K, C)) mod 10^digits (RFC 4226); TOTP uses C = floor(t / period).
`verify` accepts the current step and one step either side (clock drift of up to one
period) and returns *which* step matched, so the caller can refuse any step not greater than
the last accepted one (replay: a code seen by a shoulder-surfer or a phishing proxy is dead
once used). Codes are compared in constant time over the whole window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlencode

Algorithm = Literal["SHA1", "SHA256", "SHA512"]
_DIGESTS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}
SECRET_BYTES = 20  # 160 bits, the RFC 4226 recommendation for HMAC-SHA1


@dataclass(frozen=True, slots=True)
class TotpParams:
    algorithm: Algorithm = "SHA1"  # what every authenticator app supports
    digits: int = 6
    period: int = 30
    window: int = 1  # steps accepted either side of the current one


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def b32(secret: bytes) -> str:
    """Base32 without padding, as authenticator apps expect it for manual entry."""
    return base64.b32encode(secret).decode("ascii").rstrip("=")


def step_of(unix_time: float, params: TotpParams = TotpParams()) -> int:
    return int(unix_time // params.period)


def hotp(secret: bytes, counter: int, params: TotpParams = TotpParams()) -> str:
    mac = hmac.new(secret, struct.pack(">Q", counter), _DIGESTS[params.algorithm]).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** params.digits).zfill(params.digits)


def totp(secret: bytes, unix_time: float, params: TotpParams = TotpParams()) -> str:
    return hotp(secret, step_of(unix_time, params), params)


def normalise(code: str) -> str:
    """Digits only: people type spaces or hyphens ("123 456"); full-width digits are folded."""
    folded = code.translate({0xFF10 + i: 0x30 + i for i in range(10)})
    return "".join(ch for ch in folded if ch not in " -\u3000\t")


def verify(secret: bytes, code: str, unix_time: float,
           params: TotpParams = TotpParams()) -> int | None:
    """The matched time step, or None. The caller enforces step > last accepted step."""
    candidate = normalise(code)
    if len(candidate) != params.digits or not candidate.isascii() or not candidate.isdigit():
        return None
    now = step_of(unix_time, params)
    matched: int | None = None
    for step in range(now - params.window, now + params.window + 1):
        if step < 0:
            continue
        # Every candidate is computed and compared (no early exit): timing says nothing.
        if hmac.compare_digest(hotp(secret, step, params).encode(), candidate.encode()):
            matched = step if matched is None else max(matched, step)
    return matched


def provisioning_uri(secret: bytes, account: str, issuer: str,
                     params: TotpParams = TotpParams()) -> str:
    """The `otpauth://totp/...` URI that QR codes carry (Key Uri Format)."""
    label = quote(f"{issuer}:{account}", safe="@")
    query = {"secret": b32(secret), "issuer": issuer, "algorithm": params.algorithm,
             "digits": str(params.digits), "period": str(params.period)}
    return f"otpauth://totp/{label}?{urlencode(query, quote_via=quote)}"
