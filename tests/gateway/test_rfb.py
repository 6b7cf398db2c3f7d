"""The RFB filter without sockets: handshake tables, message framing, and fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sekisho.gateway.rfb import (
    HEXTILE,
    RAW,
    RRE,
    ZRLE,
    RfbFilter,
    RfbViolation,
)

PIXEL_FORMAT_32 = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
SERVER_INIT = struct.pack(">HH", 64, 48) + PIXEL_FORMAT_32 + struct.pack(">I", 4) + b"desk"


def connected(clipboard: bool = False, security: int = 1) -> RfbFilter:
    """A filter through a 3.8 handshake (security None or VNC auth) and ServerInit."""
    f = RfbFilter(clipboard=clipboard)
    assert f.server_data(b"RFB 003.008\n") == b"RFB 003.008\n"
    assert f.client_data(b"RFB 003.008\n") == b"RFB 003.008\n"
    assert f.server_data(b"\x03\x10\x01\x02") == b"\x02\x01\x02"  # Tight (16) removed
    assert f.client_data(bytes([security])) == bytes([security])
    if security == 2:
        assert f.server_data(b"C" * 16) == b"C" * 16
        assert f.client_data(b"R" * 16) == b"R" * 16
    assert f.server_data(b"\x00\x00\x00\x00") == b"\x00\x00\x00\x00"
    assert f.client_data(b"\x01") == b"\x01"
    assert f.server_data(SERVER_INIT) == SERVER_INIT
    assert f.ready
    return f


def set_encodings(*encodings: int) -> bytes:
    return struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings)


def update(*rects: bytes) -> bytes:
    return struct.pack(">BxH", 0, len(rects)) + b"".join(rects)


def rect(encoding: int, w: int, h: int, payload: bytes) -> bytes:
    return struct.pack(">HHHHi", 0, 0, w, h, encoding) + payload


def test_handshake_none_and_vnc_auth() -> None:
    assert connected(security=1).stats.security_types_removed == 1
    assert connected(security=2).ready


@pytest.mark.parametrize("minor", [3, 7])
def test_older_versions(minor: int) -> None:
    f = RfbFilter()
    f.server_data(b"RFB 003.008\n")
    version = f"RFB 003.00{minor}\n".encode()
    assert f.client_data(version) == version
    if minor == 3:
        assert f.server_data(b"\x00\x00\x00\x01") == b"\x00\x00\x00\x01"
    else:
        assert f.server_data(b"\x01\x01") == b"\x01\x01"
        assert f.client_data(b"\x01") == b"\x01"
    assert f.client_data(b"\x01") == b"\x01"  # no SecurityResult for None before 3.8
    assert f.server_data(SERVER_INIT) == SERVER_INIT


def test_only_uninspectable_security_types_is_refused() -> None:
    f = RfbFilter()
    f.server_data(b"RFB 003.008\n")
    f.client_data(b"RFB 003.008\n")
    out = f.server_data(b"\x02\x13\x10")  # VeNCrypt, Tight
    assert out[0] == 0 and b"None" in out
    assert f.finished


@pytest.mark.parametrize(("server", "client", "code"), [
    (b"RFB 003.889\n", b"", "version"),
    (b"RFB 004.001\n", b"", "version"),
    (b"RFB 003.007\n", b"RFB 003.008\n", "version"),  # client above the server
])
def test_bad_versions(server: bytes, client: bytes, code: str) -> None:
    f = RfbFilter()
    with pytest.raises(RfbViolation) as err:
        f.server_data(server)
        f.client_data(client)
    assert err.value.code == code


def test_client_choosing_a_removed_security_type_is_refused() -> None:
    f = RfbFilter()
    f.server_data(b"RFB 003.008\n")
    f.client_data(b"RFB 003.008\n")
    f.server_data(b"\x02\x10\x01")
    with pytest.raises(RfbViolation, match="security-type"):
        f.client_data(b"\x10")


def test_out_of_turn_bytes_are_violations() -> None:
    f = RfbFilter()
    with pytest.raises(RfbViolation, match="out-of-turn"):
        f.client_data(b"RFB 003.008\n")  # before the server's version
    f = RfbFilter()
    f.server_data(b"RFB 003.008\n")
    f.client_data(b"RFB 003.008\n")
    f.server_data(b"\x01\x01")
    with pytest.raises(RfbViolation, match="out-of-turn"):
        f.client_data(b"\x01\x01")  # ClientInit before the SecurityResult


def test_client_cut_text_dropped_without_clipboard() -> None:
    f = connected(clipboard=False)
    secret = "秘密".encode()
    message = struct.pack(">B3xI", 6, len(secret)) + secret
    key = struct.pack(">BBxxI", 4, 1, 0x61)
    # The dropped text vanishes; the key event after it still crosses, byte for byte.
    assert f.client_data(message + key) == key
    assert f.stats.client_cut_dropped == 1


def test_client_cut_text_passes_when_allowed() -> None:
    f = connected(clipboard=True)
    message = struct.pack(">B3xI", 6, 5) + b"hello"
    assert f.client_data(message) == message


def test_server_cut_text_dropped_in_pieces() -> None:
    f = connected(clipboard=False)
    message = struct.pack(">B3xI", 3, 6) + b"secret" + b"\x02"  # then a Bell
    out = b"".join(f.server_data(bytes([b])) for b in message)
    assert out == b"\x02"
    assert f.stats.server_cut_dropped == 1


def test_extended_clipboard_is_a_violation() -> None:
    f = connected(clipboard=True)
    with pytest.raises(RfbViolation, match="extended-clipboard"):
        f.client_data(struct.pack(">B3xi", 6, -8))


def test_set_encodings_keeps_only_framable_ones() -> None:
    f = connected()
    asked = (7, 50, -260, ZRLE, 21, HEXTILE, RRE, 6, RAW, -26, -250, -223, -224, -258, -261,
             -308, -309, -312, -313, -307, 0xC0A1E5CE - 2**32, -316, 0x574D5664, -239)
    out = f.client_data(set_encodings(*asked))
    kept = struct.unpack(f">{(len(out) - 4) // 4}i", out[4:])
    assert kept == (ZRLE, HEXTILE, RRE, 6, RAW, -26, -250, -223, -224, -239)
    assert f.stats.encodings_removed == len(asked) - len(kept)


@pytest.mark.parametrize("kind", [7, 150, 248, 250, 251, 255, 1, 200])
def test_unknown_client_messages_close(kind: int) -> None:
    f = connected()
    with pytest.raises(RfbViolation, match="client-message"):
        f.client_data(bytes([kind]) + b"\x00" * 20)


@pytest.mark.parametrize("kind", [4, 5, 150, 248, 250, 252, 255])
def test_unknown_server_messages_close(kind: int) -> None:
    f = connected()
    with pytest.raises(RfbViolation, match="server-message"):
        f.server_data(bytes([kind]) + b"\x00" * 20)


def test_rectangle_in_an_encoding_not_offered_closes() -> None:
    f = connected()
    f.client_data(set_encodings(RAW))
    with pytest.raises(RfbViolation, match="encoding"):
        f.server_data(update(rect(ZRLE, 1, 1, b"\x00\x00\x00\x00")))
    f = connected()
    f.client_data(set_encodings(7, RAW))  # Tight asked for, but removed by the filter
    with pytest.raises(RfbViolation, match="encoding"):
        f.server_data(update(rect(7, 1, 1, b"\x00")))


def test_framebuffer_update_encodings_frame_exactly() -> None:
    f = connected()
    f.client_data(set_encodings(ZRLE, HEXTILE, RRE, 1, RAW, -239, -223, -224))
    raw = rect(RAW, 2, 2, b"p" * 16)
    copy = rect(1, 2, 2, b"\x00\x01\x00\x02")
    rre = rect(RRE, 4, 4, struct.pack(">I", 2) + b"b" * 4 + (b"c" * 4 + b"\x00" * 8) * 2)
    zrle = rect(ZRLE, 64, 48, struct.pack(">I", 5) + b"zzzzz")
    # Hextile 20x17: four tiles (16x16, 4x16, 16x1, 4x1): raw, bg+fg+subrects, coloured
    # subrects, nothing (background carried over).
    tiles = (b"\x01" + b"r" * 16 * 16 * 4
             + b"\x0e" + b"B" * 4 + b"F" * 4 + b"\x02" + b"\x00\x11" * 2
             + b"\x18" + b"\x01" + b"C" * 4 + b"\x00\x00"
             + b"\x00")
    hextile = rect(HEXTILE, 20, 17, tiles)
    cursor = rect(-239, 9, 2, b"k" * 9 * 2 * 4 + b"m" * 2 * 2)
    resize = rect(-223, 80, 60, b"")
    message = update(raw, copy, rre, zrle, hextile, cursor, resize) + b"\x02"
    assert f.server_data(message) == message
    # LastRect ends an update of unknown length.
    last = struct.pack(">BxH", 0, 0xFFFF) + raw + rect(-224, 0, 0, b"") + b"\x02"
    assert f.server_data(last) == last


def test_hextile_bad_subencoding_closes() -> None:
    f = connected()
    f.client_data(set_encodings(HEXTILE))
    with pytest.raises(RfbViolation, match="hextile"):
        f.server_data(update(rect(HEXTILE, 16, 16, b"\x40")))


def test_pixel_format_change_after_updates_closes() -> None:
    f = connected()
    pf16 = bytes([16, 16, 0, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0])
    assert f.client_data(b"\x00\x00\x00\x00" + pf16)  # before any request: fine
    f.client_data(struct.pack(">BBHHHH", 3, 0, 0, 0, 64, 48))
    assert f.server_data(update(rect(RAW, 2, 1, b"p" * 4))) == update(rect(RAW, 2, 1, b"p" * 4))
    with pytest.raises(RfbViolation, match="pixel-format"):
        f.client_data(b"\x00\x00\x00\x00" + PIXEL_FORMAT_32)


def test_input_events_are_counted() -> None:
    f = connected()
    f.client_data(struct.pack(">BBxxI", 4, 1, 0x61) + struct.pack(">BBHH", 5, 0, 3, 4))
    assert f.stats.input_events == 2


# -- fuzzing: whatever arrives, the filter frames it or refuses it, never passes it blind --

CLIENT_MESSAGES = st.one_of(
    st.builds(lambda t: struct.pack(">B3xI", 6, len(t)) + t, st.binary(max_size=40)),
    st.builds(lambda k: struct.pack(">BBxxI", 4, 1, k), st.integers(0, 2**32 - 1)),
    st.builds(lambda x, y: struct.pack(">BBHH", 5, 0, x, y), st.integers(0, 65535),
              st.integers(0, 65535)),
    st.builds(lambda e: set_encodings(*e), st.lists(st.integers(-2**31, 2**31 - 1),
                                                    max_size=8)),
    st.just(struct.pack(">BBHHHH", 3, 1, 0, 0, 64, 48)),
    st.binary(min_size=1, max_size=12),  # garbage
)


@settings(max_examples=300, deadline=None)
@given(st.lists(CLIENT_MESSAGES, max_size=12), st.integers(1, 7))
def test_fuzz_client_stream(messages: list[bytes], chunk: int) -> None:
    f = connected(clipboard=False)
    stream = b"".join(messages)
    out = b""
    try:
        for i in range(0, len(stream), chunk):
            out += f.client_data(stream[i:i + chunk])
    except RfbViolation:
        return
    # Nothing that left the filter is a ClientCutText, and it re-parses to the same bytes.
    again = connected(clipboard=False)
    assert again.client_data(out) == out
    assert again.stats.client_cut_dropped == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 9))
def test_fuzz_server_stream(data: bytes, chunk: int) -> None:
    f = connected(clipboard=False)
    f.client_data(set_encodings(ZRLE, HEXTILE, RRE, 1, RAW, -239, -223, -224))
    out = b""
    try:
        for i in range(0, len(data), chunk):
            out += f.server_data(data[i:i + chunk])
    except RfbViolation:
        return
    assert len(out) <= len(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=64))
def test_fuzz_handshake(server: bytes, client: bytes) -> None:
    f = RfbFilter()
    try:
        f.server_data(b"RFB 003.008\n" + server)
        f.client_data(b"RFB 003.008\n" + client)
    except RfbViolation:
        pass
