"""Enrolment codes and the device endpoints, through the real handlers and a real database."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, select

from sekisho.audit.log import AuditLog
from sekisho.config.model import Config, Route, ServerSettings, ThrottleSettings
from sekisho.devices.ca import init_ca, load_ca
from sekisho.devices.enrolment import (
    EnrolmentError,
    code_hash,
    create_code,
    current_crl,
    enrol,
)
from sekisho.devices.handlers import CRL_PATH, ENROL_PATH
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.storage import audit_log, devices, users
from sekisho.storage.models import EnrolmentCode
from sekisho.web import Request, Response

NOW = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


def _csr(key: ec.EllipticCurvePrivateKey | None = None) -> tuple[ec.EllipticCurvePrivateKey,
                                                                  bytes]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca", organisation="関所市", now=NOW - timedelta(days=1))
    return tmp_path


def test_code_is_random_hashed_at_rest_and_expires(engine: Engine, data_dir: Path) -> None:
    users.create_user(engine, "tanaka")
    ca = load_ca(data_dir / "ca")
    code, event = create_code(engine, "tanaka", "admin", timedelta(hours=1), now=NOW)
    other, _ = create_code(engine, "tanaka", "admin", timedelta(hours=1), now=NOW)
    assert code != other and len(code.replace("-", "")) == 20
    assert event.code == code_hash(code)[:8] and code not in repr(event)
    with engine.connect() as conn:
        stored = conn.execute(select(EnrolmentCode.__table__)).all()
    assert code_hash(code) in {row.code_hash for row in stored}
    assert not any(code in str(tuple(row)) or code.replace("-", "") in str(tuple(row))
                   for row in stored)
    with pytest.raises(EnrolmentError) as expired:
        enrol(engine, ca, code, _csr()[1], device_name="PC", now=NOW + timedelta(hours=1))
    assert expired.value.code == "enrolment-code-invalid"
    # Lower case and without dashes is the same code.
    _, _, device = enrol(engine, ca, other.lower().replace("-", ""), _csr()[1],
                         device_name="PC", now=NOW)
    assert device.username == "tanaka" and device.device_id.startswith("dev-")
    with pytest.raises(EnrolmentError):
        create_code(engine, "tanaka", "admin", timedelta(days=31), now=NOW)


def test_single_use_and_a_bad_csr_does_not_burn_the_code(engine: Engine,
                                                         data_dir: Path) -> None:
    users.create_user(engine, "tanaka")
    ca = load_ca(data_dir / "ca")
    code, _ = create_code(engine, "tanaka", "admin", timedelta(hours=1), now=NOW)
    with pytest.raises(Exception) as bad:
        enrol(engine, ca, code, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", device_name="PC",
              now=NOW)
    assert getattr(bad.value, "code", "") == "csr-invalid"
    enrol(engine, ca, code, _csr()[1], device_name="PC", inventory_id="INV-7", now=NOW)
    with pytest.raises(EnrolmentError):
        enrol(engine, ca, code, _csr()[1], device_name="PC2", now=NOW)
    assert len(devices.list_devices(engine)) == 1


def test_disabled_user_cannot_enrol(engine: Engine, data_dir: Path) -> None:
    users.create_user(engine, "tanaka")
    ca = load_ca(data_dir / "ca")
    code, _ = create_code(engine, "tanaka", "admin", timedelta(hours=1), now=NOW)
    users.set_disabled(engine, "tanaka", True)
    with pytest.raises(EnrolmentError) as refused:
        enrol(engine, ca, code, _csr()[1], device_name="PC", now=NOW)
    assert refused.value.code == "enrolment-user-disabled"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class DeviceApp:
    def __init__(self, engine: Engine, data_dir: Path,
                 throttle: ThrottleSettings | None = None) -> None:
        self.engine = engine
        self.clock = Clock()
        self.config = Config(
            source="test",
            routes=(Route(id="r", host="gw.city.example", path_prefix="/",
                          to="http://127.0.0.1:9"),),
            server=ServerSettings(data_dir=str(data_dir)),
            throttle=throttle or ThrottleSettings(account_max_failures=3, ip_max_failures=50,
                                                  lockout=600, base_delay=0.0, max_delay=0.0))
        self.handlers = build_signin_handlers(
            current_config=lambda: self.config, engine=engine,
            sessions=SessionManager(engine, self.config.session, clock=self.clock),
            audit=AuditLog(engine), clock=self.clock)

    def call(self, method: str, path: str, body: bytes = b"", ip: str = "192.0.2.10",
             content_type: str = "application/json") -> Response:
        request = Request(method=method, target=path, path=path, query="",
                          headers=[("host", "gw.city.example"), ("content-type", content_type)],
                          client_ip=ip, scheme="https", host="gw.city.example", body=body)
        async def run() -> Response:
            return await self.handlers[path](request)

        return asyncio.run(run())

    def post(self, payload: dict[str, object], ip: str = "192.0.2.10") -> Response:
        return self.call("POST", ENROL_PATH, json.dumps(payload).encode(), ip)

    def audit_types(self) -> list[str]:
        return [str(r.event_type) for r in audit_log.iter_records(self.engine)]


def _body(response: Response) -> dict[str, str]:
    return json.loads(response.body)  # type: ignore[no-any-return]


def test_enrolment_through_the_handler_and_the_crl(engine: Engine, data_dir: Path) -> None:
    users.create_user(engine, "tanaka")
    app = DeviceApp(engine, data_dir)
    code, event = create_code(engine, "tanaka", "admin", timedelta(hours=1), now=NOW)
    AuditLog(engine).append_sync(event)
    key, csr = _csr()
    response = app.post({"code": code, "csr": csr.decode(), "name": "窓口 PC",
                         "inventory_id": "PC-0042"})
    assert response.status == 200, response.body
    data = _body(response)
    cert = x509.load_pem_x509_certificate(data["certificate"].encode())
    chain = x509.load_pem_x509_certificates(data["chain"].encode())
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(chain[0])
    chain[0].verify_directly_issued_by(chain[1])
    assert f"urn:sekisho:device:{data['device_id']}" in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    # The same code again: refused, and nothing new recorded.
    again = app.post({"code": code, "csr": _csr()[1].decode(), "name": "other"})
    assert again.status == 403 and _body(again)["error"] == "enrolment-code-invalid"
    assert len(devices.list_devices(engine)) == 1

    crl_before = x509.load_pem_x509_crl(app.call("GET", CRL_PATH).body)
    assert crl_before.get_revoked_certificate_by_serial_number(cert.serial_number) is None
    from sekisho.devices.enrolment import change_status

    _, change = change_status(engine, data["device_id"], "suspended", admin="admin",
                              reason="lost", now=NOW)
    assert change is not None
    crl = x509.load_pem_x509_crl(app.call("GET", CRL_PATH).body)
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None and crl.is_signature_valid(chain[0].public_key())  # type: ignore[arg-type]
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.certificate_hold)
    assert app.audit_types() == ["device.code_created", "device.enrolled"]


def test_the_handler_refuses_malformed_requests(engine: Engine, data_dir: Path) -> None:
    users.create_user(engine, "tanaka")
    app = DeviceApp(engine, data_dir)
    code, _ = create_code(engine, "tanaka", "admin", timedelta(hours=1), now=NOW)
    csr = _csr()[1].decode()
    cases: list[tuple[Response, int, str]] = [
        (app.call("GET", ENROL_PATH), 405, "method-not-allowed"),
        (app.call("POST", ENROL_PATH, b"code=x", content_type="application/x-www-form-urlencoded"),
         400, "enrolment-request"),
        (app.call("POST", ENROL_PATH, b"{not json"), 400, "enrolment-request"),
        (app.post({"code": code, "csr": csr}), 400, "enrolment-request"),  # no name
        (app.post({"code": code, "csr": csr, "name": 5}), 400, "enrolment-request"),
        (app.post({"code": code, "csr": "garbage", "name": "PC"}), 400, "csr-invalid"),
        (app.post({"code": code, "csr": csr, "name": "PC", "inventory_id": "a,b"}), 400,
         "ca-identifier"),
    ]
    for response, status, error in cases:
        assert (response.status, _body(response)["error"]) == (status, error), response.body
    # None of these spent the code.
    assert app.post({"code": code, "csr": csr, "name": "PC"}).status == 200


def test_wrong_codes_are_throttled_per_address(engine: Engine, data_dir: Path) -> None:
    users.create_user(engine, "tanaka")
    # The key counts an address, so the address limit (4) applies, not the account one (2):
    # a town hall behind one NAT address is not locked out by a couple of typos.
    app = DeviceApp(engine, data_dir, ThrottleSettings(
        account_max_failures=2, ip_max_failures=4, lockout=600, base_delay=0.0, max_delay=0.0))
    code, _ = create_code(engine, "tanaka", "admin", timedelta(hours=1), now=NOW)
    csr = _csr()[1].decode()
    for _ in range(4):
        wrong = app.post({"code": "WRONG-CODE", "csr": csr, "name": "PC"})
        assert (wrong.status, _body(wrong)["error"]) == (403, "enrolment-code-invalid")
    # Locked: even the right code is not checked from this address (online guessing).
    locked = app.post({"code": code, "csr": csr, "name": "PC"})
    assert locked.status == 429 and _body(locked)["error"] == "throttled"
    assert int(dict(locked.headers)["Retry-After"]) == 600
    lockouts = [json.loads(r.body) for r in audit_log.iter_records(engine)
                if r.event_type == "signin.lockout"]
    assert [(e["key"], e["failures"]) for e in lockouts] == [("enrol-ip:192.0.2.10", 4)]
    assert app.post({"code": code, "csr": csr, "name": "PC"}, ip="192.0.2.99").status == 200


def test_without_a_ca_the_endpoints_answer_503(engine: Engine, tmp_path: Path) -> None:
    users.create_user(engine, "tanaka")
    app = DeviceApp(engine, tmp_path / "empty")
    code, _ = create_code(engine, "tanaka", "admin", timedelta(hours=1), now=NOW)
    response = app.post({"code": code, "csr": _csr()[1].decode(), "name": "PC"})
    assert response.status == 503 and _body(response)["error"] == "ca-missing"
    crl = app.call("GET", CRL_PATH)
    assert crl.status == 503 and _body(crl)["error"] == "ca-missing"
    assert devices.load_code(engine, code_hash(code)).used_at is None  # type: ignore[union-attr]


def test_crl_lists_revoked_with_reason(engine: Engine, data_dir: Path) -> None:
    users.create_user(engine, "tanaka")
    ca = load_ca(data_dir / "ca")
    code, _ = create_code(engine, "tanaka", "admin", timedelta(hours=1), now=NOW)
    cert_pem, _, device = enrol(engine, ca, code, _csr()[1], device_name="PC", now=NOW)
    from sekisho.devices.enrolment import change_status

    change_status(engine, device.device_id, "revoked", admin="a", reason="keyCompromise",
                  now=NOW)
    crl = x509.load_pem_x509_crl(current_crl(engine, ca, now=NOW))
    serial = x509.load_pem_x509_certificate(cert_pem.encode()).serial_number
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise)
