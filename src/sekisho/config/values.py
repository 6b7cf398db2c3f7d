"""Parsers for the value types the schema can only describe: durations, addresses, URLs.

Each parser returns the canonical value or raises `Invalid(ja, en)`. The route URL rules are
strict on purpose: the gateway matches host and path prefix after normalisation, so a prefix
that could be spelled two ways (`%2F`, `..`, `//`, `;`) would let a request reach a route
under a policy meant for another (path confusion, CWE-22/CWE-436).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

from sekisho.config.model import IPNetwork, ListenAddress

_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# RFC 3986 pchar minus '%' and ';' (see module docstring), plus '/'.
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,=:@/-]*$")


class Invalid(ValueError):
    """A value that does not parse; `ja` and `en` say what is expected."""

    def __init__(self, ja: str, en: str) -> None:
        super().__init__(en)
        self.ja = ja
        self.en = en


def parse_duration(value: int | str, *, allow_zero: bool = False) -> float:
    """`30` -> 30.0; `"200ms"` -> 0.2; `"1h30m"` -> 5400.0."""
    if isinstance(value, int):
        seconds = float(value)
    else:
        if not _DURATION_PART.sub("", value) == "" or not value:
            raise Invalid(
                "時間の長さの形式が正しくありません", f"is not a duration (got {value!r})"
            )
        seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(value))
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise Invalid("0 より長い時間が必要です", f"must be longer than zero (got {value!r})")
    return seconds


def parse_listen(value: str) -> ListenAddress:
    """`"0.0.0.0:8443"`, `"[::]:8443"`, `"localhost:9100"`."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise Invalid("アドレス:ポート の形式が必要です", f"must be address:port (got {value!r})")
    port = int(port_text)
    if not 0 <= port <= 65535:  # 0: the system picks a free port (tests)
        raise Invalid("ポート番号は 0〜65535 が必要です", f"port must be 0–65535 (got {port})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(
                "[ ] の中は IPv6 アドレスが必要です",
                f"must be an IPv6 address inside [ ] (got {value!r})",
            ) from None
        return ListenAddress(host, port)
    if host == "localhost":
        return ListenAddress(host, port)
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        hint = '; write IPv6 as "[::1]:8443"' if ":" in host else ""
        raise Invalid(
            "IP アドレス（または localhost）とポートが必要です",
            f"must be an IP address (or localhost) and a port{hint} (got {value!r})",
        ) from None
    return ListenAddress(host, port)


def listeners_overlap(a: ListenAddress, b: ListenAddress) -> bool:
    """Would binding `a` and `b` share a socket (same port, same or wildcard address)?"""
    wildcard = {"0.0.0.0", "::"}  # noqa: S104 - compared, not bound
    return a.port == b.port != 0 and (a.host == b.host or a.host in wildcard or b.host in wildcard)


def parse_cidr(value: str) -> IPNetwork:
    """`"10.0.0.0/24"`; host bits set and catch-all networks are refused."""
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise Invalid(
                '"10.0.0.0/24" のような CIDR が必要です',
                f'must be a CIDR like "10.0.0.0/24" (got {value!r})',
            ) from None
        # Refused rather than silently widened: "10.0.0.5/24" may mean a single host.
        raise Invalid(
            f"ホスト部のビットが立っています。{loose} と書いてください",
            f"has host bits set; write the network address {loose} (got {value!r})",
        ) from None
    if network.prefixlen == 0:
        # Trusting X-Forwarded-For from every peer lets any client spoof its source IP.
        raise Invalid(
            "すべてのアドレスを信頼することはできません（送信元 IP の詐称を許します）",
            f"cannot trust every address: any client could spoof its source IP (got {value!r})",
        )
    return network


def _split(value: str) -> SplitResult:
    if any(ch.isspace() or ord(ch) < 0x20 for ch in value):
        raise Invalid("空白や制御文字は使えません", "must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise Invalid("URL として読めません", "is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise Invalid(
            "http:// または https:// で始まる URL が必要です", "must be an http:// or https:// URL"
        )
    if "@" in parts.netloc:
        raise Invalid(
            "URL にユーザー名やパスワードは書けません（秘密は env: / file: で）",
            "must not contain user:password@ (secrets go by env: / file: reference)",
        )
    if not parts.hostname:
        raise Invalid("ホスト名が必要です", "must have a host name")
    if "?" in value or "#" in value:
        raise Invalid(
            "クエリ（?）やフラグメント（#）は書けません",
            "must not have a query (?) or fragment (#)",
        )
    return parts


def canonical_host(host: str) -> str:
    """Lower-case ASCII host; Japanese domain names become punycode (IDNA)."""
    host = host.rstrip(".").lower()
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise Invalid(
            "ホスト名が正しくありません", f"is not a valid host name (got {host!r})"
        ) from None
    if not all(_LABEL.match(label) for label in ascii_host.split(".")):
        raise Invalid("ホスト名が正しくありません", f"is not a valid host name (got {host!r})")
    return ascii_host


def parse_from(value: str) -> tuple[str, str]:
    """A route's `from` -> (host, path prefix); the prefix has no trailing '/' except `/`."""
    parts = _split(value)
    if parts.port is not None or parts.netloc.endswith(":"):
        raise Invalid(
            "from にポート番号は書けません（ルートはホスト名で照合します）",
            "must not have a port: routes match on the host name only",
        )
    host = canonical_host(parts.hostname or "")
    path = parts.path or "/"
    if not _PATH.match(path):
        raise Invalid(
            "パス接頭辞には英数字と - . _ ~ / などだけが使えます（%・;・\\ は不可）",
            f"path prefix may use only letters, digits and - . _ ~ / etc. "
            f"(no %, ; or \\) (got {path!r})",
        )
    segments = path.split("/")[1:]
    if "//" in path or any(s in (".", "..") for s in segments):
        raise Invalid(
            "パス接頭辞に // や . や .. は書けません（正規化済みで書いてください）",
            f"path prefix must be normalised: no //, . or .. segments (got {path!r})",
        )
    if path != "/":
        path = path.rstrip("/")
    return host, path


def parse_to(value: str) -> str:
    """A route's upstream URL, checked and returned without a trailing '/'."""
    parts = _split(value)
    return value.rstrip("/") if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}"
