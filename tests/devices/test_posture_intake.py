"""Posture reports end to end: a real CA, an enrolled device, the real handler and database.

Each refusal here is a defence: a tampered report (altered after signing), a report signed by
another key, a replayed nonce, a stale or future-dated report, a revoked device, a certificate
from another CA. The accepted report then sets the device's profile seen by the gateway.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine

from sekisho.audit.log import AuditLog
from sekisho.config.model import Config, DeviceSettings, PostureProfile, Route, ServerSettings
from sekisho.devices.ca import init_ca, issue_device_certificate, load_ca
from sekisho.devices.enrolment import change_status, create_code, enrol
from sekisho.devices.handlers import POSTURE_PATH
from sekisho.devices.identity import device_facts
from sekisho.devices.posture import format_time
from sekisho.devices.reporter import signed_envelope
from sekisho.devices.trust import DeviceTrust
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.storage import audit_log, posture, users
from sekisho.web import Request, Response

NOW = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
SETTINGS = DeviceSettings(posture_max_age=15 * 60, profiles=(
    PostureProfile("managed", os_updated_within=30 * 86400, disk_encryption=True,
                   firewall=True, screen_lock=True, edr=True),
    PostureProfile("byod", os_updated_within=60 * 86400, screen_lock=True)))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class PostureApp:
    """The device handlers as the gateway builds them, with an enrolled device."""

    def __init__(self, engine: Engine, data_dir: Path) -> None:
        self.engine = engine
        self.clock = Clock()
        config = Config(source="test", server=ServerSettings(data_dir=str(data_dir)),
                        routes=(Route(id="r", host="gw.city.example", path_prefix="/",
                                      to="http://127.0.0.1:9"),), devices=SETTINGS)
        self.handlers = build_signin_handlers(
            current_config=lambda: config, engine=engine,
            sessions=SessionManager(engine, config.session, clock=self.clock),
            audit=AuditLog(engine), clock=self.clock)
        users.create_user(engine, "tanaka")
        code, _ = create_code(engine, "tanaka", "admin", timedelta(hours=1), now=NOW)
        self.key = ec.generate_private_key(ec.SECP256R1())
        cert_pem, _, self.device = enrol(engine, load_ca(data_dir / "ca"), code,
                                         _csr(self.key), device_name="PC", now=NOW)
        self.cert = x509.load_pem_x509_certificate(cert_pem.encode())

    def report(self, **changes: Any) -> dict[str, Any]:
        report: dict[str, Any] = {
            "schema": 1, "device_id": self.device.device_id, "platform": "linux",
            "os_name": "Debian GNU/Linux", "os_version": "12",
            "last_update": format_time(NOW - timedelta(days=2)), "disk_encryption": True,
            "firewall": True, "screen_lock": True, "edr": True, "edr_processes": ["mdatp"],
            "nonce": _nonce(), "time": format_time(self.clock.now)}
        report.update(changes)
        return report

    def send(self, envelope: dict[str, Any]) -> Response:
        request = Request(method="POST", target=POSTURE_PATH, path=POSTURE_PATH, query="",
                          headers=[("content-type", "application/json")],
                          client_ip="192.0.2.10", scheme="https", host="gw.city.example",
                          body=json.dumps(envelope).encode())

        async def run() -> Response:
            return await self.handlers[POSTURE_PATH](request)

        return asyncio.run(run())

    def submit(self, report: dict[str, Any]) -> Response:
        return self.send(signed_envelope(report, self.key, self.cert))


_counter = iter(range(1, 1_000_000))


def _nonce() -> str:
    return f"{next(_counter):032x}"


def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def _error(response: Response) -> tuple[int, str]:
    return response.status, json.loads(response.body).get("error", "")


@pytest.fixture
def app(engine: Engine, tmp_path: Path) -> PostureApp:
    init_ca(tmp_path / "ca", organisation="関所市", now=NOW - timedelta(days=1))
    return PostureApp(engine, tmp_path)


def test_a_signed_report_is_accepted_stored_classified_and_audited(app: PostureApp) -> None:
    response = app.submit(app.report())
    assert response.status == 200, response.body
    assert json.loads(response.body) == {"device_id": app.device.device_id,
                                         "profile": "managed", "failed_checks": []}
    row = posture.latest(app.engine, app.device.device_id)
    assert row is not None and row.profile == "managed" and row.reported_at == NOW
    app.clock.now = NOW + timedelta(minutes=1)
    lower = app.submit(app.report(disk_encryption=False))
    assert json.loads(lower.body)["profile"] == "byod"
    assert json.loads(lower.body)["failed_checks"] == ["disk_encryption"]
    records = [r for r in audit_log.iter_records(app.engine)
               if r.event_type == "device.posture"]
    assert len(records) == 2
    last = json.loads(records[-1].body)
    last = last.get("data", last)
    assert last["profile"] == "byod" and last["failed"] == "disk_encryption"
    assert last["device"] == app.device.device_id and last["user"] == "tanaka"


def test_a_tampered_report_is_refused(app: PostureApp) -> None:
    envelope = signed_envelope(app.report(disk_encryption=False), app.key, app.cert)
    envelope["report"]["disk_encryption"] = True  # upgrade the posture after signing
    assert _error(app.send(envelope)) == (403, "posture-signature")
    assert posture.latest(app.engine, app.device.device_id) is None


def test_a_report_signed_by_another_key_is_refused(app: PostureApp) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    assert _error(app.send(signed_envelope(app.report(), other, app.cert))) == (
        403, "posture-signature")


def test_a_replayed_nonce_is_refused(app: PostureApp) -> None:
    report = app.report()
    assert app.submit(report).status == 200
    assert _error(app.submit(report)) == (409, "posture-replay")
    # The same nonce in a newer report (re-signed) is still spent.
    app.clock.now = NOW + timedelta(minutes=1)
    assert _error(app.submit(app.report(nonce=report["nonce"]))) == (409, "posture-replay")
    # An older report cannot replace a newer one (rollback), even with a fresh nonce.
    assert app.submit(app.report()).status == 200
    older = app.report(time=format_time(NOW + timedelta(seconds=30)))
    assert _error(app.submit(older)) == (409, "posture-replay")


def test_stale_and_future_reports_are_refused(app: PostureApp) -> None:
    stale = app.report(time=format_time(NOW - timedelta(minutes=15, seconds=1)))
    assert _error(app.submit(stale)) == (403, "posture-stale")
    future = app.report(time=format_time(NOW + timedelta(minutes=5)))
    assert _error(app.submit(future)) == (403, "posture-future")
    assert posture.latest(app.engine, app.device.device_id) is None


def test_a_revoked_or_suspended_device_is_refused(app: PostureApp) -> None:
    change_status(app.engine, app.device.device_id, "suspended", admin="admin", now=NOW)
    assert _error(app.submit(app.report())) == (403, "posture-device")
    change_status(app.engine, app.device.device_id, "revoked", admin="admin", now=NOW)
    assert _error(app.submit(app.report())) == (403, "posture-device")


def test_foreign_certificates_and_device_ids_are_refused(app: PostureApp,
                                                         tmp_path: Path) -> None:
    # A certificate shaped exactly like ours, from another CA with the same names.
    init_ca(tmp_path / "other", organisation="関所市", now=NOW - timedelta(days=1))
    key = ec.generate_private_key(ec.SECP256R1())
    foreign = issue_device_certificate(
        load_ca(tmp_path / "other"), _csr(key), device_id=app.device.device_id,
        inventory_id="unassigned", user="tanaka", now=NOW)
    assert device_facts(foreign).device_id == app.device.device_id
    assert _error(app.send(signed_envelope(app.report(), key, foreign))) == (
        403, "posture-certificate")
    # Our device's report about another device id.
    assert _error(app.submit(app.report(device_id="dev-someone-else"))) == (
        403, "posture-device")
    bad: dict[str, Any]
    for bad in ({"report": {}}, {"report": 1, "signature": "", "certificate": ""},
                {"report": app.report(), "signature": "!!", "certificate": "x"}):
        assert _error(app.send(bad))[0] == 400


def test_the_gateway_sees_the_profile_and_quarantines_stale_reports(app: PostureApp) -> None:
    identity = device_facts(app.cert)
    trust = DeviceTrust(app.engine, wall_clock=app.clock)

    def profile() -> str:
        return str(asyncio.run(trust.standing(identity, 0, SETTINGS)).profile)

    assert profile() == "quarantine"  # no report yet: never unknown-but-allowed
    assert app.submit(app.report()).status == 200
    assert profile() == "managed"
    app.clock.now = NOW + timedelta(minutes=16)
    assert profile() == "quarantine"  # the report went stale
    assert app.submit(app.report(screen_lock=False, edr=False)).status == 200
    assert profile() == "quarantine"  # fresh, but passes no profile
    app.clock.now += timedelta(minutes=1)
    assert app.submit(app.report(edr=None)).status == 200
    assert profile() == "byod"
    change_status(app.engine, app.device.device_id, "revoked", admin="admin", now=NOW)
    assert asyncio.run(trust.standing(identity, 0, SETTINGS)).enrolled is False
