"""The verification example in docs/upstream-verification.md runs against a live gateway."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import STAFF, GatewayUnderTest, echoed

DOC = Path(__file__).resolve().parents[2] / "docs" / "upstream-verification.md"


def example_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_example_is_short() -> None:
    lines = [line for line in example_code().splitlines() if line.strip()]
    assert len(lines) <= 20


def test_example_verifies_a_live_assertion(gw: GatewayUnderTest) -> None:
    code = example_code().replace(
        '"https://app.city.example.jp/.well-known/sekisho/jwks.json"',
        f'"http://127.0.0.1:{gw.port}/.well-known/sekisho/jwks.json"')
    # urllib sends Host: 127.0.0.1; the JWKS is served on route hosts only, so add it.
    code = code.replace("urllib.request.urlopen(JWKS_URL,",
                        "urllib.request.urlopen(urllib.request.Request(JWKS_URL, headers="
                        "{'Host': 'app.localhost'}),")
    namespace: dict[str, object] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    _, _, body = gw.request("GET", "/x")
    headers = {name: value for name, value in echoed(body)["headers"]}
    claims = namespace["verify"](headers)  # type: ignore[operator]
    assert claims["sub"] == "alice" and claims["aud"] == "app"
    # A token for another route is refused by the same code.
    _, _, other = gw.request("GET", "/", host="public.localhost", token=STAFF)
    other_headers = {name: value for name, value in echoed(other)["headers"]}
    with pytest.raises(Exception, match="aud"):
        namespace["verify"](other_headers)  # type: ignore[operator]
