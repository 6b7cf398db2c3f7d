"""The dashboard through `ops.run` over a real database (SQLite and PostgreSQL): counts per
hour and per local day in Tokyo, top denial reasons, devices failing posture, the audit head
and the last verification; closed hours are read once; a storage failure is not a guess."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from sekisho.audit.events import (
    AccessDecision,
    AuditEvent,
    MfaFailed,
    SignInFailed,
    SignInSucceeded,
)
from sekisho.console.admin import dashboard
from sekisho.devices import enrolment
from sekisho.errors import StorageError
from sekisho.policy.reasons import REASONS
from sekisho.storage import devices, posture, users

from .audit_kit import AUDITOR, HELPDESK, SUPER, Kit, build

NOW = datetime(2026, 11, 26, 3, 30, tzinfo=UTC)  # 12:30 in Tokyo


def _deny(reason: str, user: str = "tanaka") -> AccessDecision:
    return AccessDecision(route="finance", user=user, decision="deny", reasons=(reason,),
                          source_ip="203.0.113.7", method="GET", path="/", status=403,
                          bytes_in=0, bytes_out=0, duration_ms=1.0)


SIGNIN = SignInSucceeded(user="tanaka", source_ip="10.0.0.1", methods=("password",),
                         session="s1")
SEED: list[tuple[timedelta, AuditEvent]] = [
    (timedelta(days=20), SIGNIN),  # before the window: counted nowhere
    (timedelta(days=10), _deny("group-unauthorized")),  # in the 14 days, not in the 7
    # 2026-11-25 15:30 UTC is 00:30 on the 26th in Tokyo: today's local day.
    (NOW - datetime(2026, 11, 25, 15, 30, tzinfo=UTC), SIGNIN),
    (timedelta(hours=3, minutes=10), _deny("device-unauthorized")),
    (timedelta(hours=2), MfaFailed(user="tanaka", method="totp", reason="invalid-code",
                                   source_ip="10.0.0.1")),
    (timedelta(hours=1), SIGNIN),
    (timedelta(minutes=50), SIGNIN),
    (timedelta(minutes=30), SignInFailed(user="sato", source_ip="10.0.0.2",
                                         reason="invalid-credentials")),
    (timedelta(minutes=10), _deny("group-unauthorized")),
    (timedelta(minutes=5), _deny("device-unauthorized", user="sato")),
    (timedelta(minutes=4), _deny("device-unauthorized", user="")),
]


def _device(kit: Kit, username: str, name: str) -> str:
    code, _ = enrolment.create_code(kit.engine, username, "setup", timedelta(hours=1), now=NOW)
    device_id = f"dev-{name}"
    assert devices.consume_code_and_add_device(
        kit.engine, code_hash=enrolment.code_hash(code), now=NOW, device_id=device_id,
        inventory_id=f"INV-{name}", user_id=users.require_user(kit.engine, username).id,
        name=name, cert_serial=f"{len(name):08x}", cert_not_after=NOW + timedelta(days=365))
    return device_id


def _report(kit: Kit, device_id: str, profile: str, minutes_ago: int) -> None:
    at = NOW - timedelta(minutes=minutes_ago)
    posture.record(kit.engine, device_id=device_id, nonce=device_id.encode().hex()[:32],
                   reported_at=at, received_at=at, nonce_expires=NOW + timedelta(hours=1),
                   report="{}", profile=profile)


@pytest.fixture
def kit(database_url: str) -> Iterator[Kit]:
    dashboard._CLOSED.forget()
    kit = build(database_url, NOW)
    for back, event in SEED:
        kit.clock.now = NOW - back
        kit.audit.append_sync(event) if event.durable else kit.audit.record(event)
        kit.audit.flush()
    kit.clock.now = NOW
    for name in ("tanaka", "sato"):
        users.create_user(kit.engine, name, password_hash="x", now=NOW)
    tanaka = users.require_user(kit.engine, "tanaka")
    kit.sessions.create(tanaka, ["password"], "10.0.0.1", "pytest")
    kit.sessions.create(tanaka, ["password"], "10.0.0.3", "pytest")
    kit.sessions.create(users.require_user(kit.engine, "sato"), ["password"], "10.0.0.2",
                        "pytest")
    kit.sessions.revoke_user("sato", "admin", "test")  # an ended session counts for nothing
    _report(kit, _device(kit, "tanaka", "failing"), "quarantine", 20)
    _report(kit, _device(kit, "tanaka", "fine"), "standard", 10)
    devices.set_status(kit.engine, _device(kit, "sato", "hacked"), "suspended", now=NOW,
                       reason="edr:ransomware")
    devices.set_status(kit.engine, _device(kit, "sato", "gone"), "revoked", now=NOW,
                       reason="lost")
    yield kit
    kit.audit.close()
    kit.engine.dispose()


def test_figures(kit: Kit) -> None:
    kit.run(AUDITOR, "audit.verify")
    head = len(SEED) + 1
    data = kit.run(HELPDESK, "dashboard.get")
    assert data["active_sessions"] == 2
    hourly = data["hourly"]
    assert len(hourly) == 24 and hourly[-1]["start"] == "2026-11-26T03:00:00Z"
    assert hourly[-1]["start_local"] == "2026-11-26T12:00+09:00"
    by_hour = {row["start"][11:13]: (row["signins"], row["signin_failures"], row["denials"])
               for row in hourly}
    assert by_hour["03"] == (0, 1, 3)  # 03:00–03:30: one failure, three denials
    assert by_hour["02"] == (2, 0, 0)  # 02:30 and 02:40
    assert by_hour["01"] == (0, 1, 0)  # the MFA failure at 01:30
    assert by_hour["00"] == (0, 0, 1)  # the denial at 00:20
    assert sum(r["signins"] for r in hourly) == 3  # 15:30 yesterday is 12 hours before
    daily = data["daily"]
    assert len(daily) == 14 and daily[-1]["day"] == "2026-11-26"
    assert daily[-1]["start"] == "2026-11-25T15:00:00Z"  # Tokyo midnight
    assert (daily[-1]["signins"], daily[-1]["signin_failures"], daily[-1]["denials"]) == (
        3, 2, 4)
    assert daily[-11]["day"] == "2026-11-16" and daily[-11]["denials"] == 1
    assert sum(day["signins"] for day in daily) == 3  # not the one 20 days ago
    assert [(r["reason"], r["count"]) for r in data["top_denial_reasons"]] == [
        ("device-unauthorized", 3), ("group-unauthorized", 1)]
    top = data["top_denial_reasons"][0]
    assert top["text"] == top["text_ja"] == REASONS["device-unauthorized"][0]
    english = kit.run(AUDITOR, "dashboard.get", lang="en")["top_denial_reasons"][0]
    assert english["text"] == english["text_en"] != english["text_ja"]
    failing = {d["name"]: (d["user"], d["verdict"]) for d in data["devices_failing_posture"]}
    assert failing == {"failing": ("tanaka", "posture-failed"),
                       "hacked": ("sato", "compromised")}
    assert data["devices_failing_total"] == 2
    audit = data["audit"]
    assert audit["head_seq"] == head and audit["head_time"] == "2026-11-26T03:30:00Z"
    verification = audit["last_verification"]
    assert (verification["ok"], verification["checked"], verification["by"]) == (
        True, head - 1, "suzuki")


def test_every_admin_role_reads_it_and_nothing_is_verified_yet(kit: Kit) -> None:
    for actor in (SUPER, HELPDESK, AUDITOR):
        assert kit.run(actor, "dashboard.get")["audit"]["last_verification"] is None


def test_closed_hours_are_read_once_and_open_ones_every_time(kit: Kit) -> None:
    first = kit.run(AUDITOR, "dashboard.get")["daily"][-1]["denials"]
    kit.clock.now = NOW - timedelta(hours=2)  # a closed hour: not read again …
    kit.audit.record(_deny("group-unauthorized"))
    kit.clock.now = NOW - timedelta(minutes=1)  # … the open hour is
    kit.audit.record(_deny("group-unauthorized"))
    kit.audit.flush()
    kit.clock.now = NOW
    assert kit.run(AUDITOR, "dashboard.get")["daily"][-1]["denials"] == first + 1
    kit.clock.now = NOW + dashboard.ClosedHours.refresh  # the whole window again
    assert kit.run(AUDITOR, "dashboard.get")["daily"][-1]["denials"] == first + 2


def test_a_storage_failure_is_not_a_guess(kit: Kit) -> None:
    with kit.engine.begin() as connection:
        connection.execute(text("DROP TABLE audit_reasons"))
    with pytest.raises(StorageError):
        kit.run(AUDITOR, "dashboard.get")
