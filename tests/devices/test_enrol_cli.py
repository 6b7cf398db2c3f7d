"""`sekisho device …` end to end: a real `sekisho serve`, the CA, the CLI on both sides.

Also the device client against a recording HTTPS server, to show what leaves the device.
"""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from sekisho.devices import client
from sekisho.devices.ca import init_ca, issue_device_certificate, load_ca
from sekisho.gateway.tls import self_signed
from sekisho.storage import audit_log
from sekisho.storage.database import create_database_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from harness import SEKISHO, EchoUpstream, GatewayProcess

DEVICE_ROUTE = """\
  - id: device-enrolment
    title: 端末登録
    from: https://127.0.0.1/
    to: http://127.0.0.1:{port}
    segment: internet
    policy: staff
"""


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    upstream = EchoUpstream()
    process = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/sekisho.db", upstream)
    with process.config.open("a", encoding="utf-8") as config:
        config.write(DEVICE_ROUTE.format(port=upstream.port))
    process.provision()
    process.cli("ca", "init", "--organisation", "関所市")
    process.start()
    yield process
    process.stop()
    upstream.close()


def _enroll(gateway: GatewayProcess, code: str, directory: Path, password_file: Path,
            *extra: str) -> subprocess.CompletedProcess[str]:
    cafile = gateway.tmp / "data" / "tls" / "self-signed.crt"
    return subprocess.run(
        [*SEKISHO, "device", "enroll", "--gateway", f"https://127.0.0.1:{gateway.port}",
         "--code", code, "--name", "窓口 PC 1", "--inventory-id", "PC-0042",
         "--dir", str(directory), "--cafile", str(cafile),
         "--p12-password-file", str(password_file), *extra],
        capture_output=True, text=True, timeout=60, check=False, env=gateway.env)


def test_enrol_list_suspend_revoke_through_the_cli(gateway: GatewayProcess,
                                                   tmp_path: Path) -> None:
    made = gateway.cli("device", "code", "tanaka", "--ttl", "1h")
    code = made.stdout.split("tanaka: ", 1)[1].split()[0]
    password_file = tmp_path / "p12-password"
    password_file.write_text("Tsukimi-Dango-2026\n", encoding="utf-8")
    device_dir = tmp_path / "device"

    result = _enroll(gateway, code, device_dir, password_file)
    assert result.returncode == 0, result.stderr
    assert "Windows" in result.stdout and "キーチェーン" in result.stdout
    key_path = device_dir / client.KEY_FILE
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((device_dir / client.P12_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(device_dir.stat().st_mode) == 0o700
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    cert = x509.load_pem_x509_certificate((device_dir / client.CERT_FILE).read_bytes())
    assert cert.public_key() == key.public_key()
    bundle = pkcs12.load_pkcs12((device_dir / client.P12_FILE).read_bytes(),
                                b"Tsukimi-Dango-2026")
    assert bundle.cert is not None and bundle.cert.certificate == cert
    assert bundle.key is not None and bundle.key.public_key() == key.public_key()
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12((device_dir / client.P12_FILE).read_bytes(), b"wrong")

    # The code is spent: a second device cannot use it, and the first is not overwritten.
    again = _enroll(gateway, code, tmp_path / "device2", password_file)
    assert again.returncode == 2 and "enrolment-code-invalid" in again.stderr
    twice = _enroll(gateway, code, device_dir, password_file)
    assert twice.returncode == 2 and "device-exists" in twice.stderr

    listed = json.loads(gateway.cli("device", "list", "--user", "tanaka", "--json").stdout)
    assert [(d["user"], d["name"], d["inventory_id"], d["status"]) for d in listed] == [
        ("tanaka", "窓口 PC 1", "PC-0042", "active")]
    device_id = listed[0]["device_id"]
    assert cert.serial_number == int(listed[0]["serial"], 16)

    browser = gateway.browser()
    crl = x509.load_pem_x509_crl(browser.get("127.0.0.1", "/.sekisho/devices/crl.pem").body)
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is None
    gateway.cli("device", "rename", device_id, "会議室 PC")
    gateway.cli("device", "suspend", device_id, "--reason", "lost")
    crl = x509.load_pem_x509_crl(browser.get("127.0.0.1", "/.sekisho/devices/crl.pem").body)
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    gateway.cli("device", "revoke", device_id, "--reason", "key_compromise")
    unchanged = gateway.cli("device", "revoke", device_id)
    assert "unchanged" in unchanged.stdout
    crl = x509.load_pem_x509_crl(browser.get("127.0.0.1", "/.sekisho/devices/crl.pem").body)
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None and entry.extensions.get_extension_for_class(
        x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    listed = json.loads(gateway.cli("device", "list", "--json").stdout)
    assert (listed[0]["name"], listed[0]["status"]) == ("会議室 PC", "revoked")

    engine = create_database_engine(f"sqlite:///{tmp_path}/sekisho.db")
    try:
        events = [(str(r.event_type), json.loads(r.body)) for r in audit_log.iter_records(engine)
                  if str(r.event_type).startswith("device.")]
    finally:
        engine.dispose()
    assert [(t, b.get("action", "")) for t, b in events] == [
        ("device.code_created", ""), ("device.enrolled", ""), ("device.changed", "rename"),
        ("device.changed", "suspend"), ("device.changed", "revoke")]
    assert events[1][1]["device"] == device_id and events[1][1]["source_ip"] == "127.0.0.1"
    assert code not in json.dumps([b for _, b in events])


def test_insecure_only_for_loopback_and_https_only() -> None:
    with pytest.raises(client.DeviceClientError) as insecure:
        client.check_gateway("https://gw.city.example", insecure=True)
    assert insecure.value.code == "device-insecure"
    with pytest.raises(client.DeviceClientError):
        client.check_gateway("http://127.0.0.1:8443", insecure=False)
    assert client.check_gateway("https://127.0.0.1:8443", insecure=True).endswith(
        "/.sekisho/devices/enroll")


def test_the_private_key_never_leaves_the_device(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    init_ca(ca_dir, organisation="関所市")
    ca = load_ca(ca_dir)
    received: list[bytes] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(body)
            data = json.loads(body)
            cert = issue_device_certificate(ca, data["csr"].encode(), device_id="dev-1",
                                            inventory_id="PC-1", user="tanaka")
            pem = serialization.Encoding.PEM
            payload = json.dumps({
                "device_id": "dev-1", "certificate": cert.public_bytes(pem).decode(),
                "chain": (ca.intermediate.public_bytes(pem) + ca.root.public_bytes(pem)).decode(),
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            return

    cert_file, key_file = self_signed(tmp_path / "server")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = client.enrol(f"https://127.0.0.1:{server.server_address[1]}", "CODE-1",
                              "PC", directory=tmp_path / "dev", cafile=cert_file,
                              p12_password=b"pw-123456")
    finally:
        server.shutdown()
        server.server_close()
    key = serialization.load_pem_private_key(result.key.read_bytes(), None)
    body = received[0]
    assert set(json.loads(body)) == {"code", "csr", "name", "inventory_id"}
    assert b"PRIVATE" not in body
    secret = key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
    for form in (secret.hex().encode(), secret):
        assert form not in body
    assert os.stat(result.key).st_mode & 0o077 == 0


def test_an_untrusted_gateway_is_refused(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path / "server")
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(client.DeviceClientError) as refused:
            client.enrol(f"https://127.0.0.1:{server.server_address[1]}", "CODE-1", "PC",
                         directory=tmp_path / "dev", p12_password=b"pw")  # system trust only
    finally:
        server.shutdown()
        server.server_close()
    assert refused.value.code == "device-gateway"
    assert not (tmp_path / "dev").exists()  # nothing written, no key left behind
