"""Header hygiene between a client and an upstream: pure functions over header lists.

Rules (each blocks an attack):
- hop-by-hop headers (Connection and the names it lists, Keep-Alive, TE, Trailer, …) are
  dropped: a client must not make us strip an identity header by listing it in Connection;
- every header the gateway owns (`X-Sekisho-*`, any case, `_` for `-`) is dropped, so a
  client can never forge an assertion or identity header (WSGI/CGI stacks fold `_` into `-`);
- `Forwarded` and `X-Forwarded-*` are rebuilt from the TCP peer; incoming values are trusted
  only when the peer is a configured trusted proxy (spoofed client address);
- the gateway's own session and CSRF cookies are removed, so upstreams never see tokens.
Names are compared lower-case with `_` read as `-`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

from sekisho.config.model import IPNetwork

Header = tuple[bytes, bytes]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
})
# Rebuilt by the gateway for every forwarded request; the client's copies never pass.
MANAGED = frozenset({
    b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"x-forwarded-port", b"x-real-ip", b"content-length", b"host", b"expect",
})
OWNED_PREFIX = b"x-sekisho"
_DROPPED = HOP_BY_HOP | MANAGED

# Raw name -> canonical name. The same few dozen spellings arrive on every request, so one
# dict lookup replaces lower() + replace(); bounded, so a client sending endless new names
# only misses the cache (the result is identical either way).
_CANONICAL: dict[bytes, bytes] = {}
_CANONICAL_MAX = 2048


def canonical_name(name: bytes) -> bytes:
    key = _CANONICAL.get(name)
    if key is None:
        key = name.lower().replace(b"_", b"-")
        if len(_CANONICAL) < _CANONICAL_MAX:
            _CANONICAL[name] = key
    return key


def _tokens(value: bytes) -> set[bytes]:
    return {canonical_name(t.strip()) for t in value.split(b",") if t.strip()}


def connection_tokens(headers: Iterable[Header]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if canonical_name(name) == b"connection":
            tokens.update(_tokens(value))
    return frozenset(tokens)


def strip_cookies(value: bytes, names: frozenset[bytes]) -> bytes:
    """The Cookie header value without the named cookies (b"" when none remain)."""
    kept = []
    for part in value.split(b";"):
        pair = part.strip()
        if not pair:
            continue
        if pair.split(b"=", 1)[0].strip() in names:
            continue
        kept.append(pair)
    return b"; ".join(kept)


# What to do with a header line, by its raw name: the class of a name is all the
# per-request loop (`_sort`) needs, so the usual line costs one dict lookup. Each rule's
# answers are cached like `_CANONICAL` (bounded; the answer is the same either way).
_KEEP, _DROP, _COOKIE, _CONNECTION, _LENGTH, _CHUNKED = range(6)
_REQUEST_KINDS: dict[bytes, int] = {}
_RESPONSE_KINDS: dict[bytes, int] = {}


def _request_kind(name: bytes) -> int:
    key = canonical_name(name)
    return (_CONNECTION if key == b"connection"
            else _DROP if key in _DROPPED or key.startswith(OWNED_PREFIX)
            else _COOKIE if key == b"cookie" else _KEEP)


def _response_kind(name: bytes) -> int:
    """Framing only from the exact names (`response_fields`); `_` look-alikes dropped."""
    key = canonical_name(name)
    exact = b"_" not in name  # spelled as llhttp frames by, not a look-alike
    return (_CONNECTION if key == b"connection"
            else (_CHUNKED if exact else _DROP) if key == b"transfer-encoding"
            else _DROP if key in HOP_BY_HOP
            else (_LENGTH if exact else _DROP) if key == b"content-length" else _KEEP)


def _sort(headers: Sequence[Header], kinds: dict[bytes, int], rule: Callable[[bytes], int],
          cookie_names: frozenset[bytes] = frozenset(),
          ) -> tuple[list[bytes], set[bytes], bytes | None, bool]:
    """One pass over `headers` by `rule`: the kept lines flattened for writing (`name`, `: `,
    `value`, CRLF, …; cookies without `cookie_names`), the names the Connection headers list,
    the Content-Length value (or None) and whether the body is chunked."""
    known = kinds.get
    listed: set[bytes] = set()
    length: bytes | None = None
    chunked = False
    out: list[bytes] = []
    for name, value in headers:
        kind = known(name)
        if kind is None:
            kind = rule(name)
            if len(kinds) < _CANONICAL_MAX:
                kinds[name] = kind
        if kind == _KEEP:
            out += (name, b": ", value, b"\r\n")
        elif kind == _COOKIE:
            kept = strip_cookies(value, cookie_names)
            if kept:
                out += (name, b": ", kept, b"\r\n")
        elif kind == _CONNECTION:
            listed |= _tokens(value)
        elif kind == _LENGTH:
            length = value.strip()
        elif kind == _CHUNKED:
            chunked = chunked or b"chunked" in value.lower()
    return out, listed, length, chunked


def _without(fields: list[bytes], names: set[bytes]) -> list[bytes]:
    """Flattened `fields` without the lines whose canonical name is in `names`."""
    return [part for index in range(0, len(fields), 4)
            if canonical_name(fields[index]) not in names for part in fields[index:index + 4]]


def upstream_headers(
    headers: Sequence[Header],
    *,
    cookie_names: frozenset[bytes],
    websocket: bool = False,
) -> list[bytes]:
    """The client's end-to-end headers that may reach the upstream, in arrival order,
    flattened for writing (`name`, `: `, `value`, CRLF, …).

    With `websocket`, `Upgrade`/`Connection: upgrade` and the `Sec-WebSocket-*` headers pass.
    """
    out, listed, _, _ = _sort(headers, _REQUEST_KINDS, _request_kind, cookie_names)
    listed -= _DROPPED  # dropped anyway (the usual `keep-alive`): no second pass for them
    if listed:  # named in Connection: hop-by-hop by declaration
        out = _without(out, listed)
    if websocket:
        out += (b"Connection", b": ", b"Upgrade", b"\r\n", b"Upgrade", b": ", b"websocket",
                b"\r\n")
    return out


def response_fields(headers: Sequence[Header]) -> tuple[list[bytes], bytes | None, bool]:
    """The upstream response headers that reach the client, flattened for writing (`name`,
    `: `, `value`, CRLF, …), and apart how the upstream framed its body: its Content-Length
    value (or None) and whether it was chunked. Hop-by-hop headers, those its Connection header
    names, and the framing are dropped (re-added by us). One pass; the names a Connection header
    lists that are hop-by-hop anyway (the usual `keep-alive`) cost no second one.

    The framing is read as the upstream's parser (llhttp) reads it, from the exact names: a
    `Content_Length` taken for the length would cut the body short and let its rest open the
    next response on the client's connection. Such look-alikes are dropped with the framing."""
    out, listed, length, chunked = _sort(headers, _RESPONSE_KINDS, _response_kind)
    listed -= HOP_BY_HOP
    if listed:
        out = _without(out, listed)
    return out, length, chunked


def _parse_ip(text: bytes) -> IPAddress | None:
    value = text.strip().decode("latin-1")
    if value.startswith("[") and "]" in value:
        value = value[1:value.index("]")]
    elif value.count(":") == 1 and "." in value:  # "1.2.3.4:5678"
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _trusted(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address in net for net in networks)


def client_address(
    peer: IPAddress, xff: Sequence[bytes], trusted: Sequence[IPNetwork]
) -> tuple[IPAddress, list[IPAddress]]:
    """(the real client, the X-Forwarded-For chain to send on).

    Incoming X-Forwarded-For is believed only when the TCP peer is a trusted proxy; then the
    client is the right-most address that is not itself trusted. A malformed entry stops the
    walk: the last trusted hop is taken as the client rather than anything it passed along.
    """
    if not trusted or not _trusted(peer, trusted) or not xff:
        return peer, [peer]
    entries = [e for value in xff for e in value.split(b",") if e.strip()]
    chain: list[IPAddress] = [peer]
    client = peer
    for raw in reversed(entries):
        address = _parse_ip(raw)
        if address is None:
            break
        chain.append(address)
        client = address
        if not _trusted(address, trusted):
            break
    chain.reverse()
    return client, chain


def forwarded_headers(
    chain: Sequence[IPAddress], proto: str, host: bytes
) -> list[bytes]:
    """X-Forwarded-For/-Proto/-Host, flattened for writing like `upstream_headers`."""
    return [b"X-Forwarded-For", b": ", ", ".join(str(a) for a in chain).encode("ascii"),
            b"\r\n", b"X-Forwarded-Proto", b": ", proto.encode("ascii"), b"\r\n",
            b"X-Forwarded-Host", b": ", host, b"\r\n"]


def trusted_forwarded_value(
    headers: Sequence[Header], name: bytes, peer_trusted: bool
) -> bytes | None:
    """The last value of X-Forwarded-Proto/-Host, only when the peer is a trusted proxy."""
    if not peer_trusted:
        return None
    found = None
    for key, value in headers:
        if canonical_name(key) == name:
            found = value.split(b",")[-1].strip()
    return found


def is_trusted(peer: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return bool(trusted) and _trusted(peer, trusted)
