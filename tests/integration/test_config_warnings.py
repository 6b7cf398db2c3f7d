"""A real `sekisho serve` logs its configuration's warnings at start and at every reload
(JSON lines, level warning, Japanese and English), not only in `sekisho check-config`."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from .harness import EchoUpstream, GatewayProcess

# No networks.mynumber_terminals: the guardrail keeps this route closed (a warning).
JUKI = """\
  - id: juki
    title: 住民記録
    from: https://juki.localhost/
    to: http://127.0.0.1:9
    segment: mynumber
    policy: staff
"""


def _warnings(log: Path) -> list[dict[str, object]]:
    entries = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message") == "設定の警告 / configuration warning":
            entries.append(entry)
    return entries


def test_warnings_are_logged_at_start_and_at_every_reload(
        tmp_path: Path, upstream: EchoUpstream) -> None:
    gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/sekisho.db", upstream)
    gateway.config.write_text(gateway.config.read_text(encoding="utf-8") + JUKI,
                              encoding="utf-8")
    gateway.provision()
    gateway.start()
    try:
        [started] = _warnings(gateway.log)
        assert started["level"] == "warning" and started["source"] == str(gateway.config)
        warning = str(started["warning"])
        assert "警告: ルート 'juki' はガードレールにより閉じています" in warning
        assert "warning: route 'juki' is closed by its guardrail" in warning
        gateway.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while len(_warnings(gateway.log)) < 2:
            assert time.monotonic() < deadline, gateway.log.read_text()[-2000:]
            time.sleep(0.1)
        assert _warnings(gateway.log)[1]["warning"] == warning
    finally:
        gateway.stop()
