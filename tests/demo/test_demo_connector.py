"""`make run`'s closed network: a real `sekisho serve --demo` in a temporary directory starts
`sekisho connector run` as a separate child process, whose tunnel is the only route to the
internal demo app; the connector's certificate is reused by the next start; and no connector
(nor VNC desktop) outlives the demo — stopped with SIGTERM or killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from connector.broker_kit import connected, events, wait_for
from integration.harness import SEKISHO, Browser, free_port
from sekisho.config.demo import DEMO_FILE, DEMO_SITE, INTERNAL_ROUTE
from sekisho.config.loader import load_config
from sekisho.demo.connector import AGENT_LOG, internal_port_of
from sekisho.storage.database import create_database_engine

pytestmark = pytest.mark.slow
PASSWORD = "Usuzan-Kazan-2026"  # the demo's tanaka (demo.setup)
HOST = f"{INTERNAL_ROUTE}.localhost"


class Demo:
    def __init__(self, data: Path, ports: tuple[int, int] | None = None) -> None:
        self.data = data
        # A kept demo file keeps the ports it was written with: a later start passes them.
        self.port, self.admin = ports or (free_port(), free_port())
        self.out = data.parent / "demo.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEKISHO_")}
        self.process = subprocess.Popen(
            [*SEKISHO, "serve", "--demo", "--data-dir", str(data), "--port", str(self.port),
             "--admin-port", str(self.admin)], env=env, stdin=subprocess.DEVNULL,
            stdout=self.out.open("wb"), stderr=(data.parent / "demo.log").open("ab"))
        wait_for(lambda: self.process.poll() is not None or "Ctrl+C" in self.banner(),
                 timeout=60, what="the demo's banner")
        assert self.process.poll() is None, (data.parent / "demo.log").read_text()[-3000:]

    def banner(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def browser(self) -> Browser:
        cert = self.data / "tls" / "self-signed.crt"
        return Browser(self.port, ssl.create_default_context(cafile=str(cert)))

    def children(self, marker: str) -> list[int]:
        """Live processes whose parent is the demo and whose command line has `marker`."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text()
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == self.process.pid and marker in cmdline and fields[0] != "Z":
                found.append(int(proc.name))
        return found

    def stop(self, sig: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "demo"


@pytest.fixture
def engine(data: Path) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{data}/sekisho.db")
    yield engine
    engine.dispose()


def _reach_the_internal_app(demo: Demo) -> None:
    browser = demo.browser()
    assert browser.signin(HOST, "tanaka", PASSWORD).status == 303
    page = browser.get(HOST, "/")
    assert page.status == 200, page.body[:500]
    text = page.body.decode("utf-8")
    # The app verified the gateway's assertion that came with the request through the tunnel.
    assert "庶務事務・勤怠管理" in text and "ようこそ、田中 花子 (tanaka)" in text


def test_the_demo_reaches_its_internal_app_only_through_a_connector_process(
        data: Path, engine: Engine) -> None:
    first = Demo(data)
    try:
        pids = first.children("connector run")
        assert len(pids) == 1 and pids[0] != first.process.pid  # its own process
        desktops = first.children("Xvnc") + first.children("x11vnc")
        config = load_config(data / DEMO_FILE)
        internal = internal_port_of(config)
        assert internal is not None and config.connector.listen is not None
        # No route targets the internal app's address: the connector is the only way.
        targets = {r.id: r.to for r in config.routes}
        assert targets[INTERNAL_ROUTE] == f"connector:{DEMO_SITE}/127.0.0.1:{internal}"
        assert not [t for t in targets.values()
                    if f":{internal}" in t and not t.startswith(f"connector:{DEMO_SITE}/")]
        assert {r.segment for r in config.routes if r.id == INTERNAL_ROUTE} == {"lgwan"}
        # The allow-list is exactly the internal app (and the desktop, also behind it).
        cmdline = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
        allowed = {cmdline[i + 1].decode() for i, arg in enumerate(cmdline) if arg == b"--allow"}
        desktop = next((r.to for r in config.routes if r.id == "desktop"), None)
        expected = {f"127.0.0.1:{internal}"}
        if desktop is not None:
            assert desktop.startswith(f"connector:{DEMO_SITE}/127.0.0.1:")
            expected.add(desktop.rsplit("/", 1)[1])
        assert allowed == expected
        assert b"skc_" not in b" ".join(cmdline)  # the token is not on the command line
        assert "connector" in first.banner() and f"{HOST}" in first.banner()

        wait_for(lambda: connected(engine) == 1, timeout=30, what="the demo connector's tunnel")
        _reach_the_internal_app(first)
        [token] = events(engine, "connector.token_created")
        assert (token["site"], token["admin"]) == (DEMO_SITE, "demo")
        [enrolled] = events(engine, "connector.enrolled")

        first.stop(signal.SIGTERM)  # as Ctrl+C or systemd would
        wait_for(lambda: not any(alive(p) for p in [*pids, *desktops]), timeout=15,
                 what="the connector and desktop ending with the demo")
    finally:
        first.stop(signal.SIGKILL)

    # A later start: the same certificate, no new token; then a killed demo leaves no child.
    second = Demo(data, (first.port, first.admin))
    try:
        assert "reusing its enrolled certificate" in second.banner()
        pids = second.children("connector run")
        desktops = second.children("Xvnc") + second.children("x11vnc")
        assert len(pids) == 1
        wait_for(lambda: connected(engine, str(enrolled["connector"])) == 2, timeout=30,
                 what="the same connector reconnecting")
        assert len(events(engine, "connector.token_created")) == 1
        assert len(events(engine, "connector.enrolled")) == 1
        _reach_the_internal_app(second)
        second.process.kill()  # no exit handler runs: the kernel ends the children
        second.process.wait(10)
        wait_for(lambda: not any(alive(p) for p in [*pids, *desktops]), timeout=15,
                 what="no orphan after SIGKILL")
    finally:
        second.stop(signal.SIGKILL)
    # Nothing refused by the agent (an allow-list refusal) or by the gateway (its enrolment).
    # Not any "refused": a dial while the gateway stops or starts ends in the system's
    # "Connection refused" ("tunnel down", retried), which is no refusal of ours.
    agent_log = (data / AGENT_LOG).read_text(encoding="utf-8")
    assert "not allow-listed" not in agent_log and "enrolment refused" not in agent_log


def test_the_demo_file_routes_the_lgwan_side_through_the_connector(tmp_path: Path) -> None:
    from sekisho.config import parse_config
    from sekisho.config.demo import demo_text

    config = parse_config(demo_text(tmp_path, {"wiki": 8001}, desktop_port=5907,
                                    connector_port=8444, internal_port=8123))
    targets = {r.id: (r.to, r.segment) for r in config.routes}
    assert targets[INTERNAL_ROUTE] == (f"connector:{DEMO_SITE}/127.0.0.1:8123", "lgwan")
    assert targets["desktop"] == (f"connector:{DEMO_SITE}/127.0.0.1:5907", "lgwan")
    assert str(config.connector.listen) == "127.0.0.1:8444"
    with pytest.raises(ValueError, match="both"):
        demo_text(tmp_path, {"wiki": 8001}, connector_port=8444)


def test_a_state_the_registry_does_not_know_is_enrolled_again(tmp_path: Path) -> None:
    """A token only when needed; a stale or revoked certificate is cleared, not reused."""
    from sekisho.connector.agent import CERT_FILE, KEY_FILE, STATE_FILE
    from sekisho.connector.enrolment import revoke, token_hash
    from sekisho.demo.connector import enrolment_token
    from sekisho.storage import connectors
    from sekisho.storage.database import upgrade

    engine = create_database_engine(f"sqlite:///{tmp_path}/sekisho.db")
    try:
        upgrade(engine)
        state = tmp_path / "connector"
        state.mkdir()
        (state / STATE_FILE).write_text('{"connector_id": "con-unknown"}')
        (state / KEY_FILE).write_text("old key")
        (state / CERT_FILE).write_text("old cert")
        assert enrolment_token(engine, state, max_days=30).startswith("skc_")
        assert not (state / KEY_FILE).exists() and not (state / STATE_FILE).exists()
        [created] = events(engine, "connector.token_created")
        assert (created["site"], created["admin"]) == (DEMO_SITE, "demo")

        token = enrolment_token(engine, state, max_days=30)
        now = datetime.now(UTC)
        assert connectors.consume_token_and_add_connector(
            engine, token_hash=token_hash(token), now=now, connector_id="con-demo",
            site=DEMO_SITE, name="demo-connector", cert_serial="ab",
            cert_not_after=now + timedelta(days=1))
        (state / STATE_FILE).write_text('{"connector_id": "con-demo"}')
        (state / KEY_FILE).write_text("key")
        (state / CERT_FILE).write_text("cert")
        assert enrolment_token(engine, state, max_days=30) == ""  # enrolled: reused
        revoke(engine, "con-demo", admin="test")
        assert enrolment_token(engine, state, max_days=30).startswith("skc_")
        assert len(events(engine, "connector.token_created")) == 3
    finally:
        engine.dispose()
