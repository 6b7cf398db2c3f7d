"""Request smuggling over a raw socket: each case must answer 400 (or 431/414), close the
connection, and the upstream must never receive the smuggled second request."""

from __future__ import annotations

import time

import pytest

from .conftest import HOST, STAFF, GatewayUnderTest

C = f"Host: {HOST}\r\nCookie: __Host-sekisho={STAFF}\r\n"
SMUGGLED = f"GET /smuggled HTTP/1.1\r\nHost: {HOST}\r\nCookie: __Host-sekisho={STAFF}\r\n\r\n"

CASES = {
    # CL.TE: front end uses CL, back end TE (or the reverse) → the tail becomes a request.
    "cl-te": f"POST /a HTTP/1.1\r\n{C}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
             f"0\r\n\r\n{SMUGGLED}",
    "te-cl": f"POST /a HTTP/1.1\r\n{C}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
             f"5c\r\n{SMUGGLED}\r\n0\r\n\r\n",
    "duplicate-cl-equal": f"POST /a HTTP/1.1\r\n{C}Content-Length: 5\r\nContent-Length: 5\r\n"
                          f"\r\nhello{SMUGGLED}",
    "duplicate-cl-differ": f"POST /a HTTP/1.1\r\n{C}Content-Length: 0\r\nContent-Length: 80\r\n"
                           f"\r\n{SMUGGLED}",
    "cl-list": f"POST /a HTTP/1.1\r\n{C}Content-Length: 0, 80\r\n\r\n{SMUGGLED}",
    "cl-plus": f"POST /a HTTP/1.1\r\n{C}Content-Length: +0\r\n\r\n{SMUGGLED}",
    "cl-negative": f"POST /a HTTP/1.1\r\n{C}Content-Length: -1\r\n\r\n{SMUGGLED}",
    "cl-hex": f"POST /a HTTP/1.1\r\n{C}Content-Length: 0x10\r\n\r\n{SMUGGLED}",
    "te-gzip-chunked": f"POST /a HTTP/1.1\r\n{C}Transfer-Encoding: gzip, chunked\r\n\r\n"
                       f"0\r\n\r\n{SMUGGLED}",
    "te-chunked-gzip": f"POST /a HTTP/1.1\r\n{C}Transfer-Encoding: chunked, gzip\r\n\r\n"
                       f"0\r\n\r\n{SMUGGLED}",
    "te-identity": f"POST /a HTTP/1.1\r\n{C}Transfer-Encoding: identity\r\n\r\n{SMUGGLED}",
    "te-doubled": f"POST /a HTTP/1.1\r\n{C}Transfer-Encoding: chunked\r\n"
                  f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
    "te-xchunked": f"POST /a HTTP/1.1\r\n{C}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
    "te-space-before-colon": f"POST /a HTTP/1.1\r\n{C}Transfer-Encoding : chunked\r\n\r\n"
                             f"0\r\n\r\n{SMUGGLED}",
    "te-obs-fold": f"POST /a HTTP/1.1\r\n{C}Transfer-Encoding:\r\n chunked\r\n\r\n"
                   f"0\r\n\r\n{SMUGGLED}",
    "obs-fold": f"GET /a HTTP/1.1\r\n{C}X-A: b\r\n c\r\n\r\n{SMUGGLED}",
    "te-http10": f"POST /a HTTP/1.0\r\n{C}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
    "bad-chunk-size": f"POST /a HTTP/1.1\r\n{C}Transfer-Encoding: chunked\r\n\r\n"
                      f"5 \r\nhello\r\n0\r\n\r\n{SMUGGLED}",
    "bare-lf": f"GET /a HTTP/1.1\n{C}\n{SMUGGLED}",
    "bare-cr": f"GET /a HTTP/1.1\r\nHost: {HOST}\rX: y\r\n\r\n{SMUGGLED}",
    "nul-in-header": f"GET /a HTTP/1.1\r\n{C}X: a\x00b\r\n\r\n{SMUGGLED}",
    "double-host": f"GET /a HTTP/1.1\r\n{C}Host: other.localhost\r\n\r\n{SMUGGLED}",
    "no-host": f"GET /a HTTP/1.1\r\nCookie: __Host-sekisho={STAFF}\r\n\r\n{SMUGGLED}",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_smuggling_rejected(gw: GatewayUnderTest, name: str) -> None:
    reply = gw.raw(CASES[name].encode("latin-1"))
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert reply.count(b"HTTP/1.1 ") == 1  # nothing after the 400: the connection closed
    assert b"Connection: close" in reply
    assert all(b"smuggled" not in r.url for r in gw.upstream.requests)


def test_body_on_keep_alive_is_framed(gw: GatewayUnderTest) -> None:
    """A body containing a request stays a body: CL and chunked on one connection."""
    data = (f"POST /one HTTP/1.1\r\n{C}Content-Length: {len(SMUGGLED)}\r\n\r\n{SMUGGLED}"
            f"POST /two HTTP/1.1\r\n{C}Transfer-Encoding: chunked\r\n\r\n"
            f"{len(SMUGGLED):x}\r\n{SMUGGLED}\r\n0\r\n\r\n"
            f"GET /three HTTP/1.1\r\n{C}Connection: close\r\n\r\n")
    reply = gw.raw(data.encode())
    assert reply.count(b"HTTP/1.1 200") == 3
    assert [r.url for r in gw.upstream.requests] == [b"/one", b"/two", b"/three"]
    assert gw.upstream.requests[0].body.decode() == SMUGGLED
    assert gw.upstream.requests[1].body.decode() == SMUGGLED


def test_trailer_fields_are_neither_forwarded_nor_kept(gw: GatewayUnderTest) -> None:
    """llhttp reports a chunked body's trailer fields like headers: an endless trailer section
    must not grow the exchange (nor reach the upstream: bodies are re-framed)."""
    with gw.connect() as sock:
        sock.sendall(f"POST /t HTTP/1.1\r\n{C}Transfer-Encoding: chunked\r\n\r\n"
                     f"5\r\nhello\r\n0\r\n".encode())
        for _ in range(50):  # 5,000 trailer lines, the section still open
            sock.sendall(b"".join(b"X-T%d: v\r\n" % i for i in range(100)))
        deadline = time.monotonic() + 5
        while True:
            current = [c.current for c in gw.gateway.connections if c.current is not None]
            if current and current[0].body_bytes == 5:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # the trailer lines parsed meanwhile
        assert len(current[0].headers) == 3  # Host, Cookie, Transfer-Encoding: no trailer
        sock.sendall(b"\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert gw.upstream.requests[-1].body == b"hello"
    received = gw.upstream.requests[-1].headers
    assert not any(name.lower().startswith("x-t") for name, _ in received)


# An upstream response whose framing headers are spelled so that only a name-folding reader
# (`_` as `-`) takes them: the upstream's parser frames by the real ones, and so must we.
FOLDED_FRAMING = {
    "chunked-with-content_length": b"Transfer-Encoding: chunked\r\nContent_Length: 3\r\n\r\n"
                                   b"5\r\nhello\r\n0\r\n\r\n",
    "length-with-content_length": b"Content-Length: 5\r\nContent_Length: 3\r\n\r\nhello",
}


@pytest.mark.parametrize("name", sorted(FOLDED_FRAMING))
def test_response_framing_follows_the_upstream_parser(gw: GatewayUnderTest, name: str) -> None:
    """The client must read exactly the body the upstream sent: a `Content_Length` header
    taken for the length would cut `hello` to `hel`, and the rest would open the next response
    on the client's connection (response splitting)."""

    async def folded(request: object, proto: object) -> None:
        await request.done  # type: ignore[attr-defined]
        proto.transport.write(b"HTTP/1.1 200 OK\r\n" + FOLDED_FRAMING[name])  # type: ignore[attr-defined]

    gw.upstream.routes["/folded"] = folded
    reply = gw.raw(f"GET /folded HTTP/1.1\r\n{C}\r\nGET /a HTTP/1.1\r\n{C}Connection: close"
                   f"\r\n\r\n".encode())
    first, rest = _one_response(reply)
    assert first == b"hello", reply
    assert rest.startswith(b"HTTP/1.1 200") and rest.count(b"HTTP/1.1 ") == 1, reply
    assert b"content_length" not in reply.lower()


def _one_response(data: bytes) -> tuple[bytes, bytes]:
    """The body of the first response in `data`, framed as a client frames it, and the rest."""
    head, _, rest = data.partition(b"\r\n\r\n")
    fields = {n.strip().lower(): v.strip() for n, _, v in
              (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    if fields.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            body, rest = body + rest[:size], rest[size + 2:]
            if size == 0:
                return body, rest
    length = int(fields[b"content-length"])
    return rest[:length], rest[length:]
