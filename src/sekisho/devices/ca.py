"""The internal certificate authority as files: root, device-issuing intermediate, device
certificates and the CRL.

Rule: a device certificate says only what Sekisho decided (device id, inventory id, user,
clientAuth, not a CA). Nothing is copied from the CSR except its public key, so a device cannot
ask for CA rights, extra names or other key usages. The root signs only the intermediate; the
gateway and the enrolment service need only the intermediate key (`load_ca` never reads the
root key). The clock is a parameter everywhere (`now=`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sekisho.config.model import Config, ServerSettings, TLSSettings
from sekisho.devices.identity import DEVICE_URN, INVENTORY_URN, DeviceIdentity, device_facts
from sekisho.errors import SekishoError

ROOT_CERT = "root.pem"
ROOT_KEY = "root.key"
INTERMEDIATE_CERT = "intermediate.pem"
INTERMEDIATE_KEY = "intermediate.key"

ROOT_LIFETIME = timedelta(days=3652)
INTERMEDIATE_LIFETIME = timedelta(days=1826)
# Issued certificates start a little in the past: a device whose clock runs a few minutes
# behind would otherwise reject (or be rejected with) a certificate "not yet valid".
BACKDATE = timedelta(minutes=5)

ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048
MAX_CSR_BYTES = 16 * 1024
# Identifiers end up in URNs and the subject CN; a closed alphabet blocks name injection
# (e.g. a "," or "=" that confuses a consumer parsing the RFC 4514 string).
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CaError(SekishoError):
    """The CA files are missing, unreadable or inconsistent, or a request was refused."""

    code = "ca-error"
    status = 400


@dataclass(frozen=True, slots=True)
class CaPaths:
    """Where `init_ca` wrote the four files."""

    directory: Path
    root_cert: Path
    root_key: Path
    intermediate_cert: Path
    intermediate_key: Path

    @classmethod
    def of(cls, directory: str | Path) -> CaPaths:
        base = Path(directory)
        return cls(base, base / ROOT_CERT, base / ROOT_KEY,
                   base / INTERMEDIATE_CERT, base / INTERMEDIATE_KEY)


def ca_directory(config: Config) -> Path:
    """Where this installation's device CA lives: `tls.client_ca_dir`, else
    `<server.data_dir>/ca`. The one answer for every part that touches the CA — the mTLS
    listener, enrolment, posture intake, the CRL, the portal and `sekisho ca` — so that the
    CA which issues certificates is the one the listener trusts."""
    return ca_directory_of(config.server, config.tls)


def ca_directory_of(server: ServerSettings, tls: TLSSettings) -> Path:
    """`ca_directory` from the two sections it depends on (for callers without a `Config`)."""
    if tls.client_ca_dir:
        return Path(tls.client_ca_dir)
    return Path(server.data_dir) / "ca"


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A loaded CA: both certificates and the intermediate's key (never the root's)."""

    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint as colon-separated upper-case hex (the `openssl` form)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def init_ca(
    directory: str | Path,
    *,
    organisation: str,
    passphrase: bytes | None = None,
    now: datetime | None = None,
    force: bool = False,
) -> CaPaths:
    """Create a root CA and a device-issuing intermediate in `directory` (ECDSA P-256).

    Refuses to overwrite an existing CA unless `force`: replacing it silently would orphan
    every device certificate already issued.
    """
    moment = _now(now)
    organisation = organisation.strip()
    if not organisation or len(organisation) > 64:
        raise CaError("組織名は 1〜64 文字です / organisation must be 1-64 characters",
                      code="ca-organisation")
    if passphrase is not None and not passphrase:
        raise CaError("パスフレーズが空です / the passphrase is empty", code="ca-passphrase")
    paths = CaPaths.of(directory)
    existing = [p for p in _files(paths) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise CaError(
            f"CA は既に存在します: {paths.directory} / a CA already exists there "
            "(上書きしません / refusing to overwrite)",
            code="ca-exists",
        )
    paths.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in existing:
        path.unlink()

    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name(f"{organisation} Sekisho Root CA", organisation)
    root = (
        _ca_builder(root_name, root_name, root_key.public_key(), moment=moment,
                    lifetime=ROOT_LIFETIME, path_length=1)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                       critical=False)
        .sign(root_key, hashes.SHA256())
    )
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter_name = _name(f"{organisation} Sekisho Device CA", organisation)
    intermediate = (
        _ca_builder(inter_name, root_name, inter_key.public_key(), moment=moment,
                    lifetime=INTERMEDIATE_LIFETIME, path_length=0)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                       critical=False)
        .sign(root_key, hashes.SHA256())
    )
    _write_key(paths.root_key, root_key, passphrase)
    _write_key(paths.intermediate_key, inter_key, passphrase)
    _write_public(paths.root_cert, root.public_bytes(serialization.Encoding.PEM))
    _write_public(paths.intermediate_cert, intermediate.public_bytes(serialization.Encoding.PEM))
    return paths


def load_certificates(directory: str | Path) -> tuple[x509.Certificate, x509.Certificate]:
    """The root and intermediate certificates (no key, no passphrase needed)."""
    paths = CaPaths.of(directory)
    return _read_cert(paths.root_cert), _read_cert(paths.intermediate_cert)


def load_ca(directory: str | Path, passphrase: bytes | None = None) -> CertificateAuthority:
    """Load the CA, checking that the intermediate is signed by the root and matches its key."""
    paths = CaPaths.of(directory)
    root, intermediate = load_certificates(directory)
    try:
        data = paths.intermediate_key.read_bytes()
    except OSError as exc:
        raise CaError(f"CA の鍵を読めません / cannot read the CA key: {paths.intermediate_key} "
                      f"({exc.strerror})", code="ca-missing") from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise CaError("鍵の暗号化とパスフレーズの有無が一致しません / the key's encryption and "
                      "the passphrase do not match (given or missing)",
                      code="ca-passphrase") from None
    except ValueError:
        raise CaError("CA の鍵を復号できません (パスフレーズ違い) / cannot decrypt the CA key "
                      "(wrong passphrase?)", code="ca-passphrase") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError("CA の鍵が ECDSA ではありません / the CA key is not ECDSA", code="ca-invalid")
    try:
        intermediate.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise CaError("中間 CA がルートで署名されていません / the intermediate is not signed by "
                      "the root", code="ca-invalid") from None
    if key.public_key().public_numbers() != _ec_public(intermediate).public_numbers():
        raise CaError("中間 CA の鍵と証明書が一致しません / the intermediate key does not match "
                      "its certificate", code="ca-invalid")
    return CertificateAuthority(root, intermediate, key)


def issue_device_certificate(
    ca: CertificateAuthority,
    csr_pem: bytes,
    *,
    device_id: str,
    inventory_id: str,
    user: str,
    days: int = 365,
    now: datetime | None = None,
) -> x509.Certificate:
    """Sign a device certificate for the key in `csr_pem`; only the key is taken from the CSR."""
    moment = _now(now)
    for label, value in (("device id", device_id), ("inventory id", inventory_id)):
        if not _IDENTIFIER.fullmatch(value):
            raise CaError(f"{label} に使えない文字があります (英数字と . _ - のみ、64 文字まで) / "
                          f"invalid {label}: letters, digits, '.', '_', '-' only, at most 64",
                          code="ca-identifier")
    if not user or len(user) > 128 or not user.isprintable():
        raise CaError("利用者名が不正です / invalid user name", code="ca-identifier")
    if not 1 <= days <= 3650:
        raise CaError("有効日数は 1〜3650 です / days must be 1-3650", code="ca-validity")
    return issue_client_certificate(
        ca, csr_pem, common_name=device_id,
        extra_names=[x509.NameAttribute(NameOID.USER_ID, user)],
        uris=[DEVICE_URN + device_id, INVENTORY_URN + inventory_id], days=days, now=moment)


def issue_client_certificate(
    ca: CertificateAuthority,
    csr_pem: bytes,
    *,
    common_name: str,
    extra_names: Sequence[x509.NameAttribute[str]],
    uris: Sequence[str],
    days: int,
    now: datetime,
) -> x509.Certificate:
    """A TLS client certificate (devices, connectors) from the intermediate for the CSR's key
    (checked: curve or size); nothing else is taken from the CSR. The callers validate their
    names; this fixes what every client certificate of ours carries."""
    public_key = _checked_csr_key(csr_pem)
    organisation = ca.intermediate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(a.value))
                   for a in organisation[:1]]
    attributes += extra_names
    # A certificate cannot outlive its issuer: clients would reject the chain anyway.
    not_after = min(now + timedelta(days=days), ca.intermediate.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.intermediate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(uri) for uri in uris]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.intermediate_key.public_key()), critical=False)
        .sign(ca.intermediate_key, hashes.SHA256())
    )


def build_crl(
    ca: CertificateAuthority,
    revoked: Iterable[tuple[int, datetime, x509.ReasonFlags | None]],
    *,
    next_update_hours: float = 24,
    now: datetime | None = None,
    crl_number: int | None = None,
) -> bytes:
    """The intermediate's CRL in PEM; `crl_number` defaults to the Unix time (monotonic)."""
    moment = _now(now)
    if next_update_hours <= 0:
        raise CaError("next_update_hours は正の数です / next_update_hours must be positive",
                      code="ca-validity")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.intermediate.subject)
        .last_update(moment)
        .next_update(moment + timedelta(hours=next_update_hours))
        .add_extension(x509.CRLNumber(int(moment.timestamp()) if crl_number is None
                                      else crl_number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.intermediate_key.public_key()), critical=False)
    )
    for serial, revoked_at, reason in revoked:
        entry = (x509.RevokedCertificateBuilder().serial_number(serial)
                 .revocation_date(_now(revoked_at)))
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(ca.intermediate_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def _checked_csr_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CaError("CSR が大きすぎます / the CSR is too large", code="csr-invalid")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        signature_ok = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType):
        raise CaError("CSR を読めません / cannot parse the CSR", code="csr-invalid") from None
    # Proof of possession: without it anyone could get a certificate for someone else's key.
    if not signature_ok:
        raise CaError("CSR の署名が正しくありません / the CSR signature is invalid",
                      code="csr-signature")
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ALLOWED_CURVES):
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return key
    raise CaError("鍵の種類が許可されていません (EC P-256/P-384 または RSA 2048 ビット以上) / "
                  "key type not allowed (EC P-256/P-384 or RSA >= 2048 bits)", code="csr-weak-key")


def _ca_builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey,
    *, moment: datetime, lifetime: timedelta, path_length: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(moment - BACKDATE)
        .not_valid_after(moment + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    )


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False,
               crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
        crl_sign=crl_sign, encipher_only=False, decipher_only=False,
    )


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
    ])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, passphrase: bytes | None) -> None:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase
        else serialization.NoEncryption()
    )
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)
    # O_EXCL|O_NOFOLLOW: a symlink planted at the key path cannot redirect the write, and the
    # file is 0600 from its first byte (no window where another local user could read it).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)


def _write_public(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise CaError(f"CA の証明書を読めません / cannot read the CA certificate: {path} "
                      f"({exc.strerror})", code="ca-missing") from None
    except ValueError:
        raise CaError(f"CA の証明書が壊れています / the CA certificate is corrupt: {path}",
                      code="ca-invalid") from None


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CaError("中間 CA の公開鍵が ECDSA ではありません / the intermediate is not ECDSA",
                      code="ca-invalid")
    return key


def _files(paths: CaPaths) -> tuple[Path, ...]:
    return (paths.root_cert, paths.root_key, paths.intermediate_cert, paths.intermediate_key)


def _now(now: datetime | None) -> datetime:
    moment = datetime.now(UTC) if now is None else now
    if moment.tzinfo is None:
        raise CaError("時刻にタイムゾーンが必要です / a timezone-aware time is required",
                      code="ca-clock")
    return moment.astimezone(UTC)


__all__ = [
    "CaError", "CaPaths", "CertificateAuthority", "DeviceIdentity", "build_crl", "device_facts",
    "fingerprint", "init_ca", "issue_device_certificate", "load_ca", "load_certificates",
]
