"""The client certificate of one TLS connection, read once after the handshake.

Only a certificate OpenSSL has verified counts: the listener asks for one with
`CERT_OPTIONAL` and the internal CA as the only trust anchor (`tls.request_client_certificates`),
so a certificate that does not chain to it fails the handshake and never reaches this
module. As a second guard, nothing is read from a connection whose context does not verify
(`CERT_NONE`): an unverified certificate is a claim, not a fact. A verified certificate
that is not shaped like a Sekisho device certificate yields no device (fail closed).
Revocation is not decided here but per request, against the registry (`devices.trust`).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass

from cryptography import x509

from sekisho.devices.identity import DeviceIdentity, NotADeviceCertificate, device_facts

log = logging.getLogger("sekisho.gateway")


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """The verified client certificate: the device it names (if any), issuer and SANs."""

    device: DeviceIdentity | None
    issuer: str
    sans: frozenset[str]


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> ClientCertificate | None:
    """The connection's verified client certificate, or None (none sent, or not verifiable)."""
    try:
        if ssl_object is None or ssl_object.context.verify_mode == ssl.CERT_NONE:
            return None
        der = ssl_object.getpeercert(binary_form=True)
        return parse(der) if der else None
    except Exception:  # fail closed: a certificate we cannot read is no certificate
        log.exception("client certificate could not be read")
        return None


def parse(der: bytes) -> ClientCertificate | None:
    """Pure: DER bytes of a verified certificate → `ClientCertificate` (None if unreadable)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        issuer = cert.issuer.rfc4514_string()
    except ValueError:
        return None
    try:
        device: DeviceIdentity | None = device_facts(cert)
    except NotADeviceCertificate as exc:
        log.info("client certificate is not a device certificate: %s", exc.description)
        device = None
    return ClientCertificate(device, issuer, _sans(cert))


def _sans(cert: x509.Certificate) -> frozenset[str]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return frozenset()
    values: set[str] = set()
    for kind in (x509.UniformResourceIdentifier, x509.DNSName, x509.RFC822Name):
        values.update(str(v) for v in names.get_values_for_type(kind))
    for address in names.get_values_for_type(x509.IPAddress):
        if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            values.add(str(address))
    return frozenset(values)
