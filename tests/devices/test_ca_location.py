"""One CA location for the whole installation (`devices.ca.ca_directory`).

With a non-default `tls.client_ca_dir`, the CA that enrolment signs with, the CRL, posture
intake, the mTLS listener and `sekisho ca init|show --config` must all be that directory:
a CA created in `<data_dir>/ca` while the listener trusts another one would issue device
certificates that fail every handshake (or, worse, two CAs would both look valid).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine

from sekisho.app import server_ssl_context
from sekisho.audit.log import AuditLog
from sekisho.config.model import Config, Route, ServerSettings, TLSSettings
from sekisho.devices.ca import ca_directory, fingerprint, init_ca, load_certificates
from sekisho.devices.enrolment import create_code
from sekisho.devices.handlers import CRL_PATH, ENROL_PATH, POSTURE_PATH
from sekisho.devices.posture import format_time
from sekisho.devices.reporter import signed_envelope
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.storage import users
from sekisho.web import Request, Response

NOW = datetime.now(UTC)


def _config(data_dir: Path, ca_dir: Path | None) -> Config:
    return Config(source="test", server=ServerSettings(data_dir=str(data_dir)),
                  tls=TLSSettings(self_signed=True, client_certificates="optional",
                                  client_ca_dir=str(ca_dir) if ca_dir else None),
                  routes=(Route(id="r", host="gw.city.example", path_prefix="/",
                                to="http://127.0.0.1:9"),))


def test_the_configured_directory_wins_over_the_data_directory(tmp_path: Path) -> None:
    assert ca_directory(_config(tmp_path, tmp_path / "pki")) == tmp_path / "pki"
    assert ca_directory(_config(tmp_path, None)) == tmp_path / "ca"


def _call(handlers: dict[str, object], method: str, path: str, body: bytes = b"") -> Response:
    request = Request(method=method, target=path, path=path, query="",
                      headers=[("host", "gw.city.example"),
                               ("content-type", "application/json")],
                      client_ip="192.0.2.10", scheme="https", host="gw.city.example", body=body)

    async def run() -> Response:
        return await handlers[path](request)  # type: ignore[operator]

    return asyncio.run(run())


def _csr(key: ec.EllipticCurvePrivateKey) -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_enrolment_crl_and_posture_use_tls_client_ca_dir(engine: Engine,
                                                         tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_ca(pki, organisation="関所市", now=NOW - timedelta(days=1))
    data_dir = tmp_path / "data"  # no CA here: reading it would answer 503 ca-missing
    config = _config(data_dir, pki)
    handlers = dict(build_signin_handlers(
        current_config=lambda: config, engine=engine,
        sessions=SessionManager(engine, config.session), audit=AuditLog(engine)))
    users.create_user(engine, "tanaka")
    code, _ = create_code(engine, "tanaka", "admin", timedelta(hours=1), now=NOW)
    key = ec.generate_private_key(ec.SECP256R1())
    enrolled = _call(handlers, "POST", ENROL_PATH, json.dumps(
        {"code": code, "csr": _csr(key), "name": "PC"}).encode())
    assert enrolled.status == 200, enrolled.body
    data = json.loads(enrolled.body)
    cert = x509.load_pem_x509_certificate(data["certificate"].encode())
    _, intermediate = load_certificates(pki)
    cert.verify_directly_issued_by(intermediate)  # signed by the configured CA

    crl = _call(handlers, "GET", CRL_PATH)
    assert crl.status == 200
    assert x509.load_pem_x509_crl(crl.body).issuer == intermediate.subject

    report = {"schema": 1, "device_id": data["device_id"], "platform": "linux",
              "os_name": "Debian GNU/Linux", "os_version": "12",
              "last_update": format_time(NOW - timedelta(days=2)), "disk_encryption": True,
              "firewall": True, "screen_lock": True, "edr": False, "edr_processes": [],
              "nonce": "ab" * 16, "time": format_time(NOW)}
    posture = _call(handlers, "POST", POSTURE_PATH,
                    json.dumps(signed_envelope(report, key, cert)).encode())
    assert posture.status == 200, posture.body
    assert not (data_dir / "ca").exists()


def test_the_listener_trusts_tls_client_ca_dir(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_ca(pki, organisation="関所市")
    root, _ = load_certificates(pki)
    # `<data_dir>/ca` does not exist: loading from there would fail (ConfigError).
    context = server_ssl_context(_config(tmp_path / "data", pki))
    assert context is not None
    serials = {int(ca["serialNumber"], 16) for ca in context.get_ca_certs()}
    assert root.serial_number in serials


CONFIG = """\
server:
  data_dir: "./data"
tls:
  self_signed: true
  client_certificates: optional
  client_ca_dir: "./pki"
routes: []
"""


def _ca_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sekisho", "ca", *args], capture_output=True,
                          text=True, check=False, timeout=60)


def test_ca_init_and_show_with_config_use_tls_client_ca_dir(tmp_path: Path) -> None:
    config = tmp_path / "sekisho.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    # The file names a CA that does not exist yet: `ca init` is what makes it.
    created = _ca_cli("init", "--config", str(config), "--organisation", "関所市")
    assert created.returncode == 0, created.stderr
    root, _ = load_certificates(tmp_path / "pki")
    assert fingerprint(root) in created.stdout
    assert not (tmp_path / "data" / "ca").exists()
    shown = _ca_cli("show", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert f"CA: {tmp_path / 'pki'}" in shown.stdout
    # Any other problem in the file is still reported, with file and line.
    config.write_text(CONFIG.replace('data_dir: "./data"', "workers: many"), encoding="utf-8")
    broken = _ca_cli("init", "--config", str(config))
    assert broken.returncode != 0 and f"{config}:2" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_without_client_ca_dir_ca_init_uses_the_data_directory(tmp_path: Path) -> None:
    config = tmp_path / "sekisho.yaml"
    config.write_text(CONFIG.replace('  client_ca_dir: "./pki"\n', ""), encoding="utf-8")
    created = _ca_cli("init", "--config", str(config))
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "data" / "ca" / "root.pem").is_file()
    assert not (tmp_path / "pki").exists()
