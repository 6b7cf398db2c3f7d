"""Workers reach connector tunnels through the master: one Unix connection per stream.

The tunnels end in one process (the master, or the only process when `server.workers: 1`);
a gateway worker that needs `connector:<site>/<host>:<port>` connects to the broker's Unix
socket, sends one header line and, once the broker answers `OK`, uses the connection exactly
like a TCP connection to an upstream (`gateway.upstream` pools and frames it as usual):

    worker → broker   SKSH1 <kind> <site> <host:port>\\n      (kind: http | tcp)
    broker → worker   OK\\n                                    then raw bytes both ways
                      ER <code> <message>\\n                    then close

The broker pumps bytes between the Unix connection and a tunnel stream with bounded buffers:
a `TunnelStream.write` waits for the agent's window and the Unix side is read only as fast as
that, so a slow upstream or client never makes the master buffer more than a window per
stream. The socket is 0600 in the data directory: only Sekisho's own processes may open
streams into closed networks (a local user who could would bypass every policy).

A caller in the broker's own process (`server.workers: 1`) skips the socket: `connect_local`
opens the stream on the in-process broker and drives an asyncio protocol from it through
`StreamTransport`, with the same backpressure (the protocol is paused while the tunnel's
window is exhausted; the stream is read only while the protocol reads). One hop, two
syscalls and two copies per chunk fewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from sekisho.connector.channel import ChannelClosed, StreamResetError, TunnelStream
from sekisho.connector.frames import StreamKind
from sekisho.connector.protocol import LocalProtocolError

SOCKET_ENV = "SEKISHO_CONNECTOR_SOCKET"  # set by the master for its workers
MAGIC = b"SKSH1"
MAX_HEADER = 512
CHUNK = 256 * 1024  # one read: up to a whole frame (fewer loop turns and syscalls)
_HEADER = re.compile(rb"^SKSH1 (http|tcp) ([a-z0-9][a-z0-9-]{0,62}) ([!-~]{1,300})\n$")
_KINDS = {b"http": StreamKind.HTTP, b"tcp": StreamKind.TCP}
_DESTINATION = re.compile(r"[!-~]{1,300}")
_LOCAL: dict[str, RelayServer] = {}  # the relays this process serves, by socket path


class RelayRefused(Exception):
    """The broker could not open the stream: `code` (e.g. "no-connector") and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def socket_path(data_dir: Path) -> str:
    """The broker's socket in the data directory, unless that path is too long for a Unix
    socket (108 bytes), then in a private (0700) temporary directory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = str(data_dir.resolve() / "connector.sock")
    if len(path.encode()) < 100:
        return path
    import tempfile

    return str(Path(tempfile.mkdtemp(prefix="sekisho-")) / "connector.sock")


# -------------------------------------------------------------------------- worker side


async def dial(path: str, kind: str, site: str, destination: str) -> socket.socket:
    """A connected Unix socket on which the broker has opened the stream (or RelayRefused)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, path)
        await loop.sock_sendall(sock, b"%s %s %s %s\n" % (
            MAGIC, kind.encode(), site.encode(), destination.encode()))
        # Exactly three bytes: an upstream that speaks first (SSH) must not be read here.
        answer = b""
        while len(answer) < 3:
            chunk = await loop.sock_recv(sock, 3 - len(answer))
            if not chunk:
                raise RelayRefused("broker-closed", "the broker closed the connection")
            answer += chunk
        if answer == b"OK\n":
            return sock
        rest = b""
        while len(rest) < MAX_HEADER and b"\n" not in rest:
            chunk = await loop.sock_recv(sock, MAX_HEADER)
            if not chunk:
                break
            rest += chunk
        code, _, message = (answer + rest).decode("utf-8", "replace")[3:].strip().partition(" ")
        raise RelayRefused(code or "refused", message)
    except BaseException:
        sock.close()
        raise


# -------------------------------------------------------------------------- broker side


Opener = Callable[[StreamKind, str, str], Awaitable[TunnelStream]]


class RelayServer:
    """The broker's Unix socket: parses each header, opens a stream, pumps both ways."""

    def __init__(self, path: str, opener: Opener) -> None:
        self.path = path
        self.opener = opener
        # Told when the agent reset a stream (e.g. REFUSED: not allow-listed): (stream,
        # site, reason code); the broker logs and audits it.
        self.on_failed: Callable[[TunnelStream, str, int], None] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open_local(self, kind: StreamKind, site: str, destination: str
                         ) -> TunnelStream:
        """The stream a caller in this process would get through the socket (RelayRefused
        as the socket's `ER` answer)."""
        if not _DESTINATION.fullmatch(destination):
            raise RelayRefused("bad-header", "the destination is malformed")
        return await self.opener(kind, site, destination)

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)  # left by a master that was killed
        old = os.umask(0o077)  # 0600 from the moment the socket exists
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path, limit=CHUNK)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        _LOCAL[self.path] = self

    async def close(self) -> None:
        if _LOCAL.get(self.path) is self:
            del _LOCAL[self.path]
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), 10.0)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            return
        match = _HEADER.match(line) if len(line) <= MAX_HEADER else None
        if match is None:
            writer.write(b"ER bad-header the header line is malformed\n")
            return
        kind, site, destination = _KINDS[match[1]], match[2].decode(), match[3].decode()
        try:
            stream = await self.opener(kind, site, destination)
        except RelayRefused as exc:
            writer.write(f"ER {exc.code} {exc.message}\n".encode())
            return
        writer.write(b"OK\n")
        reason = await pump(reader, writer, stream)
        if reason is not None and self.on_failed is not None:
            self.on_failed(stream, site, reason)


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               stream: TunnelStream) -> int | None:
    """Copy both ways until both directions ended; an error on either side aborts both.
    Returns the reset code when the peer aborted the stream, else None."""

    async def outward() -> None:  # worker → tunnel
        while True:
            data = await reader.read(CHUNK)
            if not data:
                await stream.close_write()
                return
            await stream.write(data)

    async def inward() -> None:  # tunnel → worker
        while True:
            data = await stream.read(CHUNK)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.create_task(outward()), asyncio.create_task(inward())]
    clean = False
    reset: int | None = None
    try:
        await asyncio.gather(*tasks)
        clean = True
    except StreamResetError as exc:
        reset = int(exc.reason)
    except (ChannelClosed, LocalProtocolError, ConnectionError, OSError):
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not clean:
            with contextlib.suppress(LocalProtocolError):
                stream.reset()
        writer.close()
    return reset


# -------------------------------------------------------------------- in-process callers


def local_server(path: str) -> RelayServer | None:
    """The broker's relay when it runs in this very process, else None (use `dial`)."""
    return _LOCAL.get(path)


class StreamTransport(asyncio.Transport):
    """An asyncio transport over a tunnel stream, for a protocol in the broker's process.

    Writes go straight into the tunnel while the peer's window allows; beyond it they queue
    and the protocol is paused (`pause_writing`) until the queue is below `high` again, so
    a fast client is held back exactly as a full socket would hold it. Reads are one task
    that awaits the stream only while the protocol has not paused reading: a slow client
    leaves data in the stream, whose window then stops the agent.
    """

    def __init__(self, stream: TunnelStream, protocol: asyncio.Protocol, *,
                 on_reset: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self._stream = stream
        self._protocol = protocol
        self._on_reset = on_reset
        self._queue: list[memoryview] = []
        self._queued = 0
        self._high = 256 * 1024
        self._low = 64 * 1024
        self._writing_paused = False
        self._reading = asyncio.Event()
        self._reading.set()
        self._closing = False
        self._lost = False
        self._eof_sent = False
        self._writer: asyncio.Task[None] | None = None
        protocol.connection_made(self)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    # -- asyncio.Transport ----------------------------------------------------------------

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"tunnel_stream": self._stream}.get(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def is_reading(self) -> bool:
        return self._reading.is_set()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None
                                ) -> None:
        self._high = 256 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return self._queued

    def can_write_eof(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.is_closing() or not data:
            return
        view = memoryview(bytes(data) if isinstance(data, bytearray) else data).cast("B")
        if not self._queue:
            # The common case: room in the window, no task, no copy until the TLS write.
            try:
                view = view[self._stream.send_now(view):]
            except (ChannelClosed, StreamResetError, LocalProtocolError) as exc:
                self._fail(exc)
                return
            if not view:
                return
        self._queue.append(view)
        self._queued += len(view)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())
        if not self._writing_paused and self._queued > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def write_eof(self) -> None:
        if self.is_closing() or self._eof_sent:
            return
        self._eof_sent = True
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def close(self) -> None:
        """Flush what is queued, then half-close; the stream ends when the peer's side does
        (or is reset if the peer goes on sending what nobody would read)."""
        if self.is_closing():
            return
        self._closing = True
        self._eof_sent = True
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())
        self._reading.set()  # the reader discards from now on, so the stream can finish

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        with contextlib.suppress(LocalProtocolError):
            self._stream.reset()
        self._connection_lost(None)

    # -- the tasks ------------------------------------------------------------------------

    async def _write(self) -> None:
        try:
            while self._queue:
                view = self._queue[0]
                await self._stream.write(view)
                self._queue.pop(0)
                self._queued -= len(view)
                if self._writing_paused and self._queued <= self._low:
                    self._writing_paused = False
                    self._protocol.resume_writing()
            if self._eof_sent and not self._lost:
                await self._stream.close_write()
        except (ChannelClosed, StreamResetError, LocalProtocolError, OSError) as exc:
            self._fail(exc)
        finally:
            self._writer = None
            if self._queue and not self._lost:  # written to while the task was ending
                self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _read(self) -> None:
        try:
            while True:
                await self._reading.wait()
                data = await self._stream.read(CHUNK)
                if not data:
                    break
                if not self._reading.is_set():  # paused while the read was waiting
                    await self._reading.wait()
                if self._closing:
                    self._stream.reset()  # nobody reads any more: stop the sender
                    break
                self._protocol.data_received(data)
            if not self._closing and not self._protocol.eof_received():
                self.close()
            if self._writer is not None:
                await asyncio.shield(self._writer)
        except StreamResetError as exc:
            if self._on_reset is not None:
                self._on_reset(int(exc.reason))
            self._fail(exc)
            return
        except (ChannelClosed, LocalProtocolError) as exc:
            self._fail(exc)
            return
        self._connection_lost(None)

    def _fail(self, exc: BaseException) -> None:
        self._closing = True
        with contextlib.suppress(LocalProtocolError):
            self._stream.reset()
        self._connection_lost(exc if isinstance(exc, Exception) else None)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._queue.clear()
        self._queued = 0
        self._reading.set()
        current = asyncio.current_task()
        for task in (self._reader, self._writer):
            if task is not None and task is not current:
                task.cancel()
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, exc)


async def connect_local(server: RelayServer, kind: str, site: str, destination: str,
                        factory: Callable[[], asyncio.Protocol]
                        ) -> tuple[StreamTransport, asyncio.Protocol]:
    """`dial` + `loop.create_unix_connection` for a caller in the broker's process."""
    stream = await server.open_local(_KINDS[kind.encode()], site, destination)
    protocol = factory()

    def reset_by_agent(reason: int) -> None:
        if server.on_failed is not None:
            server.on_failed(stream, site, reason)

    return StreamTransport(stream, protocol, on_reset=reset_by_agent), protocol
