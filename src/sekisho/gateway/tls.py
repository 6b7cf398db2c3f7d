"""TLS for the public listener: a server SSLContext from files, and the demo's self-signed
certificate (generated once into the data directory, key file mode 0600, reused while valid).

TLS 1.2 minimum with AEAD ciphers only: older versions and CBC suites are the downgrade and
padding-oracle attack surface (POODLE, Lucky13).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sekisho.errors import ConfigError

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
DEFAULT_HOSTS = ("localhost", "*.localhost", "127.0.0.1")


def server_context(cert_file: str, key_file: str, *,
                   client_ca_dir: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """The listener's context; with `client_ca_dir`, client certificates are asked for
    (optional) and verified against that internal CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"TLS 証明書または鍵を読み込めません / cannot load the TLS certificate or key "
            f"({cert_file}, {key_file}): {type(exc).__name__}"
        ) from None
    if client_ca_dir is not None:
        request_client_certificates(context, client_ca_dir)
    return context


def request_client_certificates(context: ssl.SSLContext,
                                ca_dir: str | os.PathLike[str]) -> None:
    """Ask for a client certificate (optional) and trust only the internal CA for it.

    The root is the only trust anchor; the intermediate sits in the same store so a client
    that sends only its leaf (most browsers with a PKCS#12 import do send the chain, some
    do not) still chains up. PARTIAL_CHAIN stays off: otherwise the intermediate alone
    would be an anchor, and a certificate chaining to it but not to the root would pass.
    A presented certificate that does not verify fails the handshake; OpenSSL also checks
    validity dates and the clientAuth purpose. Revocation is the registry's job, per request.
    """
    directory = Path(ca_dir)
    try:
        bundle = b"".join((directory / name).read_bytes()
                          for name in ("root.pem", "intermediate.pem"))
        context.load_verify_locations(cadata=bundle.decode("ascii"))
    except (OSError, ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(
            f"クライアント証明書の CA を読み込めません (sekisho ca init を実行してください) / "
            f"cannot load the client certificate CA from {directory} (run sekisho ca init): "
            f"{type(exc).__name__}"
        ) from None
    context.verify_flags &= ~ssl.VERIFY_X509_PARTIAL_CHAIN
    context.verify_mode = ssl.CERT_OPTIONAL


def _valid(cert_path: Path, hosts: Sequence[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc - now < dt.timedelta(days=7):
        return False
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(n) for n in names.get_values_for_type(x509.DNSName)}
    present |= {str(n) for n in names.get_values_for_type(x509.IPAddress)}
    return set(hosts) <= present


def self_signed(data_dir: str | os.PathLike[str],
                hosts: Sequence[str] = DEFAULT_HOSTS) -> tuple[str, str]:
    """(cert path, key path) of a self-signed certificate for `hosts` in `data_dir/tls`."""
    directory = Path(data_dir) / "tls"
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "self-signed.crt", directory / "self-signed.key"
    if key_path.exists() and _valid(cert_path, hosts):
        return str(cert_path), str(key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sekisho demo (self-signed)")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)
