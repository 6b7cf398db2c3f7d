"""HTTP to identity providers: httpx, with timeouts, size limits and no surprises.

Every request has a total timeout (an IdP that hangs must not hold a sign-in forever), reads
at most a fixed number of bytes (a hostile or broken endpoint must not exhaust memory),
follows no redirect (a redirect could move a key or token request to another host), and
verifies TLS. Only `https://` URLs are fetched, except `http://` on a loopback address when
the IdP's configuration allows it (tests). Any failure becomes `OidcError("idp-unavailable")`
whose description names the URL's host and the kind of failure, never a response body.
"""

from __future__ import annotations

import base64
import json
import ssl
from typing import Any
from urllib.parse import quote_plus, urlsplit

import httpx

from sekisho.config.idps import is_loopback_host
from sekisho.identity.oidc.errors import OidcError, unavailable

MAX_DOCUMENT_BYTES = 64 * 1024  # discovery documents and token responses
MAX_JWKS_BYTES = 256 * 1024


def check_url(url: str, *, allow_loopback_http: bool) -> str:
    """The URL if Sekisho may fetch it, else `OidcError("discovery-invalid")`."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise OidcError("discovery-invalid", "IdP URL does not parse", status=502) from None
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and allow_loopback_http and is_loopback_host(host):
        return url
    # Downgrade: an http:// endpoint in a discovery document would send the authorization
    # code or fetch signing keys in clear text (CWE-319).
    raise OidcError("discovery-invalid", f"IdP URL must be https:// (host {host})", status=502)


class IdpHttp:
    """One IdP's HTTP settings. A client is opened per call, so nothing binds to a loop."""

    def __init__(self, *, timeout: float, allow_loopback_http: bool,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.timeout = timeout
        self.allow_loopback_http = allow_loopback_http
        self.verify = verify

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), verify=self.verify,
                                 follow_redirects=False, trust_env=True,
                                 headers={"User-Agent": "Sekisho-OIDC/1"})

    async def get_json(self, url: str, *, limit: int = MAX_DOCUMENT_BYTES) -> dict[str, Any]:
        check_url(url, allow_loopback_http=self.allow_loopback_http)
        async with self._client() as client:
            status, body = await self._send(client, client.build_request(
                "GET", url, headers={"Accept": "application/json"}), limit)
        if status != 200:
            raise unavailable(f"GET {_host(url)} answered HTTP {status}")
        return _json_object(body, url)

    async def post_form(self, url: str, data: dict[str, str], *,
                        auth: tuple[str, str] | None = None,
                        limit: int = MAX_DOCUMENT_BYTES) -> tuple[int, dict[str, Any]]:
        """POST a form; returns (status, JSON object). Non-JSON answers are unavailability."""
        check_url(url, allow_loopback_http=self.allow_loopback_http)
        async with self._client() as client:
            request = client.build_request("POST", url, data=data,
                                           headers={"Accept": "application/json"})
            if auth is not None:
                request.headers["Authorization"] = basic_auth(*auth)
            status, body = await self._send(client, request, limit)
        return status, _json_object(body, url)

    async def _send(self, client: httpx.AsyncClient, request: httpx.Request,
                    limit: int) -> tuple[int, bytes]:
        host = _host(str(request.url))
        try:
            response = await client.send(request, stream=True)
            try:
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise unavailable(f"{host} sent more than {limit} bytes")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise unavailable(f"{host} sent more than {limit} bytes")
                    chunks.append(chunk)
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise unavailable(f"{host} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise unavailable(f"cannot reach {host}: {type(exc).__name__}") from None
        return response.status_code, b"".join(chunks)


def basic_auth(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: both parts form-urlencoded, then HTTP Basic."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _host(url: str) -> str:
    try:
        return urlsplit(url).netloc or "?"
    except ValueError:
        return "?"


def _json_object(body: bytes, url: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise unavailable(f"{_host(url)} did not answer with JSON") from None
    if not isinstance(value, dict):
        raise unavailable(f"{_host(url)} did not answer with a JSON object")
    return value
