"""A closed network for real: an "internal" network namespace whose HTTP server the gateway's
namespace cannot reach, except through the connector that dials out from inside.

Layout (names and addresses unique per run; the test creates and deletes them itself):

    root namespace (gateway)                    namespace "skc…" (internal)
    veth skc…a 10.213.N.1/30  ──────────────  veth skc…b 10.213.N.2/30
    route 10.214.N.0/24: unreachable            10.214.N.5/32 on lo: the HTTP server
    sekisho serve, connector.listen .1:PORT     sekisho connector run (dials .1:PORT)

The internal service network 10.214.N.0/24 is routed nowhere from the root namespace, as an
LGWAN segment's servers are not routed from outside: a direct connection from the gateway's
side fails (proved first), while the agent inside reaches both its server and the gateway's
connector port over the veth. Needs root and `ip netns`; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connector.broker_kit import ConnectorGateway, connected, staff, wait_for
from sekisho.storage.database import create_database_engine

from .harness import EchoUpstream


def _skip_reason() -> str:
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run under .ci/run or sudo)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"skp{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                          check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return ""


SKIP = _skip_reason()
pytestmark = [pytest.mark.skipif(bool(SKIP), reason=SKIP or "-"), pytest.mark.slow]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Internal:
    name: str
    gateway_address: str  # the root side of the veth: where the connector listener binds
    server_address: str  # the internal HTTP server (on the namespace's own network)

    def exec(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


@pytest.fixture
def internal() -> Iterator[Internal]:
    tag = secrets.token_hex(3)
    name, outside, inside = f"skc{tag}", f"skc{tag}a", f"skc{tag}b"
    n = 1 + secrets.randbelow(250)
    network = Internal(name, f"10.213.{n}.1", f"10.214.{n}.5")
    ip("netns", "add", name)
    try:
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", name)
        ip("addr", "add", f"10.213.{n}.1/30", "dev", outside)
        ip("link", "set", outside, "up")
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "addr", "add", f"10.213.{n}.2/30", "dev", inside)
        ip("-n", name, "link", "set", inside, "up")
        ip("-n", name, "addr", "add", f"{network.server_address}/32", "dev", "lo")
        ip("-n", name, "route", "add", "default", "via", f"10.213.{n}.1")
        ip("route", "add", "unreachable", f"10.214.{n}.0/24")
        yield network
    finally:
        subprocess.run(["ip", "route", "del", "unreachable", f"10.214.{n}.0/24"],
                       capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", outside], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def test_http_reaches_the_closed_network_only_through_the_connector(
        tmp_path: Path, internal: Internal) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("<h1>内部システム / internal system</h1>", encoding="utf-8")
    port = 18080 + secrets.randbelow(1000)
    server = subprocess.Popen(
        [*internal.exec(), sys.executable, "-m", "http.server", "--bind",
         internal.server_address, "--directory", str(www), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    upstream = EchoUpstream()  # the harness's routes need one; not used here
    gateway = ConnectorGateway(tmp_path, upstream, listen_host=internal.gateway_address,
                               destination=f"{internal.server_address}:{port}")
    try:
        wait_for(lambda: subprocess.run(
            [*internal.exec(), sys.executable, "-c",
             f"import socket; socket.create_connection(('{internal.server_address}', {port}), "
             "timeout=1)"], capture_output=True, check=False).returncode == 0,
            what="the internal server")
        # The proof of the boundary: from the gateway's namespace there is no way in.
        with pytest.raises(OSError):
            socket.create_connection((internal.server_address, port), timeout=2).close()

        gateway.provision()
        gateway.start()
        token, pin = gateway.token()
        gateway.agent(tmp_path / "agent", token=token, pin=pin, prefix=internal.exec())
        engine = create_database_engine(f"sqlite:///{tmp_path}/sekisho.db")
        try:
            wait_for(lambda: connected(engine) == 1, what="the tunnel from inside")
        finally:
            engine.dispose()
        started = time.monotonic()
        answer = staff(gateway).get("intranet.localhost", "/")
        assert answer.status == 200, answer.body[:300]
        assert "内部システム" in answer.body.decode("utf-8")
        assert time.monotonic() - started < 10
        # Still no way in directly, connector or not.
        with pytest.raises(OSError):
            socket.create_connection((internal.server_address, port), timeout=2).close()
    finally:
        gateway.stop()
        server.terminate()
        server.wait(10)
        upstream.close()
