"""Posture reports, the pure part: schema, signatures, freshness, profile classification."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sekisho.config.model import PostureProfile
from sekisho.devices import collect
from sekisho.devices.posture import (
    FIELDS,
    QUARANTINE,
    PostureError,
    classify,
    format_time,
    parse_report,
    sign,
    verify,
)

NOW = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
MANAGED = PostureProfile("managed", os_updated_within=30 * 86400, disk_encryption=True,
                         firewall=True, screen_lock=True, edr=True)
BYOD = PostureProfile("byod", os_updated_within=60 * 86400, screen_lock=True)
PROFILES = (MANAGED, BYOD)


def raw(**changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "schema": 1, "device_id": "dev-1", "platform": "linux", "os_name": "Debian",
        "os_version": "12", "last_update": format_time(NOW - timedelta(days=3)),
        "disk_encryption": True, "firewall": True, "screen_lock": True, "edr": True,
        "edr_processes": ["falcon-sensor"], "nonce": "ab" * 16, "time": format_time(NOW),
    }
    report.update(changes)
    return report


CASES = [
    ("all checks pass", raw(), NOW, "managed", ()),
    ("no disk encryption: the lower class", raw(disk_encryption=False), NOW, "byod",
     ("disk_encryption",)),
    ("unknown counts as failed", raw(edr=None, firewall=None), NOW, "byod",
     ("firewall", "edr")),
    ("updated 45 days ago", raw(last_update=format_time(NOW - timedelta(days=45))), NOW,
     "byod", ("os_updated_within",)),
    ("never updated", raw(last_update=None), NOW, QUARANTINE, ("os_updated_within",)),
    ("no screen lock: no profile", raw(screen_lock=False), NOW, QUARANTINE,
     ("screen_lock",)),
    ("15 minutes old is still fresh", raw(), NOW + timedelta(minutes=15), "managed", ()),
    ("stale", raw(), NOW + timedelta(minutes=15, seconds=1), QUARANTINE, ("report-stale",)),
    ("from the future", raw(time=format_time(NOW + timedelta(minutes=5))), NOW, QUARANTINE,
     ("report-future",)),
    ("small clock skew is tolerated", raw(time=format_time(NOW + timedelta(seconds=30))),
     NOW, "managed", ()),
    ("update stamped in the future is a lie", raw(
        last_update=format_time(NOW + timedelta(days=1))), NOW, QUARANTINE,
     ("os_updated_within",)),
]


@pytest.mark.parametrize(("report", "now", "profile", "failed"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify(report: dict[str, Any], now: datetime, profile: str,
                  failed: tuple[str, ...]) -> None:
    assert classify(parse_report(report), PROFILES, now, 15 * 60) == (profile, failed)


def test_missing_report_and_no_profiles_are_quarantine() -> None:
    assert classify(None, PROFILES, NOW) == (QUARANTINE, ("report-missing",))
    assert classify(parse_report(raw()), (), NOW) == (QUARANTINE, ())
    # A profile with no requirements admits any fresh report (and only a fresh one).
    open_profile = (PostureProfile("any"),)
    assert classify(parse_report(raw(edr=None)), open_profile, NOW) == ("any", ())
    assert classify(parse_report(raw()), open_profile, NOW + timedelta(hours=1))[0] == QUARANTINE


@pytest.mark.parametrize("bad", [
    {"extra": 1}, {"edr": "yes"}, {"schema": 2}, {"schema": True}, {"platform": "amiga"},
    {"nonce": "short"}, {"nonce": "AB" * 16}, {"time": "2026-04-01T09:00:00"},
    {"time": "yesterday"}, {"os_name": "x" * 200}, {"edr_processes": [1]},
    {"edr_processes": ["p"] * 40},
])
def test_malformed_reports_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(PostureError) as refused:
        parse_report(raw(**bad))
    assert refused.value.code == "posture-request"
    missing = raw()
    del missing["firewall"]
    with pytest.raises(PostureError):
        parse_report(missing)


def test_signature_covers_every_field_and_binds_the_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    report = raw()
    signature = sign(report, key)
    verify(report, signature, key.public_key())
    verify(dict(reversed(list(report.items()))), signature, key.public_key())  # canonical
    for field, value in (("disk_encryption", False), ("time", format_time(NOW)),
                         ("nonce", "cd" * 16)):
        tampered = {**report, field: value}
        if tampered == report:
            continue
        with pytest.raises(PostureError):
            verify(tampered, signature, key.public_key())
    with pytest.raises(PostureError) as other_key:
        verify(report, signature, ec.generate_private_key(ec.SECP256R1()).public_key())
    assert other_key.value.code == "posture-signature"
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(PostureError):
        verify(report, sign(report, p384), p384.public_key())


def test_the_linux_collector_returns_the_schema_on_this_machine() -> None:
    fields = collect.collect()
    report = collect.build_report(fields, "dev-1", datetime.now(UTC))
    assert set(report) == set(FIELDS)
    parsed = parse_report(report)  # the same strict check the gateway applies
    assert parsed.platform == "linux" and parsed.os_name
    assert len(parsed.nonce) == 32
    assert collect.build_report(fields, "dev-1", NOW)["nonce"] != parsed.nonce


def test_the_linux_collector_reads_its_probes(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('NAME="Debian GNU/Linux"\nVERSION_ID="12"\n')
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text("")
    (tmp_path / "sys/block/dm-0/dm").mkdir(parents=True)
    (tmp_path / "sys/block/dm-0/dm/uuid").write_text("CRYPT-LUKS2-abc-root\n")
    (tmp_path / "etc/ufw").mkdir()
    (tmp_path / "etc/ufw/ufw.conf").write_text("# ufw\nENABLED=yes\n")
    for pid, comm in (("1", "systemd"), ("42", "elastic-endpoin"), ("self", "x")):
        (tmp_path / "proc" / pid).mkdir(parents=True)
        (tmp_path / "proc" / pid / "comm").write_text(comm + "\n")
    fields = collect.collect_linux(tmp_path)
    assert fields["os_name"] == "Debian GNU/Linux" and fields["os_version"] == "12"
    assert fields["last_update"] is not None
    assert fields["disk_encryption"] is True and fields["firewall"] is True
    assert fields["edr"] is True and fields["edr_processes"] == ["elastic-endpoint"]
    # An empty tree: nothing can be told, and unknown is None, never a guess.
    empty = collect.collect_linux(tmp_path / "nothing", edr_processes=())
    assert empty["last_update"] is None and empty["disk_encryption"] is None
    assert empty["firewall"] is None and empty["edr"] is None


def test_windows_and_macos_collectors_are_documented_probes() -> None:
    for probe in (collect.collect_windows, collect.collect_macos):
        with pytest.raises(NotImplementedError):
            probe()
    text = (Path(__file__).resolve().parents[2] / "docs" / "devices.md").read_text("utf-8")
    for command in ("Get-BitLockerVolume", "Get-MpComputerStatus", "fdesetup status",
                    "socketfilterfw --getglobalstate"):
        assert command in text
