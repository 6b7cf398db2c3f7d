"""KeyRing over the real signing_keys table (SQLite and PostgreSQL), the CLI, assertions."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import Engine

from sekisho.cli import main
from sekisho.config.model import AssertionSettings
from sekisho.gateway.assertion import AssertionSigner, claims
from sekisho.gateway.keys import KeyRing
from sekisho.storage.keys import SigningKeyRepository

from .servers import DictSessions


def test_first_start_generates_one_key(engine: Engine) -> None:
    ring = KeyRing(SigningKeyRepository(engine))
    ring.ensure()
    again = KeyRing(SigningKeyRepository(engine))
    again.ensure()
    assert ring.active.kid == again.active.kid
    assert len(SigningKeyRepository(engine).all()) == 1
    jwks = json.loads(ring.jwks_json)
    assert [k["kid"] for k in jwks["keys"]] == [ring.active.kid]
    assert all("d" not in k and k["alg"] == "ES256" for k in jwks["keys"])


def test_rotate_keeps_old_key_published_until_retired(engine: Engine) -> None:
    now = [datetime(2025, 4, 1, tzinfo=UTC)]
    ring = KeyRing(SigningKeyRepository(engine), clock=lambda: now[0])
    ring.ensure()
    first = ring.active.kid
    second = ring.rotate(timedelta(hours=1))
    assert ring.active.kid == second != first
    assert {k["kid"] for k in ring.published} == {first, second}
    now[0] += timedelta(hours=2)
    ring.reload()
    assert {k["kid"] for k in ring.published} == {second}


def test_cli_rotate_and_list(engine: Engine, database_url: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    KeyRing(SigningKeyRepository(engine)).ensure()
    assert main(["keys", "rotate", "--database-url", database_url]) == 0
    assert main(["keys", "list", "--database-url", database_url]) == 0
    out = capsys.readouterr().out
    assert "active" in out and "published" in out


def test_assertion_cache_and_claims(engine: Engine) -> None:
    ring = KeyRing(SigningKeyRepository(engine))
    ring.ensure()
    session = DictSessions().add("t", "alice", {"b", "a"})
    settings = AssertionSettings(issuer="https://sekisho.city.example.jp", lifetime=600)
    body = claims(settings, "app", session, 1000.0, jti="j")
    assert body["exp"] - body["iat"] == 60  # capped whatever the config says
    assert body["groups"] == ["a", "b"] and body["sid"] == session.short_id
    clock = [1000.0]
    signer = AssertionSigner(ring, lambda: clock[0])
    first = signer.token(settings, "app", session)
    assert signer.token(settings, "app", session) == first
    assert signer.token(settings, "other", session) != first
    clock[0] += 31  # past half of the lifetime: a fresh token
    assert signer.token(settings, "app", session) != first
    decoded = jwt.decode(first, KeySet.import_key_set(json.loads(ring.jwks_json)),
                         algorithms=["ES256"])
    assert decoded.claims["aud"] == "app" and decoded.header["kid"] == ring.active.kid


def test_sign_and_cache_cost(engine: Engine) -> None:
    """Measured, printed with -s; a loose bound keeps the test meaningful on a busy box."""
    ring = KeyRing(SigningKeyRepository(engine))
    ring.ensure()
    settings = AssertionSettings()
    sessions = DictSessions()
    infos = [sessions.add(f"t{i}", f"u{i}", {"g"}) for i in range(500)]
    signer = AssertionSigner(ring, time.time)
    started = time.perf_counter()
    for info in infos:
        signer.token(settings, "app", info)
    sign = (time.perf_counter() - started) / len(infos)
    started = time.perf_counter()
    for _ in range(10):
        for info in infos:
            signer.token(settings, "app", info)
    hit = (time.perf_counter() - started) / (10 * len(infos))
    print(f"assertion sign {sign * 1e6:.1f} µs, cache hit {hit * 1e6:.2f} µs")
    assert hit < sign / 5
