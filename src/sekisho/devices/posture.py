"""Posture reports: their schema, canonical signed form, freshness, and profile classification.

Pure code: no sockets, no database, the clock is a parameter. A report is a flat JSON object
(see `FIELDS`) signed by the device's private key (ECDSA P-256, SHA-256) over its canonical
JSON (sorted keys, no spaces, UTF-8), so the gateway verifies exactly the bytes it stores.

Rule: a device earns a profile only from a fresh, verified report. `classify` returns the
first configured profile whose every requirement passes; anything else — no report, a stale
one, one from the future, an unknown value (`null`) for a required check — falls to
`quarantine`, never to "unknown but allowed".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from sekisho.config.model import PostureProfile as Profile
from sekisho.errors import SekishoError

SCHEMA_VERSION = 1
QUARANTINE = "quarantine"
CHECKS = ("os_updated_within", "disk_encryption", "firewall", "screen_lock", "edr")
PLATFORMS = ("linux", "windows", "macos")
# Clocks drift; a report stamped up to this far ahead of the gateway is still accepted.
CLOCK_SKEW = timedelta(seconds=60)
MAX_STRING = 128
MAX_PROCESSES = 32
_NONCE = re.compile(r"[0-9a-f]{32,64}")
# name -> allowed JSON types (None means JSON null: "could not tell")
FIELDS: Mapping[str, tuple[type | None, ...]] = {
    "schema": (int,),
    "device_id": (str,),
    "platform": (str,),
    "os_name": (str,),
    "os_version": (str,),
    "last_update": (str, None),
    "disk_encryption": (bool, None),
    "firewall": (bool, None),
    "screen_lock": (bool, None),
    "edr": (bool, None),
    "edr_processes": (list,),
    "nonce": (str,),
    "time": (str,),
}


class PostureError(SekishoError):
    """A report is malformed, not fresh, replayed, or not signed by an enrolled device."""

    code = "posture-invalid"
    status = 400


@dataclass(frozen=True, slots=True)
class PostureReport:
    """A parsed, shape-checked report; `raw` is the object that was signed."""

    device_id: str
    platform: str
    os_name: str
    os_version: str
    last_update: datetime | None
    disk_encryption: bool | None
    firewall: bool | None
    screen_lock: bool | None
    edr: bool | None
    edr_processes: tuple[str, ...]
    nonce: str
    time: datetime
    raw: Mapping[str, Any]


def canonical(report: Mapping[str, Any]) -> bytes:
    """The signed bytes: sorted keys, no whitespace, UTF-8."""
    return json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sign(report: Mapping[str, Any], key: ec.EllipticCurvePrivateKey) -> bytes:
    """A DER ECDSA signature over `canonical(report)` (device side)."""
    return key.sign(canonical(report), ec.ECDSA(hashes.SHA256()))


def verify(report: Mapping[str, Any], signature: bytes, public_key: object) -> None:
    """Raise `PostureError` unless `signature` is the P-256 ECDSA signature of the report."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1):
        raise PostureError("端末の鍵が ECDSA P-256 ではありません / the device key is not "
                           "ECDSA P-256", code="posture-signature")
    try:
        public_key.verify(signature, canonical(report), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise PostureError("署名が正しくありません / the report signature is invalid",
                           code="posture-signature") from None


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_report(data: object) -> PostureReport:
    """Check the report's shape strictly (unknown keys, types, sizes) and parse its values."""
    if not isinstance(data, Mapping) or set(data) != set(FIELDS):
        raise _malformed("項目が揃っていません / the report must have exactly the fields "
                         + ", ".join(FIELDS))
    for name, kinds in FIELDS.items():
        value = data[name]
        if not any((value is None) if kind is None else (
                isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
                for kind in kinds):
            raise _malformed(f"{name} の型が不正です / wrong type for {name}")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise _malformed(f"{name} が長すぎます / {name} is too long")
    processes = data["edr_processes"]
    if len(processes) > MAX_PROCESSES or not all(
            isinstance(p, str) and 0 < len(p) <= 64 for p in processes):
        raise _malformed("edr_processes が不正です / invalid edr_processes")
    if data["schema"] != SCHEMA_VERSION or data["platform"] not in PLATFORMS:
        raise _malformed("未対応の形式です / unsupported schema or platform")
    if not _NONCE.fullmatch(data["nonce"]):
        raise _malformed("nonce は 16〜32 バイトの 16 進数です / the nonce must be 16-32 bytes "
                         "of lower-case hex")
    return PostureReport(
        device_id=data["device_id"], platform=data["platform"], os_name=data["os_name"],
        os_version=data["os_version"],
        last_update=None if data["last_update"] is None else _time(data["last_update"]),
        disk_encryption=data["disk_encryption"], firewall=data["firewall"],
        screen_lock=data["screen_lock"], edr=data["edr"], edr_processes=tuple(processes),
        nonce=data["nonce"], time=_time(data["time"]), raw=dict(data))


def check_fresh(report: PostureReport, now: datetime, max_age: float) -> None:
    """Refuse a report older than `max_age` seconds, or stamped in the future (past skew)."""
    if report.time > now + CLOCK_SKEW:
        # A future stamp would stay "fresh" for longer than max_age (pre-dated reports).
        raise PostureError("報告の時刻が未来です / the report is dated in the future",
                           code="posture-future")
    if now - report.time > timedelta(seconds=max_age):
        raise PostureError("報告が古すぎます / the report is too old", code="posture-stale")


def classify(report: PostureReport | None, profiles: Sequence[Profile], now: datetime,
             max_age: float = 15 * 60) -> tuple[str, tuple[str, ...]]:
    """(profile, failed checks): the first profile whose requirements all pass.

    `failed` lists the checks the best (first) profile failed, or why the report does not
    count (`report-missing`, `report-stale`, `report-future`); empty when the first passed.
    """
    if report is None:
        return QUARANTINE, ("report-missing",)
    try:
        check_fresh(report, now, max_age)
    except PostureError as exc:
        return QUARANTINE, ("report-" + exc.code.removeprefix("posture-"),)
    best_failed: tuple[str, ...] = ()
    for index, profile in enumerate(profiles):
        failed = failed_checks(report, profile, now)
        if not failed:
            return profile.name, best_failed
        if index == 0:
            best_failed = failed
    return QUARANTINE, best_failed


def failed_checks(report: PostureReport, profile: Profile, now: datetime) -> tuple[str, ...]:
    """The requirements of `profile` the report does not prove (unknown counts as failed)."""
    failed: list[str] = []
    if profile.os_updated_within is not None:
        updated = report.last_update
        if (updated is None or updated > now + CLOCK_SKEW
                or now - updated > timedelta(seconds=profile.os_updated_within)):
            failed.append("os_updated_within")
    for name in CHECKS[1:]:
        if getattr(profile, name) and getattr(report, name) is not True:
            failed.append(name)
    return tuple(failed)


def _time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _malformed(f"時刻を読めません / not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        raise _malformed("時刻にはタイムゾーンが必要です / times must carry a time zone")
    return moment.astimezone(UTC)


def _malformed(description: str) -> PostureError:
    return PostureError(description, code="posture-request")
