"""画面転送 into a closed network for real: a VNC desktop (TigerVNC `Xvnc`) inside an "internal"
network namespace, unreachable from the gateway's namespace, reached only through the
connector agent that dials out from inside; the gateway's `mode: screen` LGWAN route targets
`connector:<site>/<vnc host>:<port>`.

A raw RFB client on the gateway's WebSocket gets the desktop's framebuffer (ServerInit with
the right size, a whole screen of pixels), and the clipboard text it injects (ClientCutText)
never reaches the desktop's clipboard, read with `xclip` inside the namespace. The control: the
same message on a route whose clipboard is on (an `internet` screen route, same connector and
desktop) does reach it — so the LGWAN result is the gateway's filter, not a blind observer.
Namespaces and veths come from test_connector_netns (created and deleted by the test); needs
root, `ip netns`, Xvnc and xclip, skipped with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from connector.broker_kit import SITE, ConnectorGateway, connected, events, wait_for
from gateway.test_screen import SEEN, XCLIP, XVNC, RawRfb
from sekisho.storage.database import create_database_engine

from .harness import Browser, EchoUpstream
from .test_connector_netns import SKIP, Internal, internal

# `internal` is the namespace fixture, shared: pytest finds it here by its name, and the
# tests' parameters of that name are how they ask for it (not redefinitions).
# ruff: noqa: F401, F811

REASON = SKIP or ("" if XVNC and XCLIP else
                  "needs Xvnc and xclip (apt-get install tigervnc-standalone-server xclip)")
pytestmark = [pytest.mark.skipif(bool(REASON), reason=REASON or "-"), pytest.mark.slow]
LGWAN_HOST, OPEN_HOST = "lgwan-desk.localhost", "open-desk.localhost"
WIDTH, HEIGHT = 320, 240


class InternalDesktop:
    """Xvnc inside the namespace, on the namespace's own service address only."""

    def __init__(self, internal: Internal) -> None:
        self.internal = internal
        self.display = next(n for n in range(60, 200)
                            if not Path(f"/tmp/.X{n}-lock").exists()
                            and not Path(f"/tmp/.X11-unix/X{n}").exists())
        self.port = 15900 + secrets.randbelow(2000)
        assert XVNC is not None
        self.process = subprocess.Popen(
            [*internal.exec(), XVNC, f":{self.display}", "-geometry", f"{WIDTH}x{HEIGHT}",
             "-depth", "24", "-rfbport", str(self.port), "-interface", internal.server_address,
             "-SecurityTypes", "None", "-nolisten", "tcp", "-AlwaysShared",
             "-BlacklistThreshold", "1000000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self._inside(f"import socket; socket.create_connection(("
                                      f"'{internal.server_address}', {self.port}), timeout=1)"),
                 what="Xvnc inside the namespace")

    def _inside(self, code: str) -> bool:
        return subprocess.run([*self.internal.exec(), sys.executable, "-c", code],
                              capture_output=True, check=False, timeout=30).returncode == 0

    @property
    def destination(self) -> str:
        return f"{self.internal.server_address}:{self.port}"

    def clipboard(self) -> str:
        assert XCLIP is not None
        result = subprocess.run([*self.internal.exec(), XCLIP, "-o", "-selection", "clipboard",
                                 "-display", f":{self.display}"], capture_output=True,
                                timeout=10, check=False)
        return result.stdout.decode("utf-8", "replace")

    def close(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


@pytest.fixture
def desktop(internal: Internal) -> Iterator[InternalDesktop]:
    running = InternalDesktop(internal)
    yield running
    running.close()


@pytest.fixture
def gateway(tmp_path: Path, internal: Internal,
            desktop: InternalDesktop) -> Iterator[ConnectorGateway]:
    upstream = EchoUpstream()  # the harness's own routes need one; not used here
    process = ConnectorGateway(tmp_path, upstream, listen_host=internal.gateway_address,
                               destination=desktop.destination)
    target = f"connector:{SITE}/{desktop.destination}"
    routes = f"""\
  - id: lgwan-desk
    title: LGWAN 端末 (閉域)
    from: https://{LGWAN_HOST}/
    to: {target}
    segment: lgwan
    mode: screen
    policy: staff
  - id: open-desk
    title: クリップボードを許す対照 / the control, clipboard on
    from: https://{OPEN_HOST}/
    to: {target}
    segment: internet
    mode: screen
    screen: {{clipboard: true}}
    policy: staff
"""
    section = "connector:\n  listen:"
    text = process.config.read_text(encoding="utf-8")
    process.config.write_text(text.replace(section, routes + section), encoding="utf-8")
    process.provision()
    process.start()
    yield process
    process.stop()
    upstream.close()


def _screen(gateway: ConnectorGateway, browser: Browser, host: str, text: str,
            desktop: InternalDesktop, *, crosses: bool) -> None:
    """Open the route's WebSocket as a raw RFB client, read the ServerInit and one full frame,
    inject `text` and look at the desktop's clipboard while the client is still connected
    (Xvnc lets go of a client's clipboard when it leaves: a later look would prove nothing)."""
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies_for(host).items())
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    with connect(f"wss://{host}:{gateway.port}/ws", sock=sock, ssl=browser.context,
                 server_hostname=host, max_size=None,
                 origin=f"https://{host}:{gateway.port}",  # type: ignore[arg-type]
                 additional_headers={"Cookie": cookie}) as ws:
        rfb = RawRfb(ws)
        assert rfb.handshake() == (WIDTH, HEIGHT)  # ServerInit: the namespace's desktop
        rfb.cut_text(text)
        assert rfb.update() == WIDTH * HEIGHT  # the whole picture came through the tunnel
        if crosses:
            wait_for(lambda: text in desktop.clipboard(), timeout=10,
                     what=f"{text!r} on the desktop's clipboard")
        else:
            time.sleep(1.0)  # time for a cut text that did get through to land
            assert text not in desktop.clipboard()
            rfb.update()  # and the stream after the dropped message still flows


def test_screen_transfer_reaches_the_closed_network_only_through_the_connector(
        tmp_path: Path, internal: Internal, desktop: InternalDesktop,
        gateway: ConnectorGateway) -> None:
    # The proof of the boundary: from the gateway's namespace there is no way to the VNC port.
    with pytest.raises(OSError):
        socket.create_connection((internal.server_address, desktop.port), timeout=2).close()

    token, pin = gateway.token()
    gateway.agent(tmp_path / "agent", token=token, pin=pin, prefix=internal.exec())
    engine = create_database_engine(f"sqlite:///{tmp_path}/sekisho.db")
    try:
        wait_for(lambda: connected(engine) == 1, what="the tunnel from inside")
        browser = gateway.browser()
        assert browser.signin(LGWAN_HOST, "tanaka").status == 303
        assert browser.signin(OPEN_HOST, "tanaka").status == 303

        # LGWAN: the gateway drops the ClientCutText. Control: the same on a clipboard route.
        _screen(gateway, browser, LGWAN_HOST, f"秘密-{SEEN}-lgwan", desktop, crosses=False)
        _screen(gateway, browser, OPEN_HOST, f"control-{SEEN}-{secrets.token_hex(4)}",
                desktop, crosses=True)

        wait_for(lambda: len(events(engine, "screen.ended")) == 2, what="screen.ended")
        by_route = {e["route"]: e for e in events(engine, "screen.ended")}
        assert by_route["lgwan-desk"]["client_cut_dropped"] == 1
        assert {e["target"] for e in events(engine, "screen.started")} == {
            f"connector:{SITE}/{desktop.destination}"}
    finally:
        engine.dispose()
    # Still no way in directly, tunnel or not.
    with pytest.raises(OSError):
        socket.create_connection((internal.server_address, desktop.port), timeout=2).close()
