"""Token-level attacks through the real gateway and handlers, served by the misbehaving IdP:
wrong aud / iss / azp, expired, future iat, bad signature, alg none, HS256 key confusion,
wrong nonce, nonce replay, logout token as ID token, unknown key id (rate-limited refetch)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from joserfc.jwk import RSAKey
from oidc_stack import Browser, Stack

from sekisho.audit.events import OidcRejected, SignInSucceeded


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
def fake(oidc: Stack) -> Iterator[Stack]:
    yield oidc
    oidc.fake.mint = oidc.fake.sign
    oidc.fake.published = [oidc.fake.key]


def _attempt(stack: Stack, browser: Browser, mint: Callable[[dict[str, Any]], str]) -> Any:
    stack.fake.mint = mint
    return browser.sign_in("fake")


def _claims(change: dict[str, Any]) -> Callable[[Stack], Callable[[dict[str, Any]], str]]:
    """Claims overridden at signing time; integer values of time claims are offsets from
    that moment (not from collection: a long suite would age them past `too-old`)."""
    def build(stack: Stack) -> Callable[[dict[str, Any]], str]:
        def sign(claims: dict[str, Any]) -> str:
            now = int(time.time())
            timed = {k: now + v if k in ("exp", "iat") else v for k, v in change.items()}
            return stack.fake.sign({**claims, **timed})
        return sign
    return build


def _forged_signature(stack: Stack) -> Callable[[dict[str, Any]], str]:
    other = RSAKey.generate_key(2048, parameters={"kid": "fake-1"})  # same kid, other key
    return lambda claims: stack.fake.sign(claims, key=other)


def _alg_none(stack: Stack) -> Callable[[dict[str, Any]], str]:
    return lambda claims: f"{_b64({'alg': 'none', 'kid': 'fake-1'})}.{_b64(claims)}."


def _hs256_confusion(stack: Stack) -> Callable[[dict[str, Any]], str]:
    # The IdP's *public* key used as an HMAC secret: anyone can compute this signature.
    # (joserfc itself refuses to build such a key, so the attacker's HMAC is made by hand.)
    public_pem = stack.fake.key.as_pem(private=False)

    def mint(claims: dict[str, Any]) -> str:
        signing_input = f"{_b64({'alg': 'HS256', 'kid': 'fake-1'})}.{_b64(claims)}"
        mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    return mint


def _logout_type(stack: Stack) -> Callable[[dict[str, Any]], str]:
    return lambda claims: stack.fake.sign(
        claims, header={"alg": "RS256", "kid": "fake-1", "typ": "logout+jwt"})


def _garbage(stack: Stack) -> Callable[[dict[str, Any]], str]:
    return lambda claims: "not-a-jwt"


CASES = [
    ("wrong-audience", _claims({"aud": "another-client"})),
    ("wrong-audience", _claims({"aud": ["another-client"]})),
    ("wrong-azp", _claims({"aud": ["sekisho-fake", "another-client"]})),
    ("wrong-azp", _claims({"azp": "another-client"})),
    ("wrong-issuer", _claims({"iss": "https://evil.example"})),
    ("expired", _claims({"exp": -120, "iat": -400})),
    ("issued-in-future", _claims({"iat": 3600, "exp": 7200})),
    ("too-old", _claims({"iat": -86400})),
    ("nonce-mismatch", _claims({"nonce": "someone-elses-nonce"})),
    ("claim-missing", _claims({"sub": ""})),
    ("bad-signature", _forged_signature),
    ("alg-not-allowed", _alg_none),
    ("alg-not-allowed", _hs256_confusion),
    ("wrong-type", _logout_type),
    ("token-malformed", _garbage),
]


@pytest.mark.parametrize(("reason", "mint"), CASES,
                         ids=[f"{r}-{i}" for i, (r, _) in enumerate(CASES)])
def test_bad_id_token_is_refused_and_signs_nobody_in(fake, browser, reason, mint):
    response = _attempt(fake, browser, mint(fake))
    assert response.status_code == 400, response.text
    assert "ID プロバイダー（IdP）からの応答を検証できなかった" in response.text
    assert browser.client.cookies.get("__Host-sekisho") is None
    assert not fake.audit.of(SignInSucceeded)
    assert [e.reason for e in fake.audit.of(OidcRejected)] == [reason]


def test_the_fake_idp_signs_in_when_it_behaves(fake, browser):
    response = browser.sign_in("fake")
    assert response.status_code == 303, response.text
    assert fake.sessions.lookup_sync(browser.client.cookies.get("__Host-sekisho")) is not None


def test_nonce_replay_is_refused(fake, browser):
    # Randomness is injected: make two authorization requests share one nonce. The first
    # token is accepted; the same nonce in a second, otherwise valid, sign-in is refused.
    calls = {"n": 0}

    def random(size: int) -> str:
        calls["n"] += 1
        import secrets
        return "fixed-nonce-0123456789abcdef" if calls["n"] % 3 == 2 else \
            secrets.token_urlsafe(size)

    fake.random = random
    assert browser.sign_in("fake").status_code == 303
    other = Browser(fake)
    try:
        response = other.sign_in("fake")
        assert response.status_code == 400
        assert other.client.cookies.get("__Host-sekisho") is None
        assert [e.reason for e in fake.audit.of(OidcRejected)] == ["nonce-replay"]
    finally:
        other.close()


def test_unknown_key_id_refetches_once_then_is_rate_limited(fake, browser):
    assert browser.sign_in("fake").status_code == 303  # JWKS fetched and cached
    before = fake.fake.jwks_fetches
    stranger = RSAKey.generate_key(2048, parameters={"kid": "never-published"})
    mint = lambda claims: fake.fake.sign(claims, key=stranger)  # noqa: E731
    first = _attempt(fake, Browser(fake), mint)
    assert first.status_code == 400
    assert fake.fake.jwks_fetches == before + 1  # refetched once for the new kid
    second = _attempt(fake, Browser(fake), mint)
    assert second.status_code == 400
    assert fake.fake.jwks_fetches == before + 1  # not again within the interval
    assert [e.reason for e in fake.audit.of(OidcRejected)] == ["key-unknown", "key-unknown"]
