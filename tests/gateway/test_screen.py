"""Screen transfer through the gateway (gateway.screen): a real VNC desktop (TigerVNC's Xvnc,
an X server with a built-in VNC server, started by the test on loopback), a real Gateway with
a real SessionManager and change feed over SQLite, and a raw RFB client speaking over the
gateway's WebSocket — a "modified client" that sends whatever it likes. The clipboard is
read on the desktop with xclip, so a test sees what really crossed."""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import HTTPRedirectHandler, Request, build_opener, urlopen

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from integration.harness import free_port
from sekisho.audit.events import AuditEvent, ScreenSessionEnded, ScreenSessionStarted
from sekisho.audit.log import AuditUnavailable
from sekisho.config.model import Config, Route, ScreenOptions, SessionSettings
from sekisho.gateway.keys import KeyRing
from sekisho.identity.sessions import SessionManager
from sekisho.runtime import build_runtime
from sekisho.storage import sessions as session_store
from sekisho.storage.database import create_database_engine, upgrade
from sekisho.storage.keys import SigningKeyRepository

from .servers import Harness, ListAudit, WatchedStart

XVNC = shutil.which("Xvnc")
XCLIP = shutil.which("xclip")
pytestmark = pytest.mark.skipif(
    not (XVNC and XCLIP),
    reason="needs Xvnc and xclip (apt-get install tigervnc-standalone-server xclip)")

MARKER = "秘密-sekisho-marker"
# RFB cut text is Latin-1: the desktop shows the Japanese part as mojibake, so the checks
# look for the ASCII part.
SEEN = "sekisho-marker"
POLICIES: dict[str, Any] = {"staff": {"allow": {"and": [{"group": ["staff"]}]}}}


class Desktop:
    """An Xvnc display on a free number, its VNC port on 127.0.0.1, and its clipboard."""

    def __init__(self) -> None:
        self.display = next(n for n in range(60, 200)
                            if not Path(f"/tmp/.X{n}-lock").exists()
                            and not Path(f"/tmp/.X11-unix/X{n}").exists())
        self.port = free_port()
        assert XVNC is not None
        self.process = subprocess.Popen(
            [XVNC, f":{self.display}", "-geometry", "320x240", "-depth", "24",
             "-rfbport", str(self.port), "-localhost", "-SecurityTypes", "None",
             "-nolisten", "tcp", "-AlwaysShared",
             # Tests open and drop many connections: no black-listing of 127.0.0.1.
             "-BlacklistThreshold", "1000000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.owners: list[subprocess.Popen[bytes]] = []
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                break
            assert time.monotonic() < deadline, "Xvnc did not start"
            time.sleep(0.05)

    def clipboard(self) -> str:
        assert XCLIP is not None
        result = subprocess.run([XCLIP, "-o", "-selection", "clipboard", "-display",
                                 f":{self.display}"], capture_output=True, timeout=5,
                                check=False)
        return result.stdout.decode("utf-8", "replace")

    def set_clipboard(self, text: str) -> None:
        """xclip stays alive as the selection's owner, as a desktop application would."""
        assert XCLIP is not None
        owner = subprocess.Popen([XCLIP, "-i", "-selection", "clipboard", "-display",
                                  f":{self.display}"], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert owner.stdin is not None
        owner.stdin.write(text.encode())
        owner.stdin.close()
        self.owners.append(owner)

    def close(self) -> None:
        for process in (*self.owners, self.process):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)


class RawRfb:
    """A minimal RFB 3.8 client over the gateway's WebSocket, sending whatever it is told."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.buffer = b""
        self.cut_texts: list[bytes] = []

    def read(self, n: int, timeout: float = 5) -> bytes:
        while len(self.buffer) < n:
            message = self.ws.recv(timeout=timeout)
            assert isinstance(message, bytes)
            self.buffer += message
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send(self, data: bytes) -> None:
        self.ws.send(data)

    def handshake(self) -> tuple[int, int]:
        assert self.read(12) == b"RFB 003.008\n"
        self.send(b"RFB 003.008\n")
        types = self.read(self.read(1)[0])
        assert types == b"\x01"  # None: the only type this desktop offers
        self.send(b"\x01")
        assert self.read(4) == b"\x00\x00\x00\x00"
        self.send(b"\x01")
        width, height = struct.unpack(">HH", self.read(4))
        self.read(16)
        self.read(struct.unpack(">I", self.read(4))[0])
        self.send(struct.pack(">BxHi", 2, 1, 0))  # Raw only
        return width, height

    def update(self, timeout: float = 5) -> int:
        """Ask for the whole screen and read messages until a FramebufferUpdate is in."""
        self.send(struct.pack(">BBHHHH", 3, 0, 0, 0, 320, 240))
        while True:
            kind = self.read(1, timeout)[0]
            if kind == 0:
                count = struct.unpack(">xH", self.read(3))[0]
                pixels = 0
                for _ in range(count):
                    _, _, w, h, encoding = struct.unpack(">HHHHi", self.read(12))
                    assert encoding == 0
                    self.read(w * h * 4)
                    pixels += w * h
                return pixels
            if kind == 3:
                self.cut_texts.append(self.read(struct.unpack(">3xI", self.read(7))[0]))
            elif kind == 2:
                continue
            else:
                raise AssertionError(f"unexpected server message {kind}")

    def cut_text(self, text: str) -> None:
        data = text.encode("utf-8")
        self.send(struct.pack(">B3xI", 6, len(data)) + data)


class ScreenGateway:
    def __init__(self, tmp_path: Path, desktop: Desktop,
                 cookie: str = "__Host-sekisho") -> None:
        self.cookie = cookie
        self.harness = Harness()
        self.clients = contextlib.ExitStack()
        self.engine = create_database_engine(f"sqlite:///{tmp_path}/gw.db")
        upgrade(self.engine)
        keyring = KeyRing(SigningKeyRepository(self.engine))
        keyring.ensure()
        self.sessions = SessionManager(self.engine, SessionSettings(recheck_interval=60.0))
        self.audit = ListAudit()
        to = f"vnc://127.0.0.1:{desktop.port}"
        routes = (
            Route(id="desk", host="desk.localhost", path_prefix="/", to=to, segment="lgwan",
                  policy="staff", mode="screen", title="LGWAN 端末"),
            Route(id="open-desk", host="open.localhost", path_prefix="/", to=to,
                  segment="internet", policy="staff", mode="screen",
                  screen=ScreenOptions(clipboard=True)),
            Route(id="idle-desk", host="idle.localhost", path_prefix="/", to=to,
                  segment="lgwan", policy="staff", mode="screen",
                  screen=ScreenOptions(idle_timeout=1.0)),
            Route(id="gone", host="gone.localhost", path_prefix="/", to="vnc://127.0.0.1:9",
                  segment="lgwan", policy="staff", mode="screen"),
        )
        settings = SessionSettings(recheck_interval=60.0, cookie_name=cookie)
        self.runtime = build_runtime(Config(source="<test>", routes=routes, policies=POLICIES,
                                            session=settings))
        self.watched = WatchedStart(self.harness, self.engine, self.sessions, self.audit,
                                    keyring, lambda: self.runtime)
        self.live, self.gateway = self.watched.live, self.watched.gateway
        self.port, self.feed, self.user = self.watched.port, self.watched.feed, self.watched.user
        self.token, _ = self.sessions.create(self.user, ["pwd"], "127.0.0.1", "test")

    def open(self, host: str = "desk.localhost", origin: str | None = None,
             token: str | None = None) -> RawRfb:
        sock = socket.create_connection(("127.0.0.1", self.port))
        ws = self.clients.enter_context(connect(
            f"ws://{host}:{self.port}/ws", sock=sock, max_size=None,
            origin=origin or f"http://{host}:{self.port}",  # type: ignore[arg-type]
            additional_headers={"Cookie": f"{self.cookie}={token or self.token}"}))
        return RawRfb(ws)

    def get(self, host: str, path: str, cookie: bool = True) -> Any:
        request = Request(f"http://127.0.0.1:{self.port}{path}", headers={"Host": host})
        if cookie:
            request.add_header("Cookie", f"{self.cookie}={self.token}")
        return urlopen(request, timeout=5)

    def ended(self, timeout: float = 5) -> ScreenSessionEnded:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.audit.events if isinstance(e, ScreenSessionEnded)]
            if found:
                return found[-1]
            assert time.monotonic() < deadline, "no screen.ended event"
            time.sleep(0.02)

    def close(self) -> None:
        self.clients.close()
        self.watched.stop()
        self.harness.stop()
        self.engine.dispose()


@pytest.fixture(scope="module")
def desktop() -> Iterator[Desktop]:
    running = Desktop()
    yield running
    running.close()


@pytest.fixture
def screen(tmp_path: Path, desktop: Desktop) -> Iterator[ScreenGateway]:
    gateway = ScreenGateway(tmp_path, desktop)
    yield gateway
    gateway.close()


def closed_within(rfb: RawRfb, seconds: float) -> float:
    started = time.monotonic()
    with pytest.raises(ConnectionClosed):
        while time.monotonic() - started < seconds:
            rfb.ws.recv(timeout=seconds)
    return time.monotonic() - started


def test_screen_session_through_the_gateway(screen: ScreenGateway) -> None:
    rfb = screen.open()
    assert rfb.handshake() == (320, 240)
    assert rfb.update() == 320 * 240
    [started] = [e for e in screen.audit.events if isinstance(e, ScreenSessionStarted)]
    assert (started.route, started.user, started.clipboard) == ("desk", "hanako", False)
    rfb.ws.close()
    ended = screen.ended()
    assert ended.reason == "closed" and ended.bytes_out > 320 * 240 * 4


def test_client_cut_text_is_dropped_on_an_lgwan_route(screen: ScreenGateway,
                                                      desktop: Desktop) -> None:
    desktop.set_clipboard("before")
    rfb = screen.open()
    rfb.handshake()
    rfb.cut_text(MARKER)
    rfb.update()  # the stream after the dropped message still flows
    time.sleep(0.5)
    assert SEEN not in desktop.clipboard()
    rfb.ws.close()
    assert screen.ended().client_cut_dropped == 1


def test_client_cut_text_crosses_where_the_route_allows_it(screen: ScreenGateway,
                                                           desktop: Desktop) -> None:
    """The control: the same message on a route that allows the clipboard reaches the
    desktop, so the test above would fail if the filter let it through."""
    rfb = screen.open("open.localhost")
    rfb.handshake()
    rfb.cut_text(MARKER)
    rfb.update()
    deadline = time.monotonic() + 5
    while SEEN not in desktop.clipboard():
        assert time.monotonic() < deadline, "the allowed clipboard never arrived"
        time.sleep(0.1)


@pytest.mark.parametrize(("host", "delivered"), [("desk.localhost", False),
                                                 ("open.localhost", True)])
def test_server_cut_text(screen: ScreenGateway, desktop: Desktop, host: str,
                         delivered: bool) -> None:
    rfb = screen.open(host)
    rfb.handshake()
    rfb.update()
    text = f"from-the-desktop-{host}"
    desktop.set_clipboard(text)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and not rfb.cut_texts:
        rfb.update()
        time.sleep(0.1)
    assert (text.encode() in rfb.cut_texts) is delivered
    rfb.ws.close()
    assert (screen.ended().server_cut_dropped >= 1) is not delivered


def test_an_unframeable_message_closes_the_session(screen: ScreenGateway) -> None:
    rfb = screen.open()
    rfb.handshake()
    rfb.send(bytes([250, 0, 1, 2]))  # xvp: shut the machine down
    closed_within(rfb, 2.0)
    ended = screen.ended()
    assert (ended.reason, ended.detail) == ("filter", "client-message")


def test_revocation_cuts_the_session_within_a_second(screen: ScreenGateway) -> None:
    rfb = screen.open()
    rfb.handshake()
    rfb.update()
    time.sleep(0.3)  # the registration check has run
    session = screen.sessions.lookup_sync(screen.token)
    assert session is not None
    session_store.revoke(screen.engine, session.session_id, datetime.now(UTC), "admin")
    assert closed_within(rfb, 1.0) < 1.0
    assert screen.ended().reason == "revoked"


def test_idle_timeout_counts_input_only(screen: ScreenGateway) -> None:
    rfb = screen.open("idle.localhost")
    rfb.handshake()
    for x in range(6):  # pointer moves for 1.5 s keep a 1 s idle timeout away
        rfb.send(struct.pack(">BBHH", 5, 0, x, x))
        rfb.update()
        time.sleep(0.25)
    # Update requests alone (noVNC sends them all the time) are not activity.
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:
        while time.monotonic() - started < 3:
            rfb.update(timeout=3)
            time.sleep(0.1)
    assert 0.5 < time.monotonic() - started < 2.5
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    assert screen.ended().reason == "idle"


def test_update_requests_do_not_count_as_session_activity(screen: ScreenGateway) -> None:
    """The watch refreshes the sign-in session on client activity; an unattended page (noVNC
    asks for updates all the time) must not keep it alive, only keyboard and mouse do."""
    rfb = screen.open()
    rfb.handshake()
    for _ in range(3):
        rfb.update()
    [session] = list(screen.gateway.screen.sessions)
    assert session.splice.bytes_in == 0 and session.bytes_in > 0
    rfb.send(struct.pack(">BBHH", 5, 0, 1, 1))
    rfb.update()
    assert session.splice.bytes_in == 1


def test_no_audit_record_no_session(screen: ScreenGateway) -> None:
    """Fail closed: when `screen.started` cannot be appended, nothing is connected."""

    class BrokenAudit(ListAudit):
        async def append(self, event: AuditEvent) -> None:
            raise AuditUnavailable("the audit writer has failed")

    screen.gateway.audit = BrokenAudit()
    with pytest.raises(InvalidStatus) as refused:
        screen.open()
    assert refused.value.response.status_code == 503


def test_cross_site_websocket_is_refused(screen: ScreenGateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        screen.open(origin="http://evil.example")
    assert refused.value.response.status_code == 403
    assert not [e for e in screen.audit.events if isinstance(e, ScreenSessionStarted)]


def test_signed_out_websocket_is_not_connected(screen: ScreenGateway) -> None:
    # The client follows the gateway's 302 to the sign-in page, which is no WebSocket URI.
    with pytest.raises(InvalidURI, match=r"/\.sekisho/signin"):
        screen.open(token="not-a-session-token-0123456789")
    assert not [e for e in screen.audit.events if isinstance(e, ScreenSessionStarted)]


def test_unreachable_vnc_server_is_a_502(screen: ScreenGateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        screen.open("gone.localhost")
    assert refused.value.response.status_code == 502


def test_page_carries_watermark_data_under_a_strict_csp(screen: ScreenGateway) -> None:
    with screen.get("desk.localhost", "/") as response:
        body = response.read().decode()
        csp = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert '"user": "hanako"' in body and '"route": "LGWAN 端末"' in body
    assert "<script>" not in body  # no inline script: only the data block and the module
    script = body.split('<script type="module" src="')[1].split('"')[0]
    with screen.get("desk.localhost", script, cookie=False) as response:
        assert response.headers["Content-Type"].startswith("text/javascript")
        assert b"watermark" in response.read()


def test_signed_out_page_goes_to_sign_in(screen: ScreenGateway) -> None:
    class NoRedirect(HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    with pytest.raises(HTTPError) as redirect:
        build_opener(NoRedirect).open(Request(f"http://127.0.0.1:{screen.port}/",
                                              headers={"Host": "desk.localhost"}), timeout=5)
    assert redirect.value.code == 302
    assert "/.sekisho/signin" in redirect.value.headers["Location"]
