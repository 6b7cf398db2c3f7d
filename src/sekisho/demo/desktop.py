"""The demo's remote desktop for 画面転送: a VNC server on loopback, when one is installed.

TigerVNC's `Xvnc` (an X server with VNC built in) is used when present, otherwise `Xvfb` with
`x11vnc`; with neither, the demo has no screen-transfer route (the README gives the apt line).
The desktop listens on 127.0.0.1 only, without a VNC password (only the gateway, on the same
machine, reaches it), shows a coloured background and `xclock` when x11-apps is installed, and
is stopped when the demo exits.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sekisho.demo import children

if TYPE_CHECKING:
    from sekisho.config.model import Config

log = logging.getLogger("sekisho.demo")

DESKTOP_PORT = 5907  # preferred; another free port when taken
GEOMETRY = "1024x640"
_running: list[subprocess.Popen[bytes]] = []
_TARGET = r"(?:vnc://|connector:demo-lgwan/)127\.0\.0\.1:"  # the demo's own route targets


def available() -> bool:
    """Whether a VNC server the demo can start is installed."""
    return bool(shutil.which("Xvnc") or (shutil.which("Xvfb") and shutil.which("x11vnc")))


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError("no free port for the demo desktop")


def _free_display() -> int:
    # X servers keep their lock and socket under /tmp by convention: read-only probes here.
    tmp = Path("/tmp")  # noqa: S108
    return next(n for n in range(40, 200) if not (tmp / f".X{n}-lock").exists()
                and not (tmp / ".X11-unix" / f"X{n}").exists())


def _spawn(command: list[str]) -> subprocess.Popen[bytes]:
    process = children.spawn(command)  # ends with the demo, even a killed one
    _running.append(process)
    return process


def _listening(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.3):
            return True
        time.sleep(0.1)
    return False


def start_demo_desktop(preferred: int = DESKTOP_PORT) -> int | None:
    """Start the desktop; its VNC port, or None when no VNC server is installed or it failed."""
    if not available():
        return None
    port, display = _free_port(preferred), _free_display()
    screen = f":{display}"
    if shutil.which("Xvnc"):
        _spawn(["Xvnc", screen, "-geometry", GEOMETRY, "-depth", "24", "-rfbport", str(port),
                "-localhost", "-SecurityTypes", "None", "-nolisten", "tcp", "-AlwaysShared",
                "-desktop", "Sekisho demo (LGWAN)"])
    else:
        _spawn(["Xvfb", screen, "-screen", "0", f"{GEOMETRY}x24", "-nolisten", "tcp"])
        time.sleep(0.5)
        _spawn(["x11vnc", "-display", screen, "-rfbport", str(port), "-localhost", "-nopw",
                "-forever", "-shared", "-quiet"])
    if not _listening(port, time.monotonic() + 10):
        log.warning("the demo desktop did not start; no screen-transfer route")
        stop_demo_desktop()
        return None
    if shutil.which("xsetroot"):
        subprocess.run(["xsetroot", "-display", screen, "-solid", "#3a6ea5"],  # noqa: S603,S607
                       check=False, timeout=10, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    for app, geometry in (("xclock", "200x200+60+60"), ("xeyes", "160x120+320+80")):
        if shutil.which(app):
            _spawn([app, "-display", screen, "-geometry", geometry])
    log.info("demo desktop started", extra={"fields": {"display": screen, "port": port}})
    return port


def stop_demo_desktop() -> None:
    while _running:
        children.stop(_running.pop())


atexit.register(stop_demo_desktop)


def kept_desktop(file: Path, config: Config) -> Config:
    """For a kept demo file: start the desktop its `desktop` route names (on that port when
    free; the file is updated when it had to move). A file without the route is left alone.
    The route reaches the desktop directly (`vnc://`) or through the demo connector."""
    import re

    from sekisho.config.loader import load_config

    route = next((r for r in config.routes if r.id == "desktop" and r.mode == "screen"), None)
    found = re.fullmatch(_TARGET + r"(\d+)", route.to) if route else None
    if found is None:
        return config
    old = int(found.group(1))
    new = start_demo_desktop(old)
    if new is None or new == old:
        return config
    text = file.read_text(encoding="utf-8")
    file.write_text(re.sub(rf"({_TARGET}){old}(?!\d)", rf"\g<1>{new}", text),
                    encoding="utf-8")
    log.warning("the demo desktop moved to a free port; the demo file was updated",
                extra={"fields": {"port": new}})
    return load_config(file)
