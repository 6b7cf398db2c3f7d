"""Where to send a browser after sign-in: only to our own route hosts (no open redirect).

An open redirect lets a phishing mail say "sign in at the real city-hall gateway" and then
lands the user on the attacker's look-alike page. The target arrives in the `rd` parameter
and is accepted only when it is
- an absolute URL with the expected scheme whose host (ASCII, compared case-insensitively)
  is a configured route host, with no user-info and an optional numeric port; or
- a path starting with exactly one "/", resolved by the browser against the current host.

Browsers are lenient where parsers differ (backslashes count as slashes, tabs and newlines
are dropped, `https:evil` is a relative-scheme URL), so anything a browser might read
differently is refused outright: backslashes, whitespace and control characters anywhere,
in raw or percent-encoded form (decoded repeatedly), and non-ASCII hosts (IDN homographs).
The accepted URL is rebuilt from its parts, never passed through as the raw string.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import unquote, urlsplit

# RFC 3986 characters minus backslash, space and controls; "%" only as an escape.
_SAFE_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?#%\[\]]*")
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")
_MAX_LENGTH = 4096
_DECODE_ROUNDS = 4


def _layers(raw: str) -> list[str]:
    """The string and its successive percent-decodings (an attacker may encode twice)."""
    layers = [raw]
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote(layers[-1], errors="strict") if "%" in layers[-1] else layers[-1]
        if decoded == layers[-1]:
            break
        layers.append(decoded)
    return layers


def _dangerous(layer: str) -> bool:
    if "\\" in layer or any(ord(c) < 0x21 or ord(c) == 0x7F for c in layer):
        return True
    # A decoded layer starting with "//" or "/\" would be protocol-relative.
    return layer.startswith(("//", "/\\"))


def _relative_ok(raw: str) -> bool:
    return raw.startswith("/") and not raw.startswith("//")


def safe_redirect(
    raw: str | None, allowed_hosts: Collection[str], default: str, *, scheme: str = "https"
) -> str:
    """`raw` if it is a safe target (rebuilt), else `default`.

    `scheme` is the one absolute scheme accepted: "https", or "http" for a gateway that
    runs without TLS.
    """
    if not raw or len(raw) > _MAX_LENGTH or not raw.isascii():
        return default
    if not _SAFE_CHARS.fullmatch(raw):
        return default  # whitespace, controls, backslash, quotes, non-ASCII …
    try:
        layers = _layers(raw)
    except UnicodeDecodeError:
        return default
    if any(_dangerous(layer) for layer in layers[1:]) or "\\" in raw:
        return default
    if _relative_ok(raw):
        return raw if all(_relative_ok(layer) for layer in layers) else default
    return _absolute(raw, layers, {h.lower() for h in allowed_hosts}, scheme) or default


def _absolute(raw: str, layers: list[str], hosts: set[str], scheme: str) -> str | None:
    prefix = scheme + "://"
    if not raw.startswith(prefix):
        return None  # also refuses "HTTPS://", "https:evil", "javascript:", "//evil"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        return None
    netloc = parts.netloc
    if not netloc or "@" in netloc or "%" in netloc or "[" in netloc:
        return None  # user-info (https://good@evil), encoded hosts, IPv6 literals
    host = (netloc.rsplit(":", 1)[0] if ":" in netloc else netloc).lower()
    if not _HOST.fullmatch(host) or host not in hosts:
        return None
    if ":" in netloc and (port is None or not 0 < port < 65536):
        return None
    path = parts.path or "/"
    if not path.startswith("/") or any(layer.startswith(prefix + host + "//")
                                       for layer in layers):
        return None
    rebuilt = f"{scheme}://{host}{':' + str(port) if port is not None else ''}{path}"
    if parts.query:
        rebuilt += "?" + parts.query
    if parts.fragment:
        rebuilt += "#" + parts.fragment
    return rebuilt
