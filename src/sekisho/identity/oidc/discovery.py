"""Discovery documents and signing keys of the configured IdPs, fetched once and cached.

The discovery document must name exactly the configured issuer (OpenID Connect Discovery
1.0 §4.3): an IdP whose document claims another issuer could be used to mix up providers.
Its endpoints must be https:// (loopback http:// only when allowed). Documents are kept for
`metadata_ttl`; key sets for `jwks_ttl`.

Key rotation: a token signed with a key id that is not in the cached set makes Sekisho fetch
the JWKS again, once, and at most every `refetch_interval` seconds per IdP. Without that
limit, a stream of tokens with made-up key ids would turn Sekisho into a cannon firing at
the IdP's JWKS endpoint (and wait on it for every forged request).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from sekisho.config.model import IdentityProvider
from sekisho.identity.oidc.errors import OidcError
from sekisho.identity.oidc.http import MAX_JWKS_BYTES, IdpHttp, check_url

_KEY_TYPES: dict[str, type[RSAKey] | type[ECKey] | type[OKPKey]] = {
    "RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}
MAX_KEYS = 50


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str = ""
    backchannel_logout_supported: bool = False


def parse_metadata(document: dict[str, Any], idp: IdentityProvider) -> ProviderMetadata:
    if document.get("issuer") != idp.issuer:
        raise OidcError("discovery-invalid", "the discovery document names another issuer",
                        status=502)
    urls: dict[str, str] = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = document.get(name)
        if not isinstance(value, str):
            raise OidcError("discovery-invalid", f"discovery document lacks {name}", status=502)
        urls[name] = check_url(value, allow_loopback_http=idp.allow_insecure_http_for_loopback)
    end = document.get("end_session_endpoint")
    end_session = check_url(end, allow_loopback_http=idp.allow_insecure_http_for_loopback) \
        if isinstance(end, str) else ""
    return ProviderMetadata(
        issuer=idp.issuer, end_session_endpoint=end_session,
        backchannel_logout_supported=document.get("backchannel_logout_supported") is True,
        **urls)


def parse_jwks(document: dict[str, Any]) -> dict[str, Key]:
    """Signing keys by kid ("" for a key without one); unusable entries are skipped."""
    entries = document.get("keys")
    if not isinstance(entries, list) or len(entries) > MAX_KEYS:
        raise OidcError("jwks-invalid", "the JWKS has no usable key list", status=502)
    keys: dict[str, Key] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        key_type = _KEY_TYPES.get(str(entry.get("kty")))
        if key_type is None or any(p in entry for p in ("d", "p", "q", "k")):
            continue  # unknown type, or private / symmetric material that has no place here
        try:
            fields = {k: v for k, v in entry.items() if isinstance(v, str | list)}
            key = key_type.import_key(fields)
        except (JoseError, ValueError, TypeError):
            continue
        keys.setdefault(str(entry.get("kid", "")), key)
    return keys


@dataclass(slots=True)
class _Entry:
    metadata: ProviderMetadata | None = None
    metadata_at: float = 0.0
    keys: dict[str, Key] | None = None
    keys_at: float = 0.0
    last_refetch: float = float("-inf")


class ProviderCache:
    """Metadata and keys of every IdP, shared by all requests of this process."""

    metadata_ttl: float = 3600.0
    jwks_ttl: float = 3600.0
    refetch_interval: float = 30.0

    def __init__(self, http_for: Callable[[IdentityProvider], IdpHttp],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._http_for = http_for
        self._now = monotonic
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def clear(self) -> None:
        """Forget every document and key (the next use fetches them again)."""
        self._entries.clear()

    def _entry(self, idp: IdentityProvider) -> _Entry:
        return self._entries.setdefault((idp.id, idp.issuer), _Entry())

    async def metadata(self, idp: IdentityProvider) -> ProviderMetadata:
        entry = self._entry(idp)
        if entry.metadata is not None and self._now() - entry.metadata_at < self.metadata_ttl:
            return entry.metadata
        url = idp.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._http_for(idp).get_json(url)
        entry.metadata, entry.metadata_at = parse_metadata(document, idp), self._now()
        return entry.metadata

    async def key(self, idp: IdentityProvider, kid: str, kty: str) -> Key:
        """The IdP's signing key `kid`; refetches the JWKS once if it is not known."""
        entry = self._entry(idp)
        fresh = entry.keys is not None and self._now() - entry.keys_at < self.jwks_ttl
        if not fresh:
            await self._fetch_keys(idp, entry)
        found = _pick(entry.keys or {}, kid, kty)
        if found is None and self._now() - entry.last_refetch >= self.refetch_interval:
            lock = self._locks.setdefault((idp.id, idp.issuer), asyncio.Lock())
            async with lock:  # concurrent tokens with one new kid: one fetch
                found = _pick(entry.keys or {}, kid, kty)
                if found is None and self._now() - entry.last_refetch >= self.refetch_interval:
                    entry.last_refetch = self._now()
                    await self._fetch_keys(idp, entry)
                    found = _pick(entry.keys or {}, kid, kty)
        if found is None:
            raise OidcError("key-unknown", "no signing key with this key id", status=400)
        return found

    async def _fetch_keys(self, idp: IdentityProvider, entry: _Entry) -> None:
        metadata = await self.metadata(idp)
        document = await self._http_for(idp).get_json(metadata.jwks_uri, limit=MAX_JWKS_BYTES)
        entry.keys, entry.keys_at = parse_jwks(document), self._now()


def _pick(keys: dict[str, Key], kid: str, kty: str) -> Key | None:
    if kid:
        key = keys.get(kid)
    else:  # no kid in the token: acceptable only when exactly one key could have signed it
        matching = [k for k in keys.values() if k.key_type == kty]
        key = matching[0] if len(matching) == 1 else None
    return key if key is not None and key.key_type == kty else None
