"""What a device certificate says about the device: pure parsing, no I/O, no chain checks.

The gateway's TLS layer validates the chain, validity and revocation first; this module then
turns the verified leaf into `DeviceIdentity`, the plain data the policy facts are built from.
It still fails closed on a certificate that is not shaped like one Sekisho issued (a CA,
missing or duplicated device URNs, a CN that disagrees with the URN), because a certificate
from another issuer trusted by mistake must not become a device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sekisho.errors import SekishoError

DEVICE_URN = "urn:sekisho:device:"
INVENTORY_URN = "urn:sekisho:inventory:"


class NotADeviceCertificate(SekishoError):
    """The certificate lacks what Sekisho puts into every device certificate."""

    code = "device-certificate-invalid"
    status = 403


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """The device facts carried by its certificate."""

    device_id: str
    inventory_id: str
    serial: int
    not_after: datetime
    issuer: str
    user: str | None = None


def device_facts(chain: x509.Certificate | Sequence[x509.Certificate]) -> DeviceIdentity:
    """Parse the leaf (a certificate, or a chain with the leaf first) into `DeviceIdentity`."""
    if isinstance(chain, x509.Certificate):
        leaf = chain
    elif chain:
        leaf = chain[0]
    else:
        raise _refuse("証明書がありません / no certificate")
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise _refuse("必要な拡張がありません / a required extension is missing") from None
    except ValueError:
        raise _refuse("拡張を読めません / cannot parse the extensions") from None
    if constraints.ca:
        raise _refuse("CA 証明書は端末証明書ではありません / a CA certificate is not a device")
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise _refuse("clientAuth がありません / clientAuth usage missing")
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    device_id = _one(uris, DEVICE_URN, "device")
    inventory_id = _one(uris, INVENTORY_URN, "inventory")
    common_names = [str(a.value) for a in leaf.subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)]
    if common_names != [device_id]:
        raise _refuse("CN と端末 ID が一致しません / the CN does not match the device id")
    users = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.USER_ID)]
    return DeviceIdentity(
        device_id=device_id,
        inventory_id=inventory_id,
        serial=leaf.serial_number,
        not_after=leaf.not_valid_after_utc,
        issuer=leaf.issuer.rfc4514_string(),
        user=users[0] if len(users) == 1 else None,
    )


def _one(uris: list[str], prefix: str, label: str) -> str:
    found = [uri[len(prefix):] for uri in uris if uri.startswith(prefix)]
    if len(found) != 1 or not found[0]:
        raise _refuse(f"{label} の URN がちょうど 1 つ必要です / exactly one {label} URN required")
    return found[0]


def _refuse(description: str) -> NotADeviceCertificate:
    return NotADeviceCertificate(description)
