"""The pure TOTP core: RFC 6238 Appendix B vectors, the ±1 step window, code normalising."""

from __future__ import annotations

import pytest

from sekisho.identity import totp
from sekisho.identity.totp import TotpParams

# RFC 6238 Appendix B: the seed is the ASCII string repeated to the hash's block length.
SEEDS = {
    "SHA1": b"12345678901234567890",
    "SHA256": b"12345678901234567890123456789012",
    "SHA512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
VECTORS = [
    (59, "SHA1", "94287082"), (59, "SHA256", "46119246"), (59, "SHA512", "90693936"),
    (1111111109, "SHA1", "07081804"), (1111111109, "SHA256", "68084774"),
    (1111111109, "SHA512", "25091201"),
    (1111111111, "SHA1", "14050471"), (1111111111, "SHA256", "67062674"),
    (1111111111, "SHA512", "99943326"),
    (1234567890, "SHA1", "89005924"), (1234567890, "SHA256", "91819424"),
    (1234567890, "SHA512", "93441116"),
    (2000000000, "SHA1", "69279037"), (2000000000, "SHA256", "90698825"),
    (2000000000, "SHA512", "38618901"),
    (20000000000, "SHA1", "65353130"), (20000000000, "SHA256", "77737706"),
    (20000000000, "SHA512", "47863826"),
]


@pytest.mark.parametrize(("t", "algorithm", "expected"), VECTORS)
def test_rfc6238_appendix_b(t: int, algorithm: totp.Algorithm, expected: str) -> None:
    params = TotpParams(algorithm=algorithm, digits=8)
    assert totp.totp(SEEDS[algorithm], t, params) == expected
    assert totp.verify(SEEDS[algorithm], expected, t, params) == t // 30


def test_window_is_one_step_either_side() -> None:
    secret = SEEDS["SHA1"]
    now = 1_700_000_000.0
    step = totp.step_of(now)
    for offset in (-1, 0, 1):
        code = totp.hotp(secret, step + offset)
        assert totp.verify(secret, code, now) == step + offset
    for offset in (-3, -2, 2, 3):
        code = totp.hotp(secret, step + offset)
        if code not in {totp.hotp(secret, step + d) for d in (-1, 0, 1)}:
            assert totp.verify(secret, code, now) is None


@pytest.mark.parametrize("typed", ["123 456", "123-456", "１２３４５６"])
def test_people_may_type_spaces_and_full_width_digits(typed: str) -> None:
    assert totp.normalise(typed) == "123456"


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "12345a", "١٢٣٤٥٦", "12345\n"])
def test_malformed_codes_never_match(bad: str) -> None:
    assert totp.verify(SEEDS["SHA1"], bad, 59) is None


def test_provisioning_uri_carries_the_parameters() -> None:
    uri = totp.provisioning_uri(b"\x00" * 20, "tanaka", "City Hall")
    assert uri.startswith("otpauth://totp/City%20Hall%3Atanaka?secret=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert "issuer=City%20Hall" in uri and "period=30" in uri and "digits=6" in uri
