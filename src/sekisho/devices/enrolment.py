"""Device enrolment: one-time codes, issuing a device's certificate, suspension, revocation.

Rule: the enrolment code is the only credential a device shows, so it is random (100 bits),
shown once, stored as its SHA-256, short-lived and spent in the same transaction that records
the device (`storage.devices.consume_code_and_add_device`): a code read over a shoulder or
replayed after use enrols nothing. The device id is chosen here, never by the device, and
only the CSR's public key reaches the certificate (`devices.ca`). A device that is not
active has its certificate listed in `current_crl`.

Functions are synchronous (database and signing); the audit events they imply are built by
the `*_event` helpers and appended by the caller (CLI or HTTP handler) after the change.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine

from sekisho.audit.events import DeviceEnrolled, DeviceEnrolmentCodeCreated, DeviceStatusChanged
from sekisho.devices.ca import CertificateAuthority, build_crl, issue_device_certificate
from sekisho.errors import SekishoError
from sekisho.storage import devices as store
from sekisho.storage.devices import DeviceRecord
from sekisho.storage.users import get_user_by_id, require_user

# Crockford's base32 without I, L, O, U: no look-alike characters when read aloud or typed.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 20  # 20 × 5 bits = 100 bits: online guessing is hopeless even unthrottled
MAX_TTL = timedelta(days=30)
DEFAULT_INVENTORY = "unassigned"


class EnrolmentError(SekishoError):
    """The code is unknown, spent or expired, or the request is malformed."""

    code = "enrolment-invalid"
    status = 400


def new_code() -> str:
    """A fresh code, grouped as XXXXX-XXXXX-XXXXX-XXXXX for reading aloud."""
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i:i + 5] for i in range(0, CODE_LENGTH, 5))


def code_hash(code: str) -> str:
    """SHA-256 of the normalised code (case, spaces and dashes do not matter)."""
    normal = "".join(c for c in code.upper() if c not in "- \t")
    return hashlib.sha256(normal.encode("ascii", "replace")).hexdigest()


def create_code(engine: Engine, user: str, admin: str, ttl: timedelta, *,
                now: datetime | None = None) -> tuple[str, DeviceEnrolmentCodeCreated]:
    """Create a one-time code for `user`; returns the code (shown once) and its audit event."""
    moment = _now(now)
    if not timedelta(minutes=1) <= ttl <= MAX_TTL:
        raise EnrolmentError("有効期間は 1 分〜30 日です / the TTL must be 1 minute to 30 days",
                             code="enrolment-ttl")
    account = require_user(engine, user)
    if account.disabled:
        raise EnrolmentError("無効化された利用者です / the user is disabled",
                             code="enrolment-user-disabled")
    code = new_code()
    digest = code_hash(code)
    store.insert_code(engine, code_hash=digest, user_id=account.id, created_by=admin,
                      now=moment, expires_at=moment + ttl)
    return code, DeviceEnrolmentCodeCreated(
        admin=admin, user=account.username, code=digest[:8],
        expires_at=(moment + ttl).isoformat())


def enrol(
    engine: Engine, ca: CertificateAuthority, code: str, csr_pem: bytes, *,
    device_name: str, inventory_id: str = "", now: datetime | None = None,
) -> tuple[str, str, DeviceRecord]:
    """Spend `code` and issue a certificate for the CSR's key: (cert PEM, chain PEM, device)."""
    moment = _now(now)
    name = " ".join(device_name.split())
    if not 1 <= len(name) <= 128 or not name.isprintable():
        raise EnrolmentError("端末名は 1〜128 文字です / the device name must be 1-128 "
                             "printable characters", code="enrolment-name")
    inventory = inventory_id.strip() or DEFAULT_INVENTORY
    digest = code_hash(code)
    record = store.load_code(engine, digest)
    if record is None or record.used_at is not None or record.expires_at <= moment:
        raise _invalid_code()
    owner = get_user_by_id(engine, record.user_id)
    if owner is None or owner.disabled:  # disabled after the code was made: fail closed
        raise EnrolmentError("無効化された利用者です / the user is disabled",
                             code="enrolment-user-disabled")
    device_id = "dev-" + secrets.token_hex(8)
    # Issued before the code is spent so a bad CSR does not burn the code; a certificate is
    # only handed out if the conditional UPDATE below wins.
    cert = issue_device_certificate(ca, csr_pem, device_id=device_id, inventory_id=inventory,
                                    user=record.username, now=moment)
    serial = f"{cert.serial_number:x}"
    if not store.consume_code_and_add_device(
            engine, code_hash=digest, now=moment, device_id=device_id, inventory_id=inventory,
            user_id=record.user_id, name=name, cert_serial=serial,
            cert_not_after=cert.not_valid_after_utc):
        raise _invalid_code()
    pem = serialization.Encoding.PEM
    chain = (ca.intermediate.public_bytes(pem) + ca.root.public_bytes(pem)).decode("ascii")
    return cert.public_bytes(pem).decode("ascii"), chain, store.require_device(engine, device_id)


def enrolled_event(device: DeviceRecord, code: str, source_ip: str) -> DeviceEnrolled:
    return DeviceEnrolled(user=device.username, device=device.device_id, name=device.name,
                          inventory_id=device.inventory_id, serial=device.cert_serial,
                          code=code_hash(code)[:8], source_ip=source_ip)


def rename(engine: Engine, device_id: str, name: str, *, admin: str
           ) -> tuple[DeviceRecord, DeviceStatusChanged]:
    clean = " ".join(name.split())
    if not 1 <= len(clean) <= 128 or not clean.isprintable():
        raise EnrolmentError("端末名は 1〜128 文字です / the device name must be 1-128 "
                             "printable characters", code="enrolment-name")
    device = store.rename_device(engine, device_id, clean)
    return device, DeviceStatusChanged(admin=admin, device=device.device_id,
                                       user=device.username, action="rename", details=clean)


def change_status(engine: Engine, device_id: str, status: str, *, admin: str, reason: str = "",
                  now: datetime | None = None
                  ) -> tuple[DeviceRecord, DeviceStatusChanged | None]:
    """Suspend, revoke or resume (`active`: only from suspended); the event is None when
    nothing changed (already in that state, or a revoked device asked to resume)."""
    if status == "active":
        changed = store.resume(engine, device_id, now=_now(now))
    else:
        changed = store.set_status(engine, device_id, status, now=_now(now), reason=reason)
    device = store.require_device(engine, device_id)
    if not changed:
        return device, None
    action = {"suspended": "suspend", "revoked": "revoke", "active": "resume"}[status]
    return device, DeviceStatusChanged(admin=admin, device=device.device_id,
                                       user=device.username, action=action, details=reason)


def current_crl(engine: Engine, ca: CertificateAuthority, *, now: datetime | None = None,
                next_update_hours: float = 24) -> bytes:
    """The CRL (PEM) listing every unexpired certificate of a suspended or revoked device."""
    moment = _now(now)
    entries: list[tuple[int, datetime, x509.ReasonFlags | None]] = []
    for device in store.listed_in_crl(engine, moment):
        reason = (x509.ReasonFlags.certificate_hold if device.status == "suspended"
                  else _revocation_reason(device.revoked_reason))
        entries.append((int(device.cert_serial, 16), device.revoked_at or moment, reason))
    return build_crl(ca, entries, now=moment, next_update_hours=next_update_hours)


def _revocation_reason(text: str) -> x509.ReasonFlags:
    wanted = text.strip().lower().replace("-", "_")
    for flag in x509.ReasonFlags:
        if wanted in (flag.name, flag.value.lower()) and flag not in (
                x509.ReasonFlags.certificate_hold, x509.ReasonFlags.remove_from_crl):
            return flag
    return x509.ReasonFlags.unspecified


def _invalid_code() -> EnrolmentError:
    # One answer for unknown, spent and expired codes: the endpoint tells a guesser nothing.
    return EnrolmentError("登録コードが無効です (誤り・使用済み・期限切れ) / the enrolment code is "
                          "invalid, already used or expired", code="enrolment-code-invalid")


def _now(now: datetime | None) -> datetime:
    return (datetime.now(UTC) if now is None else now).astimezone(UTC)
