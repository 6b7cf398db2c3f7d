"""Accepting one posture report: every check, in order, before anything is stored.

Rule: a report counts only when (1) its certificate chains to our CA (root → intermediate →
leaf) and is within its validity, (2) the registry lists that device as active with that very
certificate, (3) the report names that device and is signed by the certificate's key, (4) it
is fresh (`devices.posture_max_age`, nothing from the future) and (5) its nonce was never
seen. Each failure is a `PostureError` with a stable code; nothing is stored before all pass.
A report signed by another key (a copied report, a forged one) fails (3); a captured report
sent again fails (5); a suspended or revoked device fails (2) from the next report on.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from sqlalchemy import Engine

from sekisho.config.model import DeviceSettings
from sekisho.devices.ca import load_certificates
from sekisho.devices.identity import DeviceIdentity, NotADeviceCertificate, device_facts
from sekisho.devices.posture import (
    CLOCK_SKEW,
    PostureError,
    PostureReport,
    canonical,
    check_fresh,
    classify,
    parse_report,
    verify,
)
from sekisho.devices.trust import standing
from sekisho.storage import devices as store
from sekisho.storage import posture as posture_store
from sekisho.storage.devices import DeviceRecord

MAX_BODY = 64 * 1024
MAX_CERTIFICATE = 16 * 1024
MAX_SIGNATURE = 256  # base64 of a DER ECDSA P-256 signature is under 100 characters


@dataclass(frozen=True, slots=True)
class Accepted:
    device: DeviceRecord
    report: PostureReport
    profile: str
    failed: tuple[str, ...]


def accept(engine: Engine, ca_dir: Path, body: bytes, settings: DeviceSettings,
           now: datetime) -> Accepted:
    """Verify and store one `{report, signature, certificate}` body (see the module rule)."""
    report_data, signature, leaf = _envelope(body)
    identity = _chained(leaf, ca_dir, now)
    record = store.get_device(engine, identity.device_id)
    if not standing(identity, record, now).enrolled or record is None:
        raise PostureError("登録済みの有効な端末ではありません / not an enrolled, active device",
                           code="posture-device")
    report = parse_report(report_data)
    if report.device_id != identity.device_id:
        raise PostureError("報告の端末 ID が証明書と一致しません / the report names another "
                           "device", code="posture-device")
    verify(report_data, signature, leaf.public_key())
    check_fresh(report, now, settings.posture_max_age)
    profile, failed = classify(report, settings.profiles, now, settings.posture_max_age)
    posture_store.record(
        engine, device_id=identity.device_id, nonce=report.nonce, reported_at=report.time,
        received_at=now, report=canonical(report_data).decode("utf-8"), profile=profile,
        # Kept until the report could no longer pass check_fresh (then it is refused anyway).
        nonce_expires=report.time + timedelta(seconds=settings.posture_max_age) + CLOCK_SKEW)
    return Accepted(record, report, profile, failed)


def _envelope(body: bytes) -> tuple[dict[str, Any], bytes, x509.Certificate]:
    if len(body) > MAX_BODY:
        raise _request("報告が大きすぎます / the report is too large")
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _request("JSON を読めません / malformed JSON") from None
    if not isinstance(data, dict) or set(data) != {"report", "signature", "certificate"}:
        raise _request("report・signature・certificate が必要です / report, signature and "
                       "certificate are required")
    report, signature, certificate = data["report"], data["signature"], data["certificate"]
    if (not isinstance(report, dict) or not isinstance(signature, str)
            or not isinstance(certificate, str) or len(signature) > MAX_SIGNATURE
            or len(certificate) > MAX_CERTIFICATE or not certificate.isascii()):
        raise _request("項目の型が不正です / wrong field types")
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise _request("署名は base64 です / the signature must be base64") from None
    try:
        leaf = x509.load_pem_x509_certificate(certificate.encode("ascii"))
    except ValueError:
        raise PostureError("証明書を読めません / cannot parse the certificate",
                           code="posture-certificate") from None
    return report, raw_signature, leaf


def _chained(leaf: x509.Certificate, ca_dir: Path, now: datetime) -> DeviceIdentity:
    """The device identity of a leaf issued by our intermediate, itself issued by our root."""
    root, intermediate = load_certificates(ca_dir)
    refused = PostureError("証明書が端末 CA のものではありません / the certificate was not "
                           "issued by the device CA", code="posture-certificate")
    try:
        intermediate.verify_directly_issued_by(root)
        leaf.verify_directly_issued_by(intermediate)
    except (ValueError, TypeError, InvalidSignature):
        raise refused from None
    for cert in (leaf, intermediate):
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise PostureError("証明書の有効期間外です / the certificate is not valid now",
                               code="posture-certificate")
    try:
        return device_facts(leaf)
    except NotADeviceCertificate:
        raise refused from None


def _request(description: str) -> PostureError:
    return PostureError(description, code="posture-request")
