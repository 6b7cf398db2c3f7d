"""Pages, TLS material and the runtime snapshot."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path

import pytest

from sekisho.config.model import Config, Route
from sekisho.errors import ConfigError
from sekisho.gateway.pages import error_page, prefers_english
from sekisho.gateway.tls import self_signed, server_context
from sekisho.runtime import build_runtime


@pytest.mark.parametrize(("language", "cookie", "english"), [
    ("", "", False), ("ja,en;q=0.8", "", False), ("en-US,en;q=0.9,ja;q=0.5", "", True),
    ("ja;q=0.4, en;q=0.9", "", True), ("en", "sekisho_lang=ja", False),
    ("ja", "a=1; sekisho_lang=en", True),
])
def test_language_choice(language: str, cookie: str, english: bool) -> None:
    assert prefers_english(language, cookie) is english


@pytest.mark.parametrize("status", [400, 403, 404, 413, 414, 431, 502, 503, 504])
def test_pages_japanese_first_and_json(status: int) -> None:
    page = error_page(status, reasons=("default-deny",) if status == 403 else ())
    text = page.body.decode()
    assert page.status == status
    assert text.index('lang="ja"') < text.index('lang="en"')
    assert ("X-Content-Type-Options", "nosniff") in page.headers
    data = json.loads(error_page(status, as_json=True).body)
    assert data["status"] == status and data["message_ja"] and data["message_en"]


def test_self_signed_reused_and_private(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert self_signed(tmp_path) == (cert, key)
    first = Path(cert).read_bytes()
    self_signed(tmp_path)
    assert Path(cert).read_bytes() == first  # valid: not regenerated
    context = server_context(cert, key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(ConfigError):
        server_context(str(tmp_path / "missing.crt"), key)


def test_runtime_refuses_missing_policy() -> None:
    config = Config(source="t.yaml", routes=(
        Route(id="r", host="a.jp", path_prefix="/", to="http://u", policy="nope"),))
    with pytest.raises(ConfigError, match="nope"):
        build_runtime(config)
    ok = build_runtime(Config(source="t.yaml", routes=(
        Route(id="r", host="a.jp", path_prefix="/", to="http://u", policy="p"),),
        policies={"p": {"allow": {"and": [{"always": True}]}}}))
    assert ok.routes.match("a.jp", "/x") is not None and "p" in ok.policies


def test_a_failed_exchange_nobody_awaits_logs_nothing_and_an_awaiter_still_raises(
        caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import gc

    from sekisho.gateway.upstream import UpstreamError, _fail

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        abandoned: asyncio.Future[None] = loop.create_future()
        _fail(abandoned, UpstreamError("upstream closed mid-response", started=True))
        del abandoned  # the client left first: nobody will await it
        gc.collect()
        awaited: asyncio.Future[None] = loop.create_future()
        loop.call_soon(_fail, awaited, UpstreamError("upstream read timeout", timeout=True))
        with pytest.raises(UpstreamError, match="timeout"):
            await awaited

    with caplog.at_level("ERROR", logger="asyncio"):
        asyncio.run(scenario())
    assert "never retrieved" not in caplog.text


def test_origins_of_two_snapshots_share_one_pool_entry() -> None:
    """A reload builds new Origin objects; equal ones must find the same idle connections
    (the hash is computed once, from every field the equality compares)."""
    from sekisho.gateway.upstream import parse_origin

    first, again = parse_origin("http://127.0.0.1:8080/app/"), parse_origin("http://127.0.0.1:8080/app")
    assert first == again and hash(first) == hash(again)
    assert {first: "idle"}[again] == "idle"
    others = ["http://127.0.0.1:8081/app", "https://127.0.0.1:8080/app", "http://127.0.0.2:8080/app",
              "http://127.0.0.1:8080/other", "connector:dc1/127.0.0.1:8080"]
    assert all(parse_origin(url) not in {first} for url in others)
