"""Device posture end to end: `sekisho device enroll` and `sekisho device report` as the
device runs them (subprocesses, the real Linux collector on this machine) against a real
`sekisho serve` with mTLS, on SQLite and on PostgreSQL.

The gateway stores the signed report, classifies the device, and a route whose policy asks
for `device: {profile: …}` admits the device's certificate only once its report earns that
profile. A report captured on its way and sent again is refused (409 `posture-replay`).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sekisho.gateway.tls import self_signed
from sekisho.storage import audit_log, devices
from sekisho.storage import posture as posture_store
from sekisho.storage.database import create_database_engine

from .harness import SEKISHO, Browser, EchoUpstream, GatewayProcess, config_text

APPS = "apps.localhost"
# `managed` needs an EDR agent: the report names one that does not run here, so it fails on
# every machine and the device earns `basic`, which asks only for a fresh signed report.
NO_SUCH_EDR = "sekisho-test-no-such-edr-agent"
POLICIES = """\
  basic-device:
    allow:
      and:
        - group: [staff]
        - device: {profile: [basic]}
  managed-device:
    allow:
      and:
        - group: [staff]
        - device: {profile: [managed]}
devices:
  posture_max_age: 15m
  profiles:
    managed: {edr: true, firewall: true}
    basic: {}
"""
ROUTES = """\
  - id: basic
    from: https://{apps}/basic
    to: http://127.0.0.1:{port}
    segment: internet
    policy: basic-device
  - id: managed
    from: https://{apps}/managed
    to: http://127.0.0.1:{port}
    segment: internet
    policy: managed-device
  - id: device-endpoints
    from: https://127.0.0.1/
    to: http://127.0.0.1:{port}
    segment: internet
    policy: staff
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayProcess]:
    """`sekisho serve` asking for client certificates, with posture profiles and a CA."""
    url = (f"sqlite:///{tmp_path}/sekisho.db" if request.param == "sqlite"
           else request.getfixturevalue("pg_schema_url"))
    upstream = EchoUpstream()
    process = GatewayProcess(tmp_path, url, upstream)
    text = config_text(tmp_path / "data", url, process.port, process.admin, upstream.port,
                       extra_policy=POLICIES)
    text = text.replace("tls:\n  self_signed: true\n",
                        "tls:\n  self_signed: true\n  client_certificates: optional\n")
    text += ROUTES.format(apps=APPS, port=upstream.port)
    process.config.write_text(text, encoding="utf-8")
    process.storage_url = url  # type: ignore[attr-defined]
    process.provision()
    process.cli("ca", "init", "--organisation", "関所市")
    process.start()
    yield process
    process.stop()
    upstream.close()


def _device_cli(gateway: GatewayProcess, *args: str, url: str | None = None
                ) -> subprocess.CompletedProcess[str]:
    """`sekisho device …` as run on the device: no --config, only the gateway URL."""
    target = url or f"https://127.0.0.1:{gateway.port}"
    return subprocess.run([*SEKISHO, "device", *args, "--gateway", target],
                          capture_output=True, text=True, timeout=60, check=False,
                          env=gateway.env)


def _enrol(gateway: GatewayProcess, tmp_path: Path) -> tuple[str, Path, Path]:
    made = gateway.cli("device", "code", "tanaka", "--ttl", "1h")
    code = made.stdout.split("tanaka: ", 1)[1].split()[0]
    password = tmp_path / "p12-password"
    password.write_text("Tsukimi-Dango-2026\n", encoding="utf-8")
    device_dir = tmp_path / "device"
    cafile = gateway.tmp / "data" / "tls" / "self-signed.crt"
    enrolled = _device_cli(gateway, "enroll", "--code", code, "--name", "窓口 PC 1",
                           "--inventory-id", "PC-0042", "--dir", str(device_dir),
                           "--cafile", str(cafile), "--p12-password-file", str(password))
    assert enrolled.returncode == 0, enrolled.stderr
    listed = json.loads(gateway.cli("device", "list", "--user", "tanaka", "--json").stdout)
    assert [(d["name"], d["status"]) for d in listed] == [("窓口 PC 1", "active")]
    return str(listed[0]["device_id"]), device_dir, cafile


def _browser(gateway: GatewayProcess, cafile: Path, device_dir: Path | None) -> Browser:
    context = ssl.create_default_context(cafile=str(cafile))
    if device_dir is not None:  # the certificate and key `sekisho device enroll` stored
        context.load_cert_chain(device_dir / "device.pem", device_dir / "device.key")
    browser = Browser(gateway.port, context)
    signed_in = browser.signin(APPS, "tanaka", rd="/basic")
    assert signed_in.status == 303, signed_in.body[:300]
    return browser


def _report_json(gateway: GatewayProcess, device_dir: Path, cafile: Path,
                 url: str | None = None) -> subprocess.CompletedProcess[str]:
    return _device_cli(gateway, "report", "--dir", str(device_dir), "--cafile", str(cafile),
                       "--edr-process", NO_SUCH_EDR, "--json", url=url)


class _Recorder:
    """An HTTPS server standing between device and gateway: keeps each body it is sent."""

    def __init__(self, tmp: Path) -> None:
        self.bodies: list[bytes] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                recorder.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                payload = b'{"device_id": "-", "profile": "-", "failed_checks": []}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.cert, key = self_signed(tmp / "recorder")
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_enrol_report_and_decide_by_profile_then_refuse_a_replay(
        gateway: GatewayProcess, tmp_path: Path) -> None:
    device_id, device_dir, cafile = _enrol(gateway, tmp_path)
    device = _browser(gateway, cafile, device_dir)
    no_device = _browser(gateway, cafile, None)

    # Enrolled but never reported: the device is `quarantine`, no profile route admits it.
    assert device.get(APPS, "/basic").status == 403
    assert device.get(APPS, "/managed").status == 403

    reported = _report_json(gateway, device_dir, cafile)
    assert reported.returncode == 0, reported.stderr
    out = json.loads(reported.stdout)
    sent, answer = out["report"], out["answer"]
    assert (answer["device_id"], answer["profile"]) == (device_id, "basic")
    assert "edr" in answer["failed_checks"]  # why not `managed`
    assert sent["device_id"] == device_id and sent["platform"] == "linux"
    assert sent["edr"] is False and sent["edr_processes"] == []  # none of those named runs
    os_release = Path("/etc/os-release")
    if os_release.exists():  # the real collector read this machine
        name = next((line.split("=", 1)[1].strip().strip('"') for line in
                     os_release.read_text().splitlines() if line.startswith("NAME=")), None)
        assert name is None or sent["os_name"] == name

    engine = create_database_engine(gateway.storage_url)  # type: ignore[attr-defined]
    try:
        stored = posture_store.latest(engine, device_id)
        assert stored is not None and stored.profile == "basic"
        assert json.loads(stored.report) == sent  # exactly what the device signed
        assert devices.require_device(engine, device_id).status == "active"
    finally:
        engine.dispose()

    # The route asking for `basic` now admits the device, and only with its certificate;
    # the one asking for `managed` still refuses it.
    allowed = device.get(APPS, "/basic")
    assert allowed.status == 200, allowed.body[:300]
    assert device.get(APPS, "/managed").status == 403
    assert no_device.get(APPS, "/basic").status == 403

    # A report captured on its way (here: the device sends it to a recorder) is accepted
    # once when delivered, and refused when sent again.
    recorder = _Recorder(tmp_path)
    try:
        time.sleep(1.1)  # report times have one-second resolution and must move forward
        captured = _report_json(gateway, device_dir, Path(recorder.cert), url=recorder.url)
        assert captured.returncode == 0, captured.stderr
    finally:
        recorder.close()
    (body,) = recorder.bodies
    first = device.request("POST", "127.0.0.1", "/.sekisho/devices/posture", body=body,
                           headers={"Content-Type": "application/json"})
    assert first.status == 200, first.body
    assert first.json()["profile"] == "basic"
    replay = device.request("POST", "127.0.0.1", "/.sekisho/devices/posture", body=body,
                            headers={"Content-Type": "application/json"})
    assert (replay.status, replay.json()["error"]) == (409, "posture-replay")
    assert b"Traceback" not in replay.body
    assert device.get(APPS, "/basic").status == 200  # the replay changed nothing

    engine = create_database_engine(gateway.storage_url)  # type: ignore[attr-defined]
    try:
        stored = posture_store.latest(engine, device_id)
        assert stored is not None
        assert json.loads(stored.report)["nonce"] == json.loads(body)["report"]["nonce"]
        # Audited: two accepted reports (the CLI's and the delivered capture), not three.
        postures = [json.loads(r.body) for r in audit_log.iter_records(engine)
                    if r.event_type == "device.posture"]
    finally:
        engine.dispose()
    assert [(p["device"], p["profile"], p["user"]) for p in postures] == [
        (device_id, "basic", "tanaka")] * 2
    assert "edr" in postures[0]["failed"].split(",")

    # The device is suspended: its certificate no longer counts, whatever its posture.
    gateway.cli("device", "suspend", device_id, "--reason", "lost")
    assert device.get(APPS, "/basic").status == 403
    late = _report_json(gateway, device_dir, cafile)
    assert late.returncode != 0 and "posture-device" in late.stderr
