"""The RFB (VNC, RFC 6143) filter of a screen-transfer connection: sans-IO, both directions.

The rule: every byte between the browser and the VNC server is framed by this module, by
message type and exact length, and only messages on an allow-list cross. A modified client
(or a compromised desktop) cannot move data through a side channel the route does not allow:
ClientCutText and ServerCutText (the clipboard) are dropped unless the route allows the
clipboard, and every message type, security type and encoding that this filter cannot frame
exactly — where file transfer, printing, machine power control and the extended clipboard
live — is removed from what each side is offered, or ends the connection. Nothing unframeable
is ever passed through: a parser that cannot tell where a message ends raises `RfbViolation`
and the shell closes both sockets (fail closed).

The gateway does not terminate VNC authentication: it passes "None" and "VNC Authentication"
through untouched (the challenge and response cross as they are) and removes every other
security type, among them TLS-wrapping ones (VeNCrypt, RA2): an encrypted stream would blind
the filter. Each direction is a generator that asks for bytes (`_Read`), lets bytes through
without copying them into a buffer (`_Pass`, pixel data), discards them (`_Skip`, a dropped
clipboard) or waits for the other direction (`_Sync`): the handshake is lock-step, so a peer
that speaks out of turn is a violation, not something to buffer.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

# Security types passed through: 1 None, 2 VNC Authentication. Every other one (Tight 16,
# whose capability negotiation enables TightVNC file transfer; VeNCrypt 19 and RA2 5/6/129,
# which encrypt the stream; vendor types) is removed from the server's offer.
SECURITY_TYPES = (1, 2)
# Encodings whose rectangles this filter frames exactly (the allow-list of SetEncodings).
RAW, COPYRECT, RRE, HEXTILE, ZLIB, ZRLE = 0, 1, 2, 5, 6, 16
DESKTOP_SIZE, LAST_RECT, CURSOR = -223, -224, -239
RECT_ENCODINGS = frozenset({RAW, COPYRECT, RRE, HEXTILE, ZLIB, ZRLE, DESKTOP_SIZE, LAST_RECT,
                            CURSOR})
# Hints only (JPEG quality 0-9, compression 0-9): never a rectangle.
HINT_ENCODINGS = frozenset(range(-32, -22)) | frozenset(range(-256, -246))
ALLOWED_ENCODINGS = RECT_ENCODINGS | HINT_ENCODINGS
MAX_ENCODINGS = 1024  # one SetEncodings; noVNC sends about 25
MAX_NAME = 4096  # desktop name in ServerInit
MAX_REASON = 4096  # failure reason strings
MAX_CUT_TEXT = 1024 * 1024  # an allowed clipboard transfer; longer ones are dropped
_VERSION = re.compile(rb"\ARFB 003\.00([378])\n\Z")
_U32 = struct.Struct(">I")


class RfbViolation(Exception):
    """The stream broke the protocol or the allow-list: close both sides. `code` is stable."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(slots=True)
class FilterStats:
    """What the filter did, for the audit record at the end of the session."""

    client_cut_dropped: int = 0
    server_cut_dropped: int = 0
    encodings_removed: int = 0
    security_types_removed: int = 0
    input_events: int = 0  # KeyEvent + PointerEvent: the idle timeout counts only these


@dataclass(slots=True)
class _Read:
    n: int


@dataclass(slots=True)
class _Pass:
    n: int


@dataclass(slots=True)
class _Skip:
    n: int


@dataclass(slots=True)
class _Emit:
    data: bytes


class _Sync:
    """Resume once at least one byte is there (not consumed): state from the other side."""


_SYNC = _Sync()
_Op = _Read | _Pass | _Skip | _Emit | _Sync
_Parser = Generator[_Op, bytes, None]


@dataclass(slots=True)
class _Shared:
    """The handshake state both directions read; each field is set by exactly one side."""

    server_minor: int = 0
    minor: int = 0  # negotiated: 3, 7 or 8
    offered: bytes | None = None  # security types after filtering (3.7+)
    security: int = 0
    challenged: bool = False
    auth_ok: bool = False
    client_init: bool = False
    ready: bool = False  # ServerInit passed: normal messages from here on
    bytes_per_pixel: int = 4
    updates_requested: bool = False
    encodings: set[int] = field(default_factory=lambda: {RAW})


def _need(condition: bool, code: str, detail: str) -> None:
    if not condition:
        raise RfbViolation(code, detail)


class _Direction:
    """Drives one parser over the bytes of one direction, keeping at most one read's worth."""

    __slots__ = ("_buffer", "_gen", "_op", "_remaining", "done")

    def __init__(self, gen: _Parser) -> None:
        self._gen = gen
        self._buffer = bytearray()
        self._op: _Op = next(gen)
        self._remaining = 0
        self.done = False
        self._start_op()

    def _start_op(self) -> None:
        op = self._op
        if isinstance(op, _Pass | _Skip):
            self._remaining = op.n

    def _advance(self, value: bytes, out: bytearray) -> None:
        try:
            self._op = self._gen.send(value)
            while isinstance(self._op, _Emit):
                out += self._op.data
                self._op = self._gen.send(b"")
        except StopIteration:
            self.done = True
            return
        self._start_op()

    def feed(self, data: bytes) -> bytes:
        if self.done:
            if data:
                raise RfbViolation("after-end", "bytes after the stream ended")
            return b""
        buffer = self._buffer
        buffer += data
        out = bytearray()
        while not self.done:
            op = self._op
            if isinstance(op, _Read):
                if len(buffer) < op.n:
                    break
                chunk = bytes(buffer[:op.n])
                del buffer[:op.n]
                self._advance(chunk, out)
            elif isinstance(op, _Pass | _Skip):
                take = min(self._remaining, len(buffer))
                if isinstance(op, _Pass):
                    out += buffer[:take]
                del buffer[:take]
                self._remaining -= take
                if self._remaining:
                    break
                self._advance(b"", out)
            elif isinstance(op, _Sync):
                if not buffer:
                    break
                self._advance(b"", out)
        return bytes(out)


class RfbFilter:
    """One screen-transfer connection's filter: `client_data` → bytes for the server,
    `server_data` → bytes for the client; either may raise `RfbViolation` (close both)."""

    def __init__(self, *, clipboard: bool = False, max_cut_text: int = MAX_CUT_TEXT) -> None:
        self.clipboard = clipboard
        self.max_cut_text = max_cut_text
        self.stats = FilterStats()
        self._state = _Shared()
        self._from_client = _Direction(self._client())
        self._from_server = _Direction(self._server())

    @property
    def finished(self) -> bool:
        """The server ended the handshake (refusal, failed authentication): close after
        delivering what `server_data` returned."""
        return self._from_server.done

    @property
    def ready(self) -> bool:
        return self._state.ready

    def client_data(self, data: bytes) -> bytes:
        return self._from_client.feed(data)

    def server_data(self, data: bytes) -> bytes:
        return self._from_server.feed(data)

    # -- server → client ------------------------------------------------------------------

    def _server(self) -> _Parser:
        state = self._state
        version = yield _Read(12)
        match = _VERSION.match(version)
        _need(match is not None, "version", "unsupported server protocol version")
        assert match is not None
        state.server_minor = int(match[1])
        yield _Emit(version)
        yield _SYNC
        _need(state.minor != 0, "out-of-turn", "server spoke before the client's version")
        if state.minor == 3:
            kind = _U32.unpack((yield _Read(4)))[0]
            if kind == 0:
                yield from self._reason(b"\x00\x00\x00\x00")
                return
            _need(kind in SECURITY_TYPES, "security-type",
                  f"the server requires security type {kind}")
            state.security = kind
            state.auth_ok = kind == 1  # None: no SecurityResult before 3.8
            yield _Emit(_U32.pack(kind))
        else:
            count = (yield _Read(1))[0]
            if count == 0:
                yield from self._reason(b"\x00")
                return
            types = yield _Read(count)
            kept = bytes(t for t in types if t in SECURITY_TYPES)
            self.stats.security_types_removed += count - len(kept)
            if not kept:
                reason = b"no security type the gateway can inspect (None, VNC Authentication)"
                yield _Emit(b"\x00" + _U32.pack(len(reason)) + reason)
                return
            state.offered = kept
            yield _Emit(bytes([len(kept)]) + kept)
        yield _SYNC
        _need(state.security != 0, "out-of-turn", "server spoke before the security choice")
        if state.security == 2:
            challenge = yield _Read(16)
            state.challenged = True
            yield _Emit(challenge)
        if state.security == 2 or state.minor == 8:
            result = yield _Read(4)
            if _U32.unpack(result)[0] != 0:
                if state.minor == 8:
                    yield from self._reason(result)
                else:
                    yield _Emit(result)
                return
            yield _Emit(result)
        state.auth_ok = True
        yield _SYNC
        _need(state.client_init, "out-of-turn", "server spoke before ClientInit")
        head = yield _Read(24)
        self._pixel_format(head[4:20])
        name_length = _U32.unpack(head[20:24])[0]
        _need(name_length <= MAX_NAME, "name-length", "desktop name too long")
        name = yield _Read(name_length)
        state.ready = True
        yield _Emit(head + name)
        handlers: dict[int, Callable[[], _Parser]] = {
            0: self._framebuffer_update, 1: self._colour_map, 2: self._bell,
            3: self._server_cut_text}
        while True:
            kind = (yield _Read(1))[0]
            handler = handlers.get(kind)
            _need(handler is not None, "server-message", f"server message type {kind}")
            assert handler is not None
            yield from handler()

    def _reason(self, prefix: bytes) -> _Parser:
        length = _U32.unpack((yield _Read(4)))[0]
        _need(length <= MAX_REASON, "reason-length", "failure reason too long")
        reason = yield _Read(length)
        yield _Emit(prefix + _U32.pack(length) + reason)

    def _pixel_format(self, pixel_format: bytes) -> None:
        bits = pixel_format[0]
        _need(bits in (8, 16, 32), "pixel-format", f"{bits} bits per pixel")
        self._state.bytes_per_pixel = bits // 8

    def _framebuffer_update(self) -> _Parser:
        state = self._state
        head = yield _Read(3)
        count = struct.unpack(">xH", head)[0]
        yield _Emit(b"\x00" + head)
        index = 0
        while count == 0xFFFF or index < count:
            index += 1
            rect = yield _Read(12)
            _, _, width, height, encoding = struct.unpack(">HHHHi", rect)
            _need(encoding in RECT_ENCODINGS and encoding in state.encodings, "encoding",
                  f"rectangle in encoding {encoding}, which was not offered")
            yield _Emit(rect)
            if encoding == LAST_RECT:
                return
            yield from self._rectangle(encoding, width, height)

    def _rectangle(self, encoding: int, width: int, height: int) -> _Parser:
        bpp = self._state.bytes_per_pixel
        if encoding == RAW:
            yield _Pass(width * height * bpp)
        elif encoding == COPYRECT:
            yield _Pass(4)
        elif encoding == RRE:
            head = yield _Read(4 + bpp)
            yield _Emit(head)
            yield _Pass(_U32.unpack(head[:4])[0] * (bpp + 8))
        elif encoding in (ZLIB, ZRLE):
            head = yield _Read(4)
            yield _Emit(head)
            yield _Pass(_U32.unpack(head)[0])
        elif encoding == HEXTILE:
            yield from self._hextile(width, height, bpp)
        elif encoding == CURSOR:
            yield _Pass(width * height * bpp + (width + 7) // 8 * height)
        # DESKTOP_SIZE: no payload

    @staticmethod
    def _hextile(width: int, height: int, bpp: int) -> _Parser:
        for top in range(0, height, 16):
            tile_h = min(16, height - top)
            for left in range(0, width, 16):
                tile_w = min(16, width - left)
                mask = (yield _Read(1))[0]
                _need(mask < 32, "hextile", f"hextile subencoding {mask}")
                yield _Emit(bytes([mask]))
                if mask & 1:  # raw tile
                    yield _Pass(tile_w * tile_h * bpp)
                    continue
                colours = bpp * (bool(mask & 2) + bool(mask & 4))
                if mask & 8:
                    head = yield _Read(colours + 1)
                    yield _Emit(head)
                    yield _Pass(head[-1] * ((bpp + 2) if mask & 16 else 2))
                elif colours:
                    yield _Pass(colours)

    @staticmethod
    def _colour_map() -> _Parser:
        head = yield _Read(5)
        count = struct.unpack(">xHH", head)[1]
        yield _Emit(b"\x01" + head)
        yield _Pass(count * 6)

    @staticmethod
    def _bell() -> _Parser:
        yield _Emit(b"\x02")

    def _server_cut_text(self) -> _Parser:
        yield from self._cut_text(3, "server")

    def _cut_text(self, kind: int, side: str) -> _Parser:
        head = yield _Read(7)
        length = _U32.unpack(head[3:])[0]
        # A negative length is the Extended Clipboard extension, never offered here.
        _need(length < 0x80000000, "extended-clipboard", f"{side} extended clipboard")
        if self.clipboard and length <= self.max_cut_text:
            yield _Emit(bytes([kind]) + head)
            yield _Pass(length)
            return
        # Clipboard off (the route, or the β′ guardrail for lgwan): the text is discarded
        # here, so a modified client or desktop cannot carry data across the screen.
        if side == "server":
            self.stats.server_cut_dropped += 1
        else:
            self.stats.client_cut_dropped += 1
        yield _Skip(length)

    # -- client → server ------------------------------------------------------------------

    def _client(self) -> _Parser:
        state = self._state
        version = yield _Read(12)
        _need(state.server_minor != 0, "out-of-turn", "client spoke before the server")
        match = _VERSION.match(version)
        _need(match is not None, "version", "unsupported client protocol version")
        assert match is not None
        minor = int(match[1])
        _need(minor <= state.server_minor, "version", "client version above the server's")
        state.minor = minor
        yield _Emit(version)
        if minor != 3:
            choice = (yield _Read(1))[0]
            _need(state.offered is not None, "out-of-turn", "security choice before the offer")
            assert state.offered is not None
            _need(choice in state.offered, "security-type", f"security type {choice} chosen")
            state.security = choice
            state.auth_ok = choice == 1 and minor == 7  # None: no SecurityResult before 3.8
            yield _Emit(bytes([choice]))
        yield _SYNC
        _need(state.security != 0, "out-of-turn", "client spoke before the security type")
        if state.security == 2:
            response = yield _Read(16)
            _need(state.challenged, "out-of-turn", "VNC response before the challenge")
            yield _Emit(response)
            yield _SYNC
        _need(state.auth_ok, "out-of-turn", "ClientInit before the security result")
        shared = yield _Read(1)
        state.client_init = True
        yield _Emit(shared)
        handlers: dict[int, Callable[[], _Parser]] = {
            0: self._set_pixel_format, 2: self._set_encodings, 3: self._update_request,
            4: self._key_event, 5: self._pointer_event, 6: self._client_cut_text}
        while True:
            kind = (yield _Read(1))[0]
            _need(state.ready, "out-of-turn", "client message before ServerInit")
            handler = handlers.get(kind)
            # Anything else — UltraVNC file transfer (7), xvp power control (250), QEMU (255),
            # SetDesktopSize (251), Fence (248), EnableContinuousUpdates (150) — ends it.
            _need(handler is not None, "client-message", f"client message type {kind}")
            assert handler is not None
            yield from handler()

    def _set_pixel_format(self) -> _Parser:
        body = yield _Read(19)
        # Updates already requested may arrive in the old format: the filter could no longer
        # tell where a rectangle ends, so a late change closes the connection.
        _need(not self._state.updates_requested, "pixel-format",
              "SetPixelFormat after updates were requested")
        self._pixel_format(body[3:19])
        yield _Emit(b"\x00" + body)

    def _set_encodings(self) -> _Parser:
        head = yield _Read(3)
        count = struct.unpack(">xH", head)[0]
        _need(count <= MAX_ENCODINGS, "encodings", "too many encodings")
        raw = yield _Read(4 * count)
        asked = struct.unpack(f">{count}i", raw)
        kept = [e for e in asked if e in ALLOWED_ENCODINGS]
        self.stats.encodings_removed += len(asked) - len(kept)
        # Union, not replacement: updates in flight may still use an earlier offer.
        self._state.encodings.update(kept)
        yield _Emit(struct.pack(f">BxH{len(kept)}i", 2, len(kept), *kept))

    def _update_request(self) -> _Parser:
        body = yield _Read(9)
        self._state.updates_requested = True
        yield _Emit(b"\x03" + body)

    def _key_event(self) -> _Parser:
        body = yield _Read(7)
        self.stats.input_events += 1
        yield _Emit(b"\x04" + body)

    def _pointer_event(self) -> _Parser:
        body = yield _Read(5)
        self.stats.input_events += 1
        yield _Emit(b"\x05" + body)

    def _client_cut_text(self) -> _Parser:
        yield from self._cut_text(6, "client")
