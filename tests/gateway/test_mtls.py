"""mTLS end to end: a real Gateway asking for client certificates, a real internal CA in
tmp, devices enrolled through the real enrolment code path into the real registry (SQLite),
and Python `ssl` clients presenting (or not) their device certificates."""

from __future__ import annotations

import dataclasses
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import text

from sekisho.audit.events import AccessDecision
from sekisho.config.model import Route, SessionSettings
from sekisho.devices.ca import init_ca, issue_device_certificate, load_ca
from sekisho.devices.enrolment import create_code, enrol
from sekisho.devices.identity import DeviceIdentity
from sekisho.devices.trust import standing
from sekisho.gateway.mtls import parse
from sekisho.storage import devices, users
from sekisho.storage.devices import DeviceRecord

from .conftest import GUEST, HOST, STAFF, GatewayUnderTest, parse_response

POLICIES = {
    "device": {"allow": {"and": [{"authenticated": True}, {"device": {"enrolled": True}}]}},
    "inventory": {"allow": {"and": [
        {"authenticated": True},
        {"client_certificate": {"san": "urn:sekisho:inventory:PC-0042"}}]}},
    "anyone": {"allow": {"and": [{"always": True}]}},
}


@dataclasses.dataclass
class Device:
    device_id: str
    context: ssl.SSLContext  # a client context presenting the device certificate


class MtlsGateway(GatewayUnderTest):
    def __init__(self, tmp_path: Path, cache_ttl: float) -> None:
        self.ca_dir = tmp_path / "ca"
        init_ca(self.ca_dir, organisation="関所市")
        self.tmp_path = tmp_path
        super().__init__(tmp_path, tls=True, client_ca_dir=self.ca_dir)
        to = f"http://127.0.0.1:{self.upstream.port}"
        self.reconfigure(
            routes=(Route(id="app", host=HOST, path_prefix="/", to=to, policy="device"),
                    Route(id="inv", host=HOST, path_prefix="/inventory", to=to,
                          policy="inventory"),
                    Route(id="open", host="public.localhost", path_prefix="/", to=to,
                          policy="anyone")),
            policies=POLICIES, session=SessionSettings(cache_ttl=cache_ttl))
        users.create_user(self.engine, "alice")
        users.create_user(self.engine, "bob")

    def enrol(self, user: str, name: str, *, send_chain: bool = True) -> Device:
        """The real enrolment path: a one-time code, a CSR from a key made here."""
        code, _ = create_code(self.engine, user, "admin", timedelta(hours=1))
        key = ec.generate_private_key(ec.SECP256R1())
        cert, chain, record = enrol(self.engine, load_ca(self.ca_dir), code, _csr(key),
                                    device_name=name, inventory_id="PC-0042")
        presented = cert + chain if send_chain else cert
        return Device(record.device_id, self.client_context(key, presented, name))

    def client_context(self, key: ec.EllipticCurvePrivateKey, chain_pem: str,
                       name: str) -> ssl.SSLContext:
        key_file, cert_file = self.tmp_path / f"{name}.key", self.tmp_path / f"{name}.pem"
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        cert_file.write_text(chain_pem)
        context = ssl.create_default_context(cafile=self.server_cert)
        context.load_cert_chain(cert_file, key_file)
        return context

    def get(self, context: ssl.SSLContext | None, path: str = "/", *,
            token: str | None = STAFF, host: str = HOST) -> int:
        with self.connect(context) as sock:
            cookie = f"Cookie: __Host-sekisho={token}\r\n" if token else ""
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{cookie}"
                         "Connection: close\r\n\r\n".encode())
            return parse_response(_read_all(sock))[0]

    def last_reasons(self) -> tuple[str, ...]:
        decisions = [e for e in self.audit.events if isinstance(e, AccessDecision)]
        reasons: tuple[str, ...] = decisions[-1].reasons
        return reasons


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[MtlsGateway]:
    gateway = MtlsGateway(tmp_path, cache_ttl=0)
    yield gateway
    gateway.close()


def test_enrolled_device_reaches_a_device_route(mtls: MtlsGateway) -> None:
    device = mtls.enrol("alice", "pc1")
    assert mtls.get(device.context) == 200
    assert mtls.last_reasons() == ("user-authenticated", "device-authorized")
    # The certificate's SANs reach the client_certificate criterion too.
    assert mtls.get(device.context, "/inventory") == 200
    assert "client-certificate-authorized" in mtls.last_reasons()


def test_a_client_sending_only_its_leaf_still_chains(mtls: MtlsGateway) -> None:
    device = mtls.enrol("alice", "pc2", send_chain=False)  # the gateway holds the intermediate
    assert mtls.get(device.context) == 200


def test_browser_without_certificate_connects_but_is_not_a_device(mtls: MtlsGateway) -> None:
    assert mtls.get(None, host="public.localhost") == 200  # optional: the handshake succeeds
    assert mtls.get(None) == 403
    assert mtls.last_reasons() == ("device-unauthorized",)
    assert mtls.get(None, "/inventory") == 403
    assert mtls.last_reasons() == ("client-certificate-unauthorized",)


def test_certificate_from_another_ca_is_refused_at_the_handshake(mtls: MtlsGateway) -> None:
    # Same shape, same device id as a real enrolment, but signed by a CA we do not trust.
    device = mtls.enrol("alice", "pc1")
    rogue_dir = mtls.tmp_path / "rogue-ca"
    init_ca(rogue_dir, organisation="関所市")
    rogue = load_ca(rogue_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_device_certificate(rogue, _csr(key), device_id=device.device_id,
                                    inventory_id="PC-0042", user="alice")
    pem = serialization.Encoding.PEM
    chain = (cert.public_bytes(pem) + rogue.intermediate.public_bytes(pem)
             + rogue.root.public_bytes(pem)).decode()
    context = mtls.client_context(key, chain, "rogue")
    before = len(mtls.audit.events)
    # TLS 1.3: the client's handshake ends before the server has checked its certificate,
    # so the refusal shows on the first read (an alert or a close without any response).
    try:
        status = mtls.get(context)
    except (ssl.SSLError, ConnectionResetError):
        status = 0
    assert status == 0
    # TLS 1.2: the server's verdict is part of the handshake itself, which fails (uvloop
    # closes the socket rather than sending an alert).
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        mtls.get(context)
    assert len(mtls.audit.events) == before  # never reached the request path


def test_revocation_is_effective_on_the_next_request(mtls: MtlsGateway) -> None:
    device = mtls.enrol("alice", "pc1")
    with mtls.connect(device.context) as sock:  # one keep-alive connection throughout
        assert _keep_alive_get(sock) == 200
        devices.set_status(mtls.engine, device.device_id, "revoked",
                           now=datetime.now(UTC), reason="key_compromise")
        assert _keep_alive_get(sock) == 403
    assert mtls.last_reasons() == ("device-unauthorized",)
    assert mtls.get(device.context) == 403


def test_suspended_device_is_not_enrolled(mtls: MtlsGateway) -> None:
    device = mtls.enrol("alice", "pc1")
    devices.set_status(mtls.engine, device.device_id, "suspended", now=datetime.now(UTC))
    assert mtls.get(device.context) == 403
    assert mtls.last_reasons() == ("device-unauthorized",)


def test_a_device_of_one_user_does_not_vouch_for_another(mtls: MtlsGateway) -> None:
    device = mtls.enrol("alice", "pc1")  # STAFF is alice's session, GUEST is bob's
    assert mtls.get(device.context, token=GUEST) == 403
    assert mtls.last_reasons() == ("device-unauthorized",)


def test_registry_failure_denies_with_503(mtls: MtlsGateway) -> None:
    device = mtls.enrol("alice", "pc1")
    with mtls.engine.begin() as conn:
        conn.execute(text("ALTER TABLE devices RENAME TO devices_gone"))
    assert mtls.get(device.context) == 503
    assert mtls.last_reasons() == ("storage-unavailable",)
    # A request without a device certificate needs no registry lookup.
    assert mtls.get(None, host="public.localhost") == 200


def test_cache_keeps_the_registry_answer_for_its_ttl(tmp_path: Path) -> None:
    gateway = MtlsGateway(tmp_path, cache_ttl=300)
    try:
        device = gateway.enrol("alice", "pc1")
        assert gateway.get(device.context) == 200
        devices.set_status(gateway.engine, device.device_id, "revoked", now=datetime.now(UTC))
        # Within the TTL the cached standing still answers (the documented bound) …
        assert gateway.get(device.context) == 200
        assert gateway.gateway.devices is not None
        gateway.gateway.devices.evict(device.device_id)
        # … and once it is gone, the revocation applies.
        assert gateway.get(device.context) == 403
    finally:
        gateway.close()


def _keep_alive_get(sock: socket.socket) -> int:
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nCookie: __Host-sekisho={STAFF}"
                 "\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers, _ = parse_response(head + b"\r\n\r\n")
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        body += sock.recv(65536)
    return status


# -- the pure parts -------------------------------------------------------------------------

NOW = datetime(2026, 4, 1, tzinfo=UTC)
IDENTITY = DeviceIdentity("dev-1", "PC-1", 0xABC, NOW + timedelta(days=1), "CN=x", "alice")


def _record(**changes: Any) -> DeviceRecord:
    record = DeviceRecord(
        device_id="dev-1", inventory_id="PC-1", user_id=1, username="alice", name="pc",
        status="active", created_at=NOW, cert_serial="abc",
        cert_not_after=NOW + timedelta(days=1), revoked_at=None, revoked_reason="")
    return dataclasses.replace(record, **changes)


@pytest.mark.parametrize(("record", "enrolled"), [
    (_record(), True),
    (None, False),  # unknown to the registry
    (_record(status="suspended"), False),
    (_record(status="revoked"), False),
    (_record(cert_serial="abd"), False),  # an older or other certificate of the device
    (_record(cert_serial="not-hex"), False),
    (_record(username="bob"), False),  # the certificate names another user
    (_record(cert_not_after=NOW), False),
    (_record(device_id="dev-2"), False),
])
def test_standing_rule(record: DeviceRecord | None, enrolled: bool) -> None:
    result = standing(IDENTITY, record, NOW)
    assert result.enrolled is enrolled
    assert result.user == ("alice" if enrolled else "")


def test_parse_refuses_garbage_and_keeps_non_device_certificates_deviceless() -> None:
    assert parse(b"not a certificate") is None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("pc.example")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    parsed = parse(cert.public_bytes(serialization.Encoding.DER))
    assert parsed is not None and parsed.device is None
    assert parsed.issuer == "CN=plain" and parsed.sans == frozenset({"pc.example"})
