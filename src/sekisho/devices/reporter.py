"""The device side of posture: collect, sign with the device key, send to the gateway.

Run by a scheduled task (cron, systemd timer, Task Scheduler) more often than the gateway's
`devices.posture_max_age`. The report is signed with the key made at enrolment (it never
leaves the device) and sent with the device certificate; the gateway checks both, the time
and the nonce. TLS to the gateway is verified exactly as for enrolment (`devices.client`).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sekisho.devices.client import (
    CERT_FILE,
    KEY_FILE,
    DeviceClientError,
    check_gateway,
    post_json,
    tls_verification,
)
from sekisho.devices.collect import DEFAULT_EDR_PROCESSES, build_report, collect
from sekisho.devices.identity import NotADeviceCertificate, device_facts
from sekisho.devices.posture import sign

POSTURE_PATH = "/.sekisho/devices/posture"


def load_identity(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, str]:
    """The enrolled key, certificate and device id stored by `sekisho device enroll`."""
    try:
        key = serialization.load_pem_private_key((directory / KEY_FILE).read_bytes(), None)
        cert = x509.load_pem_x509_certificate((directory / CERT_FILE).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise DeviceClientError(f"登録済みの鍵と証明書を読めません / cannot read the enrolled "
                                f"key and certificate in {directory} ({type(exc).__name__}); "
                                "sekisho device enroll を先に / enrol first",
                                code="device-not-enrolled") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeviceClientError("端末の鍵が ECDSA ではありません / the device key is not ECDSA",
                                code="device-not-enrolled")
    try:
        device_id = device_facts(cert).device_id
    except NotADeviceCertificate as exc:
        raise DeviceClientError(exc.description, code="device-not-enrolled") from None
    return key, cert, device_id


def signed_envelope(report: dict[str, Any], key: ec.EllipticCurvePrivateKey,
                    cert: x509.Certificate) -> dict[str, Any]:
    """The body POSTed to the gateway: `{report, signature, certificate}`."""
    return {"report": report,
            "signature": base64.b64encode(sign(report, key)).decode("ascii"),
            "certificate": cert.public_bytes(serialization.Encoding.PEM).decode("ascii")}


def send_report(
    gateway: str, *, directory: Path, cafile: str | None = None, insecure: bool = False,
    edr_processes: Sequence[str] = DEFAULT_EDR_PROCESSES, timeout: float = 30.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Collect, sign and send one report; returns (the report, the gateway's answer)."""

    check_gateway(gateway, insecure=insecure)
    parts = urlsplit(gateway)
    url = f"https://{parts.netloc}{POSTURE_PATH}"
    key, cert, device_id = load_identity(directory)
    report = build_report(collect(edr_processes=edr_processes), device_id, datetime.now(UTC))
    data = post_json(url, signed_envelope(report, key, cert),
                     verify=tls_verification(cafile, insecure), timeout=timeout,
                     refused="報告が拒否されました / report refused")
    return report, data
