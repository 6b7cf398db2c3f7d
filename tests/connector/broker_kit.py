"""A `sekisho serve` with a connector listener and `connector:` routes, agents as
`sekisho connector run` processes, and readers of the audit log (tests/connector and the
network-namespace test share it)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import Engine, select

from integration.harness import (
    SEKISHO,
    Browser,
    EchoUpstream,
    GatewayProcess,
    config_text,
    free_port,
)
from sekisho.storage.models import AuditRecord

SITE = "lgwan-dc"


class ConnectorGateway(GatewayProcess):
    """The harness gateway plus a connector listener and two `connector:` routes."""

    def __init__(self, tmp: Path, upstream: EchoUpstream, *, workers: int = 1,
                 listen_host: str = "127.0.0.1", destination: str = "") -> None:
        super().__init__(tmp, f"sqlite:///{tmp}/sekisho.db", upstream)
        self.connector_host = listen_host
        self.connector_port = free_port()
        self.closed_port = free_port()  # a port the agent does not allow
        self.destination = destination or f"127.0.0.1:{upstream.port}"
        text = config_text(tmp / "data", f"sqlite:///{tmp}/sekisho.db", self.port, self.admin,
                           upstream.port).replace("workers: 1", f"workers: {workers}")
        text += f"""\
  - id: intranet
    title: 庁内イントラ (閉域)
    from: https://intranet.localhost/
    to: connector:{SITE}/{self.destination}
    segment: internet
    policy: staff
  - id: forbidden
    from: https://intranet.localhost/forbidden
    to: connector:{SITE}/127.0.0.1:{self.closed_port}
    segment: internet
    policy: staff
connector:
  listen: "{listen_host}:{self.connector_port}"
"""
        self.config.write_text(text, encoding="utf-8")
        self.agents: list[subprocess.Popen[bytes]] = []

    def provision(self) -> None:
        super().provision()
        self.cli("ca", "init", "--organisation", "関所市")

    def token(self, site: str = SITE) -> tuple[str, str]:
        out = self.cli("connector", "token", "--site", site).stdout
        token = re.search(r"(skc_[A-Za-z0-9_-]+)", out)
        pin = re.search(r"(sha256:[0-9a-f]{64})", out)
        assert token and pin, out
        return token.group(1), pin.group(1)

    def agent(self, state: Path, *, token: str = "", pin: str = "",
              allow: tuple[str, ...] = (), prefix: Sequence[str] = ()
              ) -> subprocess.Popen[bytes]:
        """`prefix`: e.g. `ip netns exec NAME` to run the agent inside a namespace."""
        args = [*prefix, *SEKISHO, "connector", "run", "--gateway",
                f"{self.connector_host}:{self.connector_port}", "--state-dir", str(state)]
        if token:
            args += ["--token", token]
        if pin:
            args += ["--pin", pin]
        for entry in allow or (self.destination,):
            args += ["--allow", entry]
        log = (state.parent / f"{state.name}.log").open("ab")
        process = subprocess.Popen(args, env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        self.agents.append(process)
        return process

    def stop(self) -> int:
        for agent in self.agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait(5)
        return super().stop()


def events(engine: Engine, event_type: str) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(select(AuditRecord.body).where(AuditRecord.event_type == event_type)
                            .order_by(AuditRecord.seq))
        return [json.loads(row.body) for row in rows]


def wait_for(check: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}")


def connected(engine: Engine, connector_id: str | None = None) -> int:
    return sum(1 for e in events(engine, "connector.connected")
               if e["accepted"] and connector_id in (None, e["connector"]))


def staff(gateway: ConnectorGateway) -> Browser:
    browser = gateway.browser()
    assert browser.signin("intranet.localhost", "tanaka").status == 303
    return browser


