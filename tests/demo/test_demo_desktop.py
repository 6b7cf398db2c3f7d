"""The demo's screen-transfer route and its VNC desktop (demo.desktop)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sekisho.config import parse_config
from sekisho.config.demo import demo_text
from sekisho.demo import desktop


def test_demo_file_has_a_screen_route_when_a_desktop_runs(tmp_path: Path) -> None:
    without = parse_config(demo_text(tmp_path, {"wiki": 8001}))
    assert [r.id for r in without.routes] == ["wiki"]
    config = parse_config(demo_text(tmp_path, {"wiki": 8001}, desktop_port=5907))
    route = next(r for r in config.routes if r.id == "desktop")
    assert (route.mode, route.segment, route.to) == ("screen", "lgwan", "vnc://127.0.0.1:5907")
    assert not route.screen.clipboard  # β′: and it could not be turned on
    assert config.profile == "beta-prime"


@pytest.mark.skipif(not desktop.available(), reason="no Xvnc, nor Xvfb with x11vnc")
def test_demo_desktop_speaks_rfb_on_loopback() -> None:
    port = desktop.start_demo_desktop(0)
    try:
        assert port is not None
        with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
            assert probe.recv(12).startswith(b"RFB 003.")
    finally:
        desktop.stop_demo_desktop()
