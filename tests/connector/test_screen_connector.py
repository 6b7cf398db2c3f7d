"""画面転送 through a connector: `sekisho serve` with a `mode: screen` route to
`connector:<site>/<host>:<port>`, a `sekisho connector run` agent allowed to reach a real VNC
desktop (Xvnc), and a raw RFB client over the gateway's WebSocket (TLS). The desktop's picture
crosses the tunnel; the clipboard the client sends does not (the filter runs in the gateway,
whatever the path to the VNC server)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from websockets.sync.client import connect

from gateway.test_screen import SEEN, XCLIP, XVNC, Desktop, RawRfb
from integration.harness import EchoUpstream
from sekisho.storage.database import create_database_engine

from .broker_kit import SITE, ConnectorGateway, connected, events, wait_for

pytestmark = pytest.mark.skipif(
    not (XVNC and XCLIP),
    reason="needs Xvnc and xclip (apt-get install tigervnc-standalone-server xclip)")
HOST = "screen.localhost"


@pytest.fixture
def desktop() -> Iterator[Desktop]:
    running = Desktop()
    yield running
    running.close()


@pytest.fixture
def gateway(tmp_path: Path, desktop: Desktop) -> Iterator[ConnectorGateway]:
    upstream = EchoUpstream()
    process = ConnectorGateway(tmp_path, upstream)
    destination = f"127.0.0.1:{desktop.port}"
    text = process.config.read_text(encoding="utf-8")
    route = f"""\
  - id: screen
    title: 閉域の端末
    from: https://{HOST}/
    to: connector:{SITE}/{destination}
    segment: internet
    mode: screen
    policy: staff
"""
    section = "connector:\n  listen:"
    process.config.write_text(text.replace(section, route + section), encoding="utf-8")
    process.destination = destination  # what the agent is allowed to reach
    process.provision()
    process.start()
    yield process
    process.stop()
    upstream.close()


@pytest.fixture
def engine(gateway: ConnectorGateway) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{gateway.tmp}/sekisho.db")
    yield engine
    engine.dispose()


def test_screen_transfer_through_a_connector(gateway: ConnectorGateway, engine: Engine,
                                             desktop: Desktop) -> None:
    token, pin = gateway.token()
    gateway.agent(gateway.tmp / "a", token=token, pin=pin)
    wait_for(lambda: connected(engine) == 1, what="the tunnel")
    browser = gateway.browser()
    assert browser.signin(HOST, "tanaka").status == 303
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies_for(HOST).items())
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    with connect(f"wss://{HOST}:{gateway.port}/ws", sock=sock, ssl=browser.context,
                 server_hostname=HOST, max_size=None,
                 origin=f"https://{HOST}:{gateway.port}",  # type: ignore[arg-type]
                 additional_headers={"Cookie": cookie}) as ws:
        rfb = RawRfb(ws)
        assert rfb.handshake() == (320, 240)
        rfb.cut_text("秘密-sekisho-marker")
        assert rfb.update() == 320 * 240  # the whole picture came through the tunnel
        time.sleep(0.5)
        assert SEEN not in desktop.clipboard()
    wait_for(lambda: events(engine, "screen.ended"), what="screen.ended")
    [started] = events(engine, "screen.started")
    assert started["target"] == f"connector:{SITE}/127.0.0.1:{desktop.port}"
    [ended] = events(engine, "screen.ended")
    assert ended["reason"] == "closed" and ended["client_cut_dropped"] == 1
