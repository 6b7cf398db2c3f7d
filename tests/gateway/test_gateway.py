"""Integration: the real gateway in front of a real upstream, over real sockets."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from urllib.parse import unquote

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from sekisho.audit.events import AccessDecision

from .conftest import GUEST, HOST, STAFF, GatewayUnderTest, echoed, parse_response
from .servers import ListAudit


def upstream_headers(body: bytes) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in echoed(body)["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return headers


def test_allowed_request_reaches_upstream_with_assertion(gw: GatewayUnderTest) -> None:
    status, _, body = gw.request("GET", "/hello?x=1")
    assert status == 200
    data = echoed(body)
    assert data["target"] == "/hello?x=1"
    headers = upstream_headers(body)
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-host"] == [HOST]
    assert "cookie" not in headers  # the session cookie never reaches an upstream
    events = [e for e in gw.audit.events if isinstance(e, AccessDecision)]
    assert events[-1].decision == "allow" and events[-1].user == "alice"
    assert events[-1].status == 200 and events[-1].route == "app"


def test_assertion_verifies_against_published_jwks(gw: GatewayUnderTest) -> None:
    status, _, jwks = gw.request("GET", "/.well-known/sekisho/jwks.json", token=None)
    assert status == 200
    keys = json.loads(jwks)
    assert keys["keys"] and all("d" not in k for k in keys["keys"])
    _, _, body = gw.request("GET", "/x")
    token = upstream_headers(body)["x-sekisho-assertion"][0]
    decoded = jwt.decode(token, KeySet.import_key_set(keys), algorithms=["ES256"])
    registry = jwt.JWTClaimsRegistry(iss={"essential": True, "value": "sekisho"},
                                     aud={"essential": True, "value": "app"},
                                     exp={"essential": True})
    registry.validate(decoded.claims)
    assert decoded.claims["sub"] == "alice" and decoded.claims["groups"] == ["staff"]
    assert decoded.claims["exp"] - decoded.claims["iat"] <= 60
    assert decoded.header["kid"] == gw.keyring.active.kid


@pytest.mark.parametrize("name", [
    "X-Sekisho-Assertion", "x-sekisho-assertion", "X-SEKISHO-USER", "X_Sekisho_Assertion",
    "x_sekisho_user", "X-Sekisho-Groups",
])
def test_spoofed_sekisho_headers_never_reach_upstream(gw: GatewayUnderTest, name: str) -> None:
    for token in (STAFF, None):
        host = HOST if token else "public.localhost"
        status, _, body = gw.request("GET", "/", host=host, token=token,
                                     headers={name: "forged"})
        assert status == 200
        for key, value in echoed(body)["headers"]:
            assert value != "forged", key


def test_xff_from_untrusted_peer_is_ignored(gw: GatewayUnderTest) -> None:
    _, _, body = gw.request("GET", "/", headers={
        "X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example", "Forwarded": "for=1.2.3.4"})
    headers = upstream_headers(body)
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == [HOST]
    assert "forwarded" not in headers
    assert [e for e in gw.audit.events if isinstance(e, AccessDecision)][-1].source_ip == \
        "127.0.0.1"


def test_xff_from_trusted_peer_is_honoured(gw: GatewayUnderTest) -> None:
    import ipaddress

    gw.reconfigure(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    _, _, body = gw.request("GET", "/", headers={"X-Forwarded-For": "1.1.1.1, 198.51.100.7",
                                                 "X-Forwarded-Proto": "https"})
    headers = upstream_headers(body)
    assert headers["x-forwarded-for"] == ["198.51.100.7, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["https"]
    assert [e for e in gw.audit.events if isinstance(e, AccessDecision)][-1].source_ip == \
        "198.51.100.7"


@pytest.mark.parametrize(("path", "status"), [
    ("/denied", 403), ("/denied/x", 403), ("/x/../denied", 403), ("/x/%2e%2e/denied", 403),
    ("/x/%2E%2E/denied/", 403), ("//denied", 403), ("/./denied", 403),
    ("/x/..%2fdenied", 400), ("/x%2f..%2fdenied", 400), ("/denied%2fx", 400),
    ("/x;/../denied", 400), ("/x/..;/denied", 400), ("/denied;x=1", 400),
    ("/x%5c..%5cdenied", 400), ("/x\\..\\denied", 400), ("/x%00", 400),
    ("/%c0%ae%c0%ae/denied", 400),
])
def test_path_confusion(gw: GatewayUnderTest, path: str, status: int) -> None:
    got, _, _ = gw.request("GET", path)
    assert got == status
    assert all(not r.url.startswith(b"/denied") for r in gw.upstream.requests)


def test_remembered_targets_decide_as_the_first_time(gw: GatewayUnderTest) -> None:
    # Normalised targets are remembered: a repeated confusing path must be refused again,
    # an allowed one allowed again, and the memo must not grow with what clients send.
    for _ in range(3):
        assert gw.request("GET", "/x/%2e%2e/denied")[0] == 403
        assert gw.request("GET", "/x%2f..%2fdenied")[0] == 400
        assert gw.request("GET", "/hello")[0] == 200
    assert all(not r.url.startswith(b"/denied") for r in gw.upstream.requests)
    long_path = "/" + "a" * 300
    assert gw.request("GET", long_path)[0] == 200
    memo = gw.gateway._targets
    assert all(len(raw) <= 256 for raw, _ in memo) and (long_path.encode(), HOST) not in memo
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        for n in range(1100):  # one keep-alive connection, a new path each time
            sock.sendall(f"GET /n{n} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            answer = b""
            while not answer.endswith(b"\r\n\r\n"):  # a redirect: head only, no body
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 302")
    assert len(memo) <= 1024
    plans = gw.gateway._plans  # where (Host, target) pairs went: as bounded, as short
    assert 0 < len(plans) <= 1024 and all(len(raw) <= 256 for _, raw in plans)


def test_where_a_request_went_is_remembered_per_snapshot(gw: GatewayUnderTest) -> None:
    """(Host, target) → route is remembered; a reload that moves a path to another route
    (here: a deny-all one) or removes its host must be seen by the very next request."""
    for _ in range(2):
        assert gw.request("GET", "/reports/1")[0] == 200
        assert gw.request("GET", "/reports/1", host="APP.localhost:80")[0] == 200
    routes = gw.runtime.config.routes
    app = next(r for r in routes if r.id == "app")
    moved = dataclasses.replace(app, id="reports", path_prefix="/reports", policy="nobody")
    gw.reconfigure(routes=(*routes, moved))
    assert gw.request("GET", "/reports/1")[0] == 403
    assert gw.request("GET", "/other")[0] == 200
    gw.reconfigure(routes=tuple(r for r in routes if r.host != HOST))
    assert gw.request("GET", "/reports/1")[0] == 404


def test_ambiguous_allowed_when_route_opts_in(gw: GatewayUnderTest) -> None:
    status, _, body = gw.request("GET", "/a%2Fb;c", host="raw.localhost", token=None)
    assert status == 200 and echoed(body)["target"] == "/a%2Fb;c"


def test_unauthenticated_html_redirects_to_signin(gw: GatewayUnderTest) -> None:
    status, headers, _ = gw.request("GET", "/docs?q=1", token=None)
    assert status == 302
    location = headers["location"]
    assert location.startswith(f"http://{HOST}/.sekisho/signin?rd=")
    assert unquote(location.split("rd=")[1]) == f"http://{HOST}/docs?q=1"
    assert not gw.upstream.requests


def test_unauthenticated_json_gets_401(gw: GatewayUnderTest) -> None:
    status, headers, body = gw.request("GET", "/api", token="unknown-token",
                                       headers={"Accept": "application/json"})
    assert status == 401 and headers["content-type"] == "application/json"
    assert "user-unauthenticated" in body.decode() or json.loads(body)["error"]


def test_denied_page_lists_reasons(gw: GatewayUnderTest) -> None:
    status, headers, body = gw.request("GET", "/", token=GUEST)
    assert status == 403
    text = body.decode()
    assert "group-unauthorized" in text and "所属グループ" in text
    assert text.index("所属グループ") < text.index("groups are not permitted")  # Japanese first
    assert headers["x-frame-options"] == "DENY"
    _, _, english = gw.request("GET", "/", token=GUEST, headers={"Accept-Language": "en"})
    text_en = english.decode()
    assert text_en.index("groups are not permitted") < text_en.index("所属グループ")
    denied = [e for e in gw.audit.events if isinstance(e, AccessDecision)][-1]
    assert denied.decision == "deny" and "group-unauthorized" in denied.reasons
    assert not gw.upstream.requests


def test_storage_error_at_decision_time_denies_503(gw: GatewayUnderTest) -> None:
    gw.sessions.broken = True
    status, _, body = gw.request("GET", "/")
    assert status == 503
    assert not gw.upstream.requests
    assert b"database" not in body and b"Storage" not in body
    denied = [e for e in gw.audit.events if isinstance(e, AccessDecision)][-1]
    assert denied.decision == "deny" and denied.reasons == ("storage-unavailable",)


def test_audit_unhealthy_denies_503(gw: GatewayUnderTest) -> None:
    gw.audit.healthy = False
    status, _, body = gw.request("GET", "/")
    assert status == 503 and not gw.upstream.requests
    assert b"audit-unavailable" in body


def test_unknown_host_and_reserved_handlers(gw: GatewayUnderTest) -> None:
    assert gw.request("GET", "/", host="nowhere.localhost")[0] == 404
    assert gw.request("GET", "/.sekisho/nothing")[0] == 404
    status, _, body = gw.request("POST", "/.sekisho/echo", body=b"a=1")
    assert status == 200 and json.loads(body) == {"body": "a=1", "signed_in": True}
    assert gw.handled[-1].client_ip == "127.0.0.1" and gw.handled[-1].host == HOST
    big = b"x" * (64 * 1024 + 1)
    assert gw.request("POST", "/.sekisho/echo", body=big)[0] == 413


def test_oversized_headers_431_and_url_414(gw: GatewayUnderTest) -> None:
    status, _, _ = gw.request("GET", "/", headers={"X-Big": "a" * 20000})
    assert status == 431
    many = {f"X-H{i}": "v" for i in range(120)}
    assert gw.request("GET", "/", headers=many)[0] == 431
    assert gw.request("GET", "/" + "a" * 9000)[0] == 414
    assert not gw.upstream.requests


@pytest.mark.parametrize(("extra_count", "extra_bytes", "status"), [
    (97, 0, 200), (98, 0, 431),  # with Host, Connection and Cookie: 100 lines, then 101
    (0, 0, 200), (0, 1, 431),  # 16 KiB of lines exactly (name, value, ": " and CRLF), then 1 more
])
def test_header_limits_hold_at_their_boundary(gw: GatewayUnderTest, extra_count: int,
                                              extra_bytes: int, status: int) -> None:
    """`limits.max_header_count` and `max_header_bytes` (checked once the head is complete)."""
    headers = {f"X-H{i}": "v" for i in range(extra_count)}
    if not extra_count:
        fixed = [f"Host: {HOST}", "Connection: close", f"Cookie: __Host-sekisho={STAFF}"]
        used = sum(len(line) + 2 for line in fixed) + len("X-Fill: \r\n")
        headers["X-Fill"] = "f" * (16 * 1024 - used + extra_bytes)
    assert gw.request("GET", "/", headers=headers)[0] == status


def test_bad_gateway_and_timeout_pages_leak_nothing(gw: GatewayUnderTest) -> None:
    status, _, body = gw.request("GET", "/", host="dead.localhost", token=None)
    assert status == 502
    assert b"127.0.0.1" not in body and b":9" not in body and b"Error" not in body
    started = time.monotonic()
    status, _, body = gw.request("GET", "/slow", host="slow.localhost", token=None)
    assert status == 504 and time.monotonic() - started < 5
    assert str(gw.upstream.port).encode() not in body
    status, _, body = gw.request("GET", "/close", host="public.localhost", token=None,
                                 headers={"Accept": "application/json"})
    assert status == 502 and json.loads(body)["error"] == "bad-gateway"


def test_keep_alive_and_pipelining_in_order(gw: GatewayUnderTest) -> None:
    requests = b"".join(
        f"GET /p{i} HTTP/1.1\r\nHost: {HOST}\r\nCookie: __Host-sekisho={STAFF}\r\n\r\n".encode()
        for i in range(5))
    with gw.connect() as sock:
        sock.sendall(requests)
        data = b""
        sock.settimeout(5)
        while data.count(b"HTTP/1.1 200") < 5:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    targets = [json.loads(body[:body.rfind(b"}") + 1])["target"] for body in bodies]
    assert targets == [f"/p{i}" for i in range(5)]
    assert gw.upstream.connections == 1  # one pooled upstream connection served all five


def test_http10_and_connection_close(gw: GatewayUnderTest) -> None:
    raw = gw.raw(f"GET / HTTP/1.0\r\nHost: {HOST}\r\nCookie: __Host-sekisho={STAFF}\r\n\r\n"
                 .encode())
    status, headers, body = parse_response(raw)
    assert status == 200 and headers.get("connection") == "close"
    assert echoed(body)["method"] == "GET"


def test_post_body_content_length_and_chunked(gw: GatewayUnderTest) -> None:
    status, _, body = gw.request("POST", "/form", body=b"hello=world")
    assert status == 200 and echoed(body)["body"] == "hello=world"
    raw = gw.raw(
        f"POST /c HTTP/1.1\r\nHost: {HOST}\r\nCookie: __Host-sekisho={STAFF}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".encode())
    status, _, body = parse_response(raw)
    assert status == 200 and echoed(body)["body"] == "hello world"


def test_header_timeout_closes_slowloris(gw: GatewayUnderTest) -> None:
    import dataclasses

    from sekisho.config.model import Timeouts

    gw.runtime = dataclasses.replace(gw.runtime, config=dataclasses.replace(
        gw.runtime.config, timeouts=Timeouts(header=0.5, idle=0.5)))
    with gw.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Slow: ")
        sock.settimeout(5)
        started = time.monotonic()
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 3


def test_tls_listener(gw_tls: GatewayUnderTest) -> None:
    status, _, body = gw_tls.request("GET", "/tls")
    assert status == 200
    assert upstream_headers(body)["x-forwarded-proto"] == ["https"]


def test_graceful_close_finishes_in_flight(gw: GatewayUnderTest) -> None:
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(f"GET /x HTTP/1.1\r\nHost: {HOST}\r\nCookie: __Host-sekisho={STAFF}\r\n\r\n"
                 .encode())
    time.sleep(0.2)
    gw.harness.call(gw.gateway.close(2.0))
    data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200")
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()


@pytest.mark.parametrize("host", ["bad host.localhost", "a@b.localhost", "x.localhost:99999999"])
def test_invalid_host_is_refused_every_time(gw: GatewayUnderTest, host: str) -> None:
    # Host values are cached after parsing: a repeated bad value must stay refused (host
    # confusion), and a good value after it must still pass.
    for _ in range(3):
        assert gw.request("GET", "/", host=host)[0] == 400
    assert gw.request("GET", "/")[0] == 200
    assert gw.request("GET", "/")[0] == 200


def test_access_decisions_go_to_the_sink_in_place(gw: GatewayUnderTest) -> None:
    """The per-request audit call is resolved when the sink is set, and set again with it."""
    assert gw.request("GET", "/hello")[0] == 200
    replacement = ListAudit()
    gw.gateway.audit = replacement
    assert gw.request("GET", "/hello")[0] == 200
    assert [type(e) for e in replacement.events] == [AccessDecision]
    assert sum(isinstance(e, AccessDecision) for e in gw.audit.events) == 1
