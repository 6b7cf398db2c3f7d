"""Request-target normalisation: the one place that decides what path a request names.

Rule: the policy decides on `Target.path` and the upstream receives `Target.upstream`, and
percent-decoding `upstream` gives back exactly `path`. Any target whose meaning could differ
between Sekisho and an upstream (encoded slash or backslash, `;` parameters, NUL and other
control characters, broken escapes or UTF-8, an absolute-form target naming another host) is
flagged `ambiguous` so the gateway can refuse it — the classic path-confusion attack is a
proxy and a backend that disagree about which path `/public/..%2fadmin` names.
"""

from __future__ import annotations

from dataclasses import dataclass

_HEX = "0123456789ABCDEF"
_UNRESERVED = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
# Characters that may stand raw in a path segment (RFC 3986 pchar minus unreserved/pct).
_SUB_DELIMS_PCHAR = frozenset(b"!$&'()*+,;=:@")
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Target:
    """A normalised request-target. `ambiguous` is "" or a reason code (see module doc)."""

    path: str  # fully decoded, dot segments resolved, slashes collapsed: what policy sees
    upstream: str  # the same path re-encoded canonically: what the upstream receives
    query: str  # raw query string without "?", passed through unchanged
    ambiguous: str = ""
    authority: str = ""  # host of an absolute-form target, lower-case, without port


class InvalidTarget(ValueError):
    """The request-target cannot be a path at all (→ 400 whatever the route says)."""


def _encode_byte(byte: int) -> str:
    return "%" + _HEX[byte >> 4] + _HEX[byte & 15]


def _split_authority(target: bytes) -> tuple[str, bytes]:
    scheme_end = target.index(b"://")
    rest = target[scheme_end + 3:]
    slash = rest.find(b"/")
    cut = [i for i in (slash, rest.find(b"?")) if i >= 0]
    end = min(cut) if cut else len(rest)
    authority = rest[:end].decode("ascii", "replace").lower()
    path = rest[end:] or b"/"
    if path.startswith(b"?"):
        path = b"/" + path
    if "@" in authority:
        raise InvalidTarget("userinfo in request-target")
    return strip_port(authority), path


def strip_port(authority: str) -> str:
    """`Example.JP:443` → `example.jp`; `[::1]:8443` → `::1`; trailing dot removed."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        end = authority.find("]")
        return authority[1:end] if end > 0 else authority
    if authority.count(":") == 1:
        authority = authority.split(":", 1)[0]
    return authority.rstrip(".")


def _decode_segment(raw: bytes, flags: list[str]) -> tuple[str, str]:
    """One raw segment → (decoded text, canonical encoding)."""
    decoded = bytearray()
    canonical: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte == 0x25:  # "%"
            if i + 2 >= n:
                flags.append("invalid-escape")
                return "", ""
            hi, lo = raw[i + 1], raw[i + 2]
            if hi not in _HEXDIGITS or lo not in _HEXDIGITS:
                flags.append("invalid-escape")
                return "", ""
            value = int(raw[i + 1:i + 3], 16)
            if value == 0x2F:
                flags.append("encoded-slash")
            elif value == 0x5C:
                flags.append("encoded-backslash")
            elif value == 0:
                flags.append("nul")
            elif value < 0x20 or value == 0x7F:
                flags.append("control-char")
            decoded.append(value)
            canonical.append(chr(value) if value in _UNRESERVED else _encode_byte(value))
            i += 3
            continue
        if byte < 0x21 or byte == 0x7F:
            flags.append("control-char")
        elif byte == 0x5C:
            flags.append("backslash")
        elif byte == 0x3B:
            flags.append("path-parameter")
        decoded.append(byte)
        if byte in _UNRESERVED or byte in _SUB_DELIMS_PCHAR:
            canonical.append(chr(byte))
        else:
            canonical.append(_encode_byte(byte))
        i += 1
    try:
        text = decoded.decode("utf-8")  # strict: rejects overlong forms and surrogates
    except UnicodeDecodeError:
        flags.append("invalid-utf8")
        return decoded.decode("utf-8", "replace"), "".join(canonical)
    return text, "".join(canonical)


def normalise(target: bytes, host: str = "") -> Target:
    """Normalise a raw request-target (origin-form or absolute-form).

    Raises `InvalidTarget` for things that are not a path (`*`, empty, no leading slash).
    """
    if not target:
        raise InvalidTarget("empty request-target")
    authority = ""
    if target[:1] != b"/":
        lowered = target[:8].lower()
        if lowered.startswith((b"http://", b"https://")):
            authority, target = _split_authority(target)
        else:
            raise InvalidTarget("request-target is not origin-form")
    raw_path, _, raw_query = target.partition(b"?")
    flags: list[str] = []
    if authority and host and authority != host:
        flags.append("absolute-form-host")
    if b"#" in raw_path:
        flags.append("fragment")
    try:
        query = raw_query.decode("ascii")
    except UnicodeDecodeError:
        query = raw_query.decode("latin-1")
        flags.append("control-char")
    if any(c < 0x21 or c == 0x7F for c in raw_query):
        flags.append("control-char")

    out_text: list[str] = []
    out_raw: list[str] = []
    parts = raw_path.split(b"/")
    trailing = False
    for index, raw_segment in enumerate(parts[1:], start=1):
        last = index == len(parts) - 1
        if not raw_segment:
            trailing = last
            continue  # duplicate slash collapses
        text, canonical = _decode_segment(raw_segment, flags)
        if text == ".":
            trailing = last
            continue
        if text == "..":
            if out_text:
                out_text.pop()
                out_raw.pop()
            trailing = last
            continue
        trailing = False
        out_text.append(text)
        out_raw.append(canonical)
    path = "/" + "/".join(out_text)
    upstream = "/" + "/".join(out_raw)
    if trailing and out_text:
        path += "/"
        upstream += "/"
    return Target(path, upstream, query, flags[0] if flags else "", authority)
