"""The demo's child processes (VNC desktop, connector agent): none may outlive the demo.

Ctrl-C and SIGTERM end the demo normally and `atexit` stops its children; a demo that is
killed outright (SIGKILL, a crashed terminal) runs no exit handler, so on Linux each child
also asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG). The request is made
by a tiny Python trampoline that then execs the real command, not by `preexec_fn`, which is
unsafe once the demo's app threads are running.
"""

from __future__ import annotations

import atexit
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import IO

# argv: parent pid, command... — PR_SET_PDEATHSIG (1) with SIGTERM (15), then exec. A parent
# that died before the request was made is caught by the getppid() check (no orphan window).
_TRAMPOLINE = (
    "import ctypes,os,sys\n"
    "ctypes.CDLL(None,use_errno=True).prctl(1,15,0,0,0)\n"
    "if os.getppid()!=int(sys.argv[1]):os._exit(0)\n"
    "os.execvp(sys.argv[2],sys.argv[2:])\n"
)
_running: list[subprocess.Popen[bytes]] = []


def spawn(command: list[str], *, log: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `command` as a child that ends with the demo; output to `log` or nowhere."""
    import os

    argv = command
    if sys.platform.startswith("linux"):
        argv = [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, str(os.getpid()), *command]
    output: IO[bytes] | int = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        process = subprocess.Popen(argv, stdout=output, stderr=output,  # noqa: S603 (our argv)
                                   stdin=subprocess.DEVNULL, env=env)
    finally:
        if not isinstance(output, int):
            output.close()
    _running.append(process)
    return process


def stop(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    with contextlib.suppress(ValueError):
        _running.remove(process)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def stop_all() -> None:
    while _running:
        stop(_running[-1])


atexit.register(stop_all)
