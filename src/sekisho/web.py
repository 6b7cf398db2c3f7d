"""Plain HTTP request/response values shared by the gateway and the pages it serves itself.

The gateway parses bytes into a `Request` and writes a `Response` back; handlers for the
reserved `/.sekisho/` prefix (sign-in, sign-out, JWKS) are `async (Request) -> Response`
functions that know nothing about sockets. Header names are stored lower-case.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

RESERVED_PREFIX = "/.sekisho/"
PORTAL_PATH = RESERVED_PREFIX + "portal/"  # the staff portal (sekisho.console)


@dataclass(slots=True)
class Request:
    method: str
    target: str  # the raw request-target as received
    path: str  # normalised path (see gateway.paths)
    query: str  # raw query string, without "?"
    headers: list[tuple[str, str]]  # lower-case names, in arrival order
    client_ip: str  # the real client after trusted-proxy processing
    scheme: str  # "https" or "http" as seen by the client
    host: str  # lower-case host without port
    body: bytes = b""
    # Filled by the gateway when a valid session cookie was presented.
    session: Any = None
    # The connection's verified client certificate (gateway.mtls.ClientCertificate), if any.
    certificate: Any = None

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def cookies(self) -> dict[str, str]:
        jar: dict[str, str] = {}
        for key, value in self.headers:
            if key == "cookie":
                parsed: SimpleCookie = SimpleCookie()
                try:
                    parsed.load(value)
                except Exception:  # noqa: S112 (a malformed cookie header is ignored, never fatal)
                    continue
                for morsel in parsed.values():
                    jar.setdefault(morsel.key, morsel.value)
        return jar

    def query_params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query, keep_blank_values=True))

    def form(self) -> dict[str, str]:
        """The body as `application/x-www-form-urlencoded`; first value of each key wins."""
        result: dict[str, str] = {}
        for key, value in parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True):
            result.setdefault(key, value)
        return result

    def wants_json(self) -> bool:
        accept = self.header("accept") or ""
        return "application/json" in accept and "text/html" not in accept

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.target}"


@dataclass(slots=True)
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def set_header(self, name: str, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        self.headers.append((name, value))


Handler = Callable[[Request], Awaitable[Response]]

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; "
     "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


def html(body: str, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return Response(
        status,
        [("Content-Type", "text/html; charset=utf-8"), *SECURITY_HEADERS, *headers],
        body.encode("utf-8"),
    )


def json_response(
    data: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(
        status,
        [("Content-Type", "application/json"), ("Cache-Control", "no-store"), *headers],
        payload,
    )


def redirect(location: str, status: int = 303, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return Response(status, [("Location", location), ("Cache-Control", "no-store"), *headers])
