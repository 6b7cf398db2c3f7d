"""Back-Channel Logout 1.0 §2.6 checks at the real endpoint, with logout tokens signed by the
fake IdP's key: what ends a session, and what is refused (and ends nothing)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from oidc_stack import Browser, Stack

from sekisho.audit.events import BackchannelLogout, OidcRejected

EVENT = {"http://schemas.openid.net/event/backchannel-logout": {}}


def _logout_claims(stack: Stack, **change: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": stack.fake.issuer, "aud": "sekisho-fake", "iat": now, "exp": now + 120,
              "jti": uuid.uuid4().hex, "events": EVENT, "sid": stack.fake.last_sid}
    claims.update(change)
    return {k: v for k, v in claims.items() if v is not None}


def _post(stack: Stack, token: str) -> httpx.Response:
    return httpx.post(stack.origin + "/.sekisho/oidc/backchannel-logout",
                      data={"logout_token": token}, timeout=10)


def _typ(stack: Stack, claims: dict[str, Any]) -> str:
    return stack.fake.sign(claims, header={"alg": "RS256", "kid": "fake-1",
                                           "typ": "logout+jwt"})


@pytest.fixture
def signed_in(oidc: Stack, browser: Browser) -> tuple[Stack, str]:
    assert browser.sign_in("fake").status_code == 303
    token = browser.client.cookies.get("__Host-sekisho")
    assert oidc.sessions.lookup_sync(token) is not None
    return oidc, token


@pytest.mark.parametrize(("reason", "change"), [
    ("wrong-audience", {"aud": "someone-else"}),
    ("wrong-issuer", {"iss": "https://evil.example"}),
    ("events-invalid", {"events": None}),
    ("events-invalid", {"events": {"http://example/other": {}}}),
    ("nonce-present", {"nonce": "n"}),
    ("claim-missing", {"jti": None}),
    ("claim-missing", {"sid": None}),
    # Times as offsets from the moment the test runs (not from collection, minutes earlier).
    ("too-old", {"iat": -86400}),
    ("expired", {"exp": -600, "iat": -650}),
])
def test_invalid_logout_token_is_refused_and_ends_nothing(signed_in, reason, change):
    stack, token = signed_in
    now = int(time.time())
    change = {k: now + v if k in ("iat", "exp") else v for k, v in change.items()}
    response = _post(stack, _typ(stack, _logout_claims(stack, **change)))
    assert response.status_code == 400
    assert stack.sessions.lookup_sync(token) is not None
    assert [e.reason for e in stack.audit.of(OidcRejected)] == [reason]


def test_id_token_replayed_as_logout_token_is_refused(signed_in):
    stack, token = signed_in
    id_token = stack.fake.sign(stack.fake.claims("some-nonce"))  # a real ID token's shape
    assert _post(stack, id_token).status_code == 400
    claims = _logout_claims(stack)
    wrong = stack.fake.sign(claims, header={"alg": "RS256", "kid": "fake-1", "typ": "JWT+x"})
    assert _post(stack, wrong).status_code == 400
    assert stack.sessions.lookup_sync(token) is not None


def test_valid_logout_token_by_sid_ends_the_session_and_jti_is_single_use(signed_in):
    stack, token = signed_in
    logout = _typ(stack, _logout_claims(stack))
    response = _post(stack, logout)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert stack.sessions.lookup_sync(token) is None
    event = stack.audit.of(BackchannelLogout)[0]
    assert (event.idp, event.sessions, event.user) == ("fake", 1, "kato@city.example.jp")
    assert _post(stack, logout).status_code == 400  # the same jti again
    assert stack.audit.of(OidcRejected)[-1].reason == "jti-replay"


def test_valid_logout_token_by_sub_ends_every_session_of_that_user(oidc, signed_in):
    stack, token = signed_in
    second = Browser(stack)
    try:
        assert second.sign_in("fake").status_code == 303
        other = second.client.cookies.get("__Host-sekisho")
        claims = _logout_claims(stack, sid=None, sub="fake-sub-1")
        assert _post(stack, _typ(stack, claims)).status_code == 200
        assert stack.sessions.lookup_sync(token) is None
        assert stack.sessions.lookup_sync(other) is None
        assert stack.audit.of(BackchannelLogout)[0].sessions >= 2  # every live one of sub
    finally:
        second.close()


def test_get_and_garbage_are_refused(oidc):
    assert httpx.get(oidc.origin + "/.sekisho/oidc/backchannel-logout").status_code == 405
    assert _post(oidc, "x.y.z").status_code == 400
