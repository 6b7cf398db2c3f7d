"""The internal CA: files and permissions, device certificates, CRL, device facts and the CLI."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from sekisho.devices.ca import (
    CaError,
    CertificateAuthority,
    build_crl,
    device_facts,
    fingerprint,
    init_ca,
    issue_device_certificate,
    load_ca,
)
from sekisho.devices.identity import NotADeviceCertificate

NOW = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
SEKISHO = Path(sys.executable).with_name("sekisho")
_KeyMaker = Callable[[], ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None, *,
         extensions: bool = False) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin-laptop")]))
    if extensions:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        ).add_extension(
            x509.SubjectAlternativeName([x509.DNSName("gateway.city.example"),
                                         x509.UniformResourceIdentifier(
                                             "urn:sekisho:device:someone-else")]),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca", organisation="Test City", now=NOW)
    return tmp_path / "ca"


@pytest.fixture
def ca(ca_dir: Path) -> CertificateAuthority:
    return load_ca(ca_dir)


def _issue(ca: CertificateAuthority, csr: bytes | None = None) -> x509.Certificate:
    return issue_device_certificate(ca, csr or _csr(), device_id="pc-0042",
                                    inventory_id="INV-2025-0042", user="tanaka", now=NOW)


def test_keys_are_0600_and_the_ca_has_the_right_constraints(ca_dir: Path) -> None:
    for name in ("root.key", "intermediate.key"):
        assert stat.S_IMODE((ca_dir / name).stat().st_mode) == 0o600
    ca = load_ca(ca_dir)
    root_bc = ca.root.extensions.get_extension_for_class(x509.BasicConstraints)
    inter_bc = ca.intermediate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (root_bc.critical, root_bc.value.ca, root_bc.value.path_length) == (True, True, 1)
    assert (inter_bc.value.ca, inter_bc.value.path_length) == (True, 0)
    usage = ca.root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert isinstance(ca.root.public_key(), ec.EllipticCurvePublicKey)
    assert ca.root.not_valid_after_utc - NOW >= timedelta(days=3650)
    assert ca.intermediate.not_valid_after_utc - NOW >= timedelta(days=1825)
    ca.intermediate.verify_directly_issued_by(ca.root)


def test_reinit_is_refused_unless_forced(ca_dir: Path) -> None:
    before = (ca_dir / "root.pem").read_bytes()
    with pytest.raises(CaError) as info:
        init_ca(ca_dir, organisation="Test City", now=NOW)
    assert info.value.code == "ca-exists"
    assert (ca_dir / "root.pem").read_bytes() == before
    init_ca(ca_dir, organisation="Test City", now=NOW, force=True)
    assert (ca_dir / "root.pem").read_bytes() != before


def test_a_symlink_at_the_key_path_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "root.key").symlink_to(target)
    with pytest.raises(CaError):
        init_ca(tmp_path / "ca", organisation="Test City", now=NOW)
    assert not target.exists()


def test_a_passphrase_protected_key_needs_the_passphrase(tmp_path: Path) -> None:
    init_ca(tmp_path, organisation="Test City", passphrase=b"correct horse", now=NOW)
    assert b"ENCRYPTED" in (tmp_path / "intermediate.key").read_bytes()
    for wrong in (None, b"wrong"):
        with pytest.raises(CaError) as info:
            load_ca(tmp_path, wrong)
        assert info.value.code == "ca-passphrase"
    assert load_ca(tmp_path, b"correct horse").intermediate_key is not None


def test_a_mismatched_intermediate_is_refused(tmp_path: Path) -> None:
    init_ca(tmp_path / "a", organisation="A", now=NOW)
    init_ca(tmp_path / "b", organisation="B", now=NOW)
    shutil.copy(tmp_path / "b" / "intermediate.pem", tmp_path / "a" / "intermediate.pem")
    with pytest.raises(CaError) as info:
        load_ca(tmp_path / "a")
    assert info.value.code == "ca-invalid"


def test_device_certificate_chains_to_intermediate_and_root(ca: CertificateAuthority,
                                                            tmp_path: Path) -> None:
    cert = _issue(ca)
    cert.verify_directly_issued_by(ca.intermediate)
    verifier = (PolicyBuilder().store(Store([ca.root])).time(NOW + timedelta(hours=1))
                .build_client_verifier())
    verified = verifier.verify(cert, [ca.intermediate])
    assert [c.subject for c in verified.chain] == [cert.subject, ca.intermediate.subject,
                                                   ca.root.subject]
    if shutil.which("openssl"):
        for name, item in (("root.pem", ca.root), ("inter.pem", ca.intermediate),
                           ("leaf.pem", cert)):
            (tmp_path / name).write_bytes(item.public_bytes(serialization.Encoding.PEM))
        result = subprocess.run(
            ["openssl", "verify", "-attime", str(int((NOW + timedelta(hours=1)).timestamp())),
             "-purpose", "sslclient", "-CAfile", str(tmp_path / "root.pem"),
             "-untrusted", str(tmp_path / "inter.pem"), str(tmp_path / "leaf.pem")],
            capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr


def test_device_certificate_contents(ca: CertificateAuthority) -> None:
    cert = _issue(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pc-0042"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:sekisho:device:pc-0042", "urn:sekisho:inventory:INV-2025-0042"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)


def test_csr_extensions_are_not_copied(ca: CertificateAuthority) -> None:
    cert = _issue(ca, _csr(extensions=True))
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []
    assert "urn:sekisho:device:someone-else" not in san.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert ExtendedKeyUsageOID.SERVER_AUTH not in cert.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pc-0042"


def test_csr_with_a_bad_signature_is_refused(ca: CertificateAuthority) -> None:
    der = bytearray(x509.load_pem_x509_csr(_csr()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte belongs to the signature value
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CaError) as info:
        _issue(ca, tampered)
    assert info.value.code in {"csr-signature", "csr-invalid"}


def test_a_csr_signed_by_another_key_is_refused(ca: CertificateAuthority) -> None:
    # Proof of possession: the public key of one CSR with the signature of another.
    first = x509.load_pem_x509_csr(_csr()).public_bytes(serialization.Encoding.DER)
    second = x509.load_pem_x509_csr(_csr()).public_bytes(serialization.Encoding.DER)
    info_first = x509.load_der_x509_csr(first).tbs_certrequest_bytes
    info_second = x509.load_der_x509_csr(second).tbs_certrequest_bytes
    swapped = second.replace(info_second, info_first)
    pem = x509.load_der_x509_csr(swapped).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CaError) as info:
        _issue(ca, pem)
    assert info.value.code == "csr-signature"


@pytest.mark.parametrize("key", [
    pytest.param(lambda: rsa.generate_private_key(65537, 1024), id="rsa-1024"),
    pytest.param(lambda: ec.generate_private_key(ec.SECP256K1()), id="secp256k1"),
    pytest.param(lambda: ec.generate_private_key(ec.SECP521R1()), id="p-521"),
])
def test_weak_or_unlisted_keys_are_refused(ca: CertificateAuthority, key: _KeyMaker) -> None:
    with pytest.raises(CaError) as info:
        _issue(ca, _csr(key()))
    assert info.value.code == "csr-weak-key"


@pytest.mark.parametrize("key", [
    pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa-2048"),
    pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p-384"),
])
def test_allowed_keys_are_accepted(ca: CertificateAuthority, key: _KeyMaker) -> None:
    assert _issue(ca, _csr(key())).serial_number > 0


@pytest.mark.parametrize("field", ["device_id", "inventory_id"])
def test_identifiers_that_could_inject_names_are_refused(ca: CertificateAuthority,
                                                         field: str) -> None:
    values = {"device_id": "pc-1", "inventory_id": "inv-1", field: "pc,CN=admin"}
    with pytest.raises(CaError) as info:
        issue_device_certificate(ca, _csr(), device_id=values["device_id"],
                                 inventory_id=values["inventory_id"], user="tanaka", now=NOW)
    assert info.value.code == "ca-identifier"


def test_certificate_does_not_outlive_the_intermediate(ca: CertificateAuthority) -> None:
    late = ca.intermediate.not_valid_after_utc - timedelta(days=10)
    cert = issue_device_certificate(ca, _csr(), device_id="pc-1", inventory_id="inv-1",
                                    user="tanaka", days=365, now=late)
    assert cert.not_valid_after_utc == ca.intermediate.not_valid_after_utc


def test_device_facts_round_trip(ca: CertificateAuthority) -> None:
    cert = _issue(ca)
    facts = device_facts([cert, ca.intermediate])
    assert (facts.device_id, facts.inventory_id, facts.user) == ("pc-0042", "INV-2025-0042",
                                                                 "tanaka")
    assert facts.serial == cert.serial_number
    assert facts.not_after == NOW + timedelta(days=365)
    assert facts.issuer == ca.intermediate.subject.rfc4514_string()
    assert device_facts(cert) == facts


def test_device_facts_refuse_a_ca_or_foreign_certificate(ca: CertificateAuthority) -> None:
    with pytest.raises(NotADeviceCertificate):
        device_facts(ca.intermediate)
    with pytest.raises(NotADeviceCertificate):
        device_facts([])


def test_crl_lists_revoked_serials_and_is_signed_by_the_intermediate(
        ca: CertificateAuthority) -> None:
    first, second = _issue(ca), _issue(ca)
    pem = build_crl(ca, [(first.serial_number, NOW, x509.ReasonFlags.key_compromise),
                         (second.serial_number, NOW - timedelta(hours=1), None)],
                    next_update_hours=12, now=NOW)
    crl = x509.load_pem_x509_crl(pem)
    assert crl.is_signature_valid(ca.intermediate.public_key())  # type: ignore[arg-type]
    assert not crl.is_signature_valid(ca.root.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.intermediate.subject
    assert {r.serial_number for r in crl} == {first.serial_number, second.serial_number}
    entry = crl.get_revoked_certificate_by_serial_number(first.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise)
    assert crl.next_update_utc == NOW + timedelta(hours=12)
    assert crl.last_update_utc == NOW
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > 0


def test_naive_times_are_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CaError) as info:
        build_crl(ca, [], now=datetime(2025, 4, 1))
    assert info.value.code == "ca-clock"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SEKISHO), "ca", *args], capture_output=True, text=True,
                          check=False, timeout=60)


def test_cli_init_and_show(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    created = _run("init", "--dir", str(ca_dir), "--organisation", "Test City")
    assert created.returncode == 0, created.stderr
    root = x509.load_pem_x509_certificate((ca_dir / "root.pem").read_bytes())
    inter = x509.load_pem_x509_certificate((ca_dir / "intermediate.pem").read_bytes())
    assert fingerprint(root) in created.stdout and fingerprint(inter) in created.stdout
    assert stat.S_IMODE((ca_dir / "intermediate.key").stat().st_mode) == 0o600

    again = _run("init", "--dir", str(ca_dir))
    assert again.returncode == 2
    assert again.stderr.startswith("sekisho: ca-exists:") and "Traceback" not in again.stderr

    shown = _run("show", "--dir", str(ca_dir))
    assert shown.returncode == 0, shown.stderr
    assert "O=Test City,CN=Test City Sekisho Root CA" in shown.stdout
    assert fingerprint(root) in shown.stdout and "0600" in shown.stdout

    missing = _run("show", "--dir", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and missing.stderr.startswith("sekisho: ca-missing:")


def test_cli_passphrase_file(tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_bytes(b"correct horse\n")
    created = _run("init", "--dir", str(tmp_path / "ca"), "--passphrase-file", str(secret))
    assert created.returncode == 0, created.stderr
    assert load_ca(tmp_path / "ca", b"correct horse").intermediate is not None
    assert "encrypted" in _run("show", "--dir", str(tmp_path / "ca")).stdout

    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    refused = _run("init", "--dir", str(tmp_path / "ca2"), "--passphrase-file", str(empty))
    assert refused.returncode == 2 and "ca-passphrase" in refused.stderr
    assert not (tmp_path / "ca2").exists()
