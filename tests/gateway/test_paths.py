"""Table tests for request-target normalisation (gateway.paths)."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from sekisho.gateway.paths import InvalidTarget, normalise, strip_port

# (raw target, policy path, upstream path, query, ambiguous reason)
CASES = [
    (b"/", "/", "/", "", ""),
    (b"/a/b", "/a/b", "/a/b", "", ""),
    (b"/a/b/", "/a/b/", "/a/b/", "", ""),
    (b"/a?x=1&y=2", "/a", "/a", "x=1&y=2", ""),
    (b"/a?", "/a", "/a", "", ""),
    (b"//a//b", "/a/b", "/a/b", "", ""),
    (b"/a///", "/a/", "/a/", "", ""),
    (b"/allowed/../denied", "/denied", "/denied", "", ""),
    (b"/allowed/./x", "/allowed/x", "/allowed/x", "", ""),
    (b"/a/b/..", "/a/", "/a/", "", ""),
    (b"/a/b/.", "/a/b/", "/a/b/", "", ""),
    (b"/../../etc/passwd", "/etc/passwd", "/etc/passwd", "", ""),
    (b"/..", "/", "/", "", ""),
    (b"/allowed/%2e%2e/denied", "/denied", "/denied", "", ""),
    (b"/allowed/%2E%2E/denied", "/denied", "/denied", "", ""),
    (b"/allowed/.%2e/denied", "/denied", "/denied", "", ""),
    (b"/allowed/%2e/x", "/allowed/x", "/allowed/x", "", ""),
    (b"/%61%62c", "/abc", "/abc", "", ""),
    (b"/a%7Eb", "/a~b", "/a~b", "", ""),
    (b"/a%2db", "/a-b", "/a-b", "", ""),
    (b"/a%20b", "/a b", "/a%20b", "", ""),
    (b"/a%3fb", "/a?b", "/a%3Fb", "", ""),
    (b"/a%3Fb", "/a?b", "/a%3Fb", "", ""),
    (b"/%E6%97%A5%E6%9C%AC", "/日本", "/%E6%97%A5%E6%9C%AC", "", ""),
    (b"/a+b", "/a+b", "/a+b", "", ""),
    (b"/a%2Bb", "/a+b", "/a%2Bb", "", ""),
    (b"/user@host:1", "/user@host:1", "/user@host:1", "", ""),
    (b"/a%25b", "/a%b", "/a%25b", "", ""),
    (b"/a%2Fb", "/a/b", "/a%2Fb", "", "encoded-slash"),
    (b"/a%2fb", "/a/b", "/a%2Fb", "", "encoded-slash"),
    (b"/allowed/..%2fdenied", None, None, "", "encoded-slash"),
    (b"/a%5Cb", None, None, "", "encoded-backslash"),
    (b"/a%5cb", None, None, "", "encoded-backslash"),
    (b"/a\\b", None, None, "", "backslash"),
    (b"/a;b", None, None, "", "path-parameter"),
    (b"/allowed;/../denied", None, None, "", "path-parameter"),
    (b"/a;jsessionid=1", None, None, "", "path-parameter"),
    (b"/a%00b", None, None, "", "nul"),
    (b"/a%0Ab", None, None, "", "control-char"),
    (b"/a%0db", None, None, "", "control-char"),
    (b"/a%7fb", None, None, "", "control-char"),
    (b"/a%zzb", None, None, "", "invalid-escape"),
    (b"/a%2", None, None, "", "invalid-escape"),
    (b"/a%", None, None, "", "invalid-escape"),
    (b"/%C0%AF", None, None, "", "invalid-utf8"),  # overlong "/"
    (b"/%C0%AE%C0%AE/x", None, None, "", "invalid-utf8"),  # overlong ".."
    (b"/%E0%80%AF", None, None, "", "invalid-utf8"),
    (b"/%ED%A0%80", None, None, "", "invalid-utf8"),  # UTF-16 surrogate
    (b"/%FF", None, None, "", "invalid-utf8"),
    (b"/a#frag", None, None, "", "fragment"),
    (b"http://app.localhost/x?q", "/x", "/x", "q", ""),
    (b"HTTP://APP.LOCALHOST:8443/x", "/x", "/x", "", ""),
    (b"http://evil.example/x", "/x", "/x", "", "absolute-form-host"),
    (b"https://app.localhost", "/", "/", "", ""),
]


@pytest.mark.parametrize(("raw", "path", "upstream", "query", "ambiguous"), CASES,
                         ids=[c[0].decode("latin-1") for c in CASES])
def test_normalise(raw: bytes, path: str | None, upstream: str | None, query: str,
                   ambiguous: str) -> None:
    target = normalise(raw, "app.localhost")
    assert target.ambiguous == ambiguous
    if path is not None:
        assert target.path == path
        assert target.upstream == upstream
        assert target.query == query
    if not ambiguous:
        # The policy's path is the upstream's path, decoded: one meaning for both.
        assert unquote(target.upstream, errors="strict") == target.path


@pytest.mark.parametrize("raw", [b"", b"*", b"a/b", b"example.com:443", b"http://u@evil/x"])
def test_not_a_path(raw: bytes) -> None:
    with pytest.raises(InvalidTarget):
        normalise(raw, "app.localhost")


@pytest.mark.parametrize(("authority", "host"), [
    ("App.Example.JP:443", "app.example.jp"), ("[::1]:8443", "::1"), ("a.jp.", "a.jp"),
    ("localhost", "localhost"),
])
def test_strip_port(authority: str, host: str) -> None:
    assert strip_port(authority) == host
