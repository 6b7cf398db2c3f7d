"""Table tests for header hygiene and trusted-proxy handling (gateway.headers)."""

from __future__ import annotations

import ipaddress

import pytest

from sekisho.gateway.headers import (
    client_address,
    response_fields,
    strip_cookies,
    upstream_headers,
)

COOKIES = frozenset({b"__Host-sekisho", b"__Host-sekisho-csrf"})

DROPPED = [
    b"X-Sekisho-User", b"x-sekisho-user", b"X-SEKISHO-ASSERTION", b"X_Sekisho_User",
    b"x_sekisho-assertion", b"X-Sekisho", b"Connection", b"Keep-Alive", b"Proxy-Connection",
    b"TE", b"Trailer", b"Transfer-Encoding", b"Upgrade", b"Proxy-Authorization", b"Forwarded",
    b"X-Forwarded-For", b"X_Forwarded_For", b"X-Forwarded-Host", b"X-Forwarded-Proto",
    b"X-Real-IP", b"Content-Length", b"Content_Length", b"Host", b"Expect",
]


def pairs(fields: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Flattened header fields (`name`, `: `, `value`, CRLF, …) as (name, value) pairs."""
    assert fields[1::4] == [b": "] * (len(fields) // 4) and fields[3::4] == [b"\r\n"] * (
        len(fields) // 4)
    return list(zip(fields[0::4], fields[2::4], strict=True))


@pytest.mark.parametrize("name", DROPPED, ids=[n.decode() for n in DROPPED])
def test_dropped(name: bytes) -> None:
    out = upstream_headers([(name, b"spoofed"), (b"Accept", b"*/*")], cookie_names=COOKIES)
    assert pairs(out) == [(b"Accept", b"*/*")]


def test_connection_listed_headers_are_hop_by_hop() -> None:
    headers = [(b"Connection", b"close, X-Api-Key , authorization"), (b"X-Api-Key", b"k"),
               (b"Authorization", b"Bearer t"), (b"Accept", b"a")]
    assert pairs(upstream_headers(headers, cookie_names=COOKIES)) == [(b"Accept", b"a")]


def test_websocket_keeps_upgrade() -> None:
    headers = [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"),
               (b"Sec-WebSocket-Key", b"k"), (b"Sec-WebSocket-Version", b"13")]
    out = pairs(upstream_headers(headers, cookie_names=COOKIES, websocket=True))
    assert (b"Sec-WebSocket-Key", b"k") in out
    assert (b"Connection", b"Upgrade") in out and (b"Upgrade", b"websocket") in out


@pytest.mark.parametrize(("value", "expected"), [
    (b"__Host-sekisho=tok", b""),
    (b"a=1; __Host-sekisho=tok; b=2", b"a=1; b=2"),
    (b"__Host-sekisho-csrf=c;a=1", b"a=1"),
    (b"  __Host-sekisho = tok ; a=1", b"a=1"),
    (b"sekisho_lang=en", b"sekisho_lang=en"),
    (b"x__Host-sekisho=1", b"x__Host-sekisho=1"),
])
def test_strip_cookies(value: bytes, expected: bytes) -> None:
    assert strip_cookies(value, COOKIES) == expected


def test_cookie_header_removed_when_empty() -> None:
    assert upstream_headers([(b"Cookie", b"__Host-sekisho=t")], cookie_names=COOKIES) == []
    kept = upstream_headers([(b"Cookie", b"a=1; __Host-sekisho=t")], cookie_names=COOKIES)
    assert pairs(kept) == [(b"Cookie", b"a=1")]


ip = ipaddress.ip_address
NET = (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(("peer", "xff", "trusted", "client", "chain"), [
    ("203.0.113.9", [b"1.2.3.4"], (), "203.0.113.9", ["203.0.113.9"]),
    ("203.0.113.9", [b"1.2.3.4"], NET, "203.0.113.9", ["203.0.113.9"]),
    ("10.0.0.2", [b"198.51.100.7"], NET, "198.51.100.7", ["198.51.100.7", "10.0.0.2"]),
    ("10.0.0.2", [b"1.1.1.1, 198.51.100.7"], NET, "198.51.100.7",
     ["198.51.100.7", "10.0.0.2"]),
    ("10.0.0.2", [b"1.1.1.1, 198.51.100.7, 10.0.0.5"], NET, "198.51.100.7",
     ["198.51.100.7", "10.0.0.5", "10.0.0.2"]),
    ("10.0.0.2", [b"1.1.1.1", b"198.51.100.7"], NET, "198.51.100.7",
     ["198.51.100.7", "10.0.0.2"]),
    ("10.0.0.2", [b"garbage, 10.0.0.3"], NET, "10.0.0.3", ["10.0.0.3", "10.0.0.2"]),
    ("10.0.0.2", [], NET, "10.0.0.2", ["10.0.0.2"]),
    ("10.0.0.2", [b"[2001:db8::1]"], NET, "2001:db8::1", ["2001:db8::1", "10.0.0.2"]),
])
def test_client_address(peer: str, xff: list[bytes], trusted: tuple, client: str,
                        chain: list[str]) -> None:
    got_client, got_chain = client_address(ip(peer), xff, trusted)
    assert str(got_client) == client
    assert [str(a) for a in got_chain] == chain


def test_response_fields_drop_hop_by_hop_and_listed_headers_and_take_the_length() -> None:
    upstream = [(b"Server", b"nginx"), (b"Content-Length", b" 1024 "), (b"X-Secret", b"1"),
                (b"Connection", b"keep-alive, X-Secret"), (b"Keep-Alive", b"timeout=5"),
                (b"ETag", b'"abc"'), (b"Transfer-Encoding", b"chunked"), (b"x_secret", b"2")]
    fields, length, chunked = response_fields(upstream)
    assert b"".join(fields) == b'Server: nginx\r\nETag: "abc"\r\n'
    assert length == b"1024"
    assert chunked
    usual = [(b"Date", b"x"), (b"Connection", b"keep-alive"), (b"Content-Type", b"text/plain")]
    assert response_fields(usual) == ([b"Date", b": ", b"x", b"\r\n", b"Content-Type", b": ",
                                       b"text/plain", b"\r\n"], None, False)


@pytest.mark.parametrize(("headers", "length", "chunked"), [
    ([(b"Content-Length", b"5"), (b"Content_Length", b"3")], b"5", False),
    ([(b"Content_Length", b"3"), (b"content-length", b"5")], b"5", False),
    ([(b"Transfer-Encoding", b"chunked"), (b"Content_Length", b"3")], None, True),
    ([(b"Transfer_Encoding", b"chunked")], None, False),
    ([(b"TRANSFER-ENCODING", b"gzip, Chunked")], None, True),
])
def test_response_framing_is_read_from_the_exact_names(
        headers: list[tuple[bytes, bytes]], length: bytes | None, chunked: bool) -> None:
    """As llhttp frames the body: `_` look-alikes neither frame it nor reach the client."""
    fields, got_length, got_chunked = response_fields(headers)
    assert (got_length, got_chunked) == (length, chunked)
    assert fields == []
