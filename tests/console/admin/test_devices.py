"""Devices through `ops.run`: enrolment codes (returned once, stored hashed), the registry
listing, suspend / resume / revoke on the change feed, and the posture history."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from sekisho.audit.events import PostureReported
from sekisho.devices import enrolment
from sekisho.storage import changes, posture
from sekisho.storage import devices as store
from sekisho.storage.models import EnrolmentCode

from .people_kit import HELPDESK, SUPER, Admin, build


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    kit = build(f"sqlite:///{tmp_path}/sekisho.db")
    yield kit
    kit.engine.dispose()


@pytest.fixture
def both(database_url: str) -> Iterator[Admin]:
    kit = build(database_url)
    yield kit
    kit.engine.dispose()


def test_an_enrolment_code_is_returned_once_and_stored_hashed(admin: Admin) -> None:
    answer = admin.run(HELPDESK, "devices.create_code",
                       body={"user": "Tanaka", "expires_in_hours": 2})
    code = answer["code"]
    assert answer["user"] == "tanaka" and len(code) == 23
    expires = datetime.fromisoformat(answer["expires_at"])
    assert timedelta(hours=1, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=2)
    with admin.engine.connect() as conn:
        stored = list(conn.execute(select(EnrolmentCode.code_hash)).scalars())
    assert stored == [enrolment.code_hash(code)]  # only the digest
    event = admin.events("device.code_created")[-1]
    assert (event["admin"], event["user"]) == ("kato", "tanaka")
    assert event["code"] == enrolment.code_hash(code)[:8]
    assert code not in json.dumps(admin.events())
    too_long = admin.refused(HELPDESK, "devices.create_code",
                             body={"user": "tanaka", "expires_in_hours": 721})
    assert (too_long.code, too_long.status) == ("invalid-input", 422)
    refused = admin.refused(HELPDESK, "devices.create_code", body={"user": "sato"})
    assert (refused.code, refused.status) == ("target-is-admin", 403)
    assert admin.run(SUPER, "devices.create_code", body={"user": "sato"})["user"] == "sato"


def test_listing_filters_and_pages(both: Admin) -> None:
    admin = both
    made = [admin.add_device("tanaka", f"PC-{i}") for i in range(3)]
    admin.add_device("yamada")
    admin.run(HELPDESK, "devices.suspend", path={"id": made[0]})
    first = admin.run(HELPDESK, "devices.list", query={"limit": 2})
    assert [d["name"] for d in first["devices"]] == ["庁内PC", "PC-2"]  # newest first
    rest = admin.run(HELPDESK, "devices.list",
                     query={"limit": 2, "cursor": first["next_cursor"]})
    assert [d["device_id"] for d in rest["devices"]] == [made[1], made[0]]
    assert rest["next_cursor"] is None
    mine = admin.run(HELPDESK, "devices.list", query={"user": "tanaka"})["devices"]
    assert [d["device_id"] for d in mine] == made[::-1]
    suspended = admin.run(HELPDESK, "devices.list", query={"status": "suspended"})["devices"]
    assert [d["device_id"] for d in suspended] == [made[0]]
    assert admin.refused(HELPDESK, "devices.list", query={"status": "lost"}).status == 422


def test_suspend_resume_revoke_reach_the_change_feed(both: Admin) -> None:
    admin = both
    device = admin.add_device("tanaka")
    last = changes.latest_id(admin.engine)
    suspended = admin.run(HELPDESK, "devices.suspend", path={"id": device},
                          body={"reason": "紛失の届け出"})
    assert suspended["changed"] and suspended["device"]["status"] == "suspended"
    assert suspended["device"]["reason"] == "紛失の届け出"
    assert not admin.run(HELPDESK, "devices.suspend", path={"id": device})["changed"]
    resumed = admin.run(HELPDESK, "devices.resume", path={"id": device}, body={})
    assert resumed["changed"] and resumed["device"]["status"] == "active"
    assert resumed["device"]["revoked_at"] is None
    revoked = admin.run(HELPDESK, "devices.revoke", path={"id": device},
                        body={"reason": "key_compromise"})
    assert revoked["device"]["status"] == "revoked"
    final = admin.refused(HELPDESK, "devices.resume", path={"id": device})
    assert (final.code, final.status) == ("device-revoked", 409)
    assert store.require_device(admin.engine, device).status == "revoked"
    feed = changes.since(admin.engine, last)
    assert [(c.kind, c.subject) for c in feed] == [(changes.DEVICE, device)] * 3
    actions = [(e["action"], e["admin"]) for e in admin.events("device.changed")]
    assert actions == [("suspend", "kato"), ("resume", "kato"), ("revoke", "kato")]
    missing = admin.refused(HELPDESK, "devices.suspend", path={"id": "dev-unknown"})
    assert (missing.code, missing.status) == ("device-not-found", 404)


def test_helpdesk_cannot_change_an_administrators_device(admin: Admin) -> None:
    device = admin.add_device("sato")
    refused = admin.refused(HELPDESK, "devices.revoke", path={"id": device})
    assert (refused.code, refused.status) == ("target-is-admin", 403)
    assert store.require_device(admin.engine, device).status == "active"
    assert admin.run(SUPER, "devices.suspend", path={"id": device})["changed"]


def test_detail_with_posture_and_history(admin: Admin) -> None:
    device = admin.add_device("tanaka")
    other = admin.add_device("tanaka", "私物")
    now = datetime.now(UTC)
    report = {"os": {"name": "Windows", "version": "11"}, "disk_encrypted": True}
    posture.record(admin.engine, device_id=device, nonce="n1", reported_at=now,
                   received_at=now, nonce_expires=now + timedelta(minutes=10),
                   report=json.dumps(report), profile="standard")
    for target, profile in ((device, "standard"), (other, "quarantine"),
                            (device, "quarantine")):
        admin.audit.append_sync(PostureReported(
            device=target, user="tanaka", profile=profile,
            failed="" if profile == "standard" else "disk_encrypted", os="Windows 11",
            source_ip="192.0.2.9"))
    admin.run(HELPDESK, "devices.suspend", path={"id": device}, body={"reason": "EDR"})
    detail = admin.run(HELPDESK, "devices.get", path={"id": device})
    assert detail["device"]["status"] == "suspended"
    assert detail["posture"]["profile"] == "standard"
    assert detail["posture"]["report"] == report
    history = [(h["event_type"], h.get("profile") or h.get("action"))
               for h in detail["posture_history"]]
    assert history == [("device.changed", "suspend"), ("device.posture", "quarantine"),
                       ("device.posture", "standard")]  # newest first, this device only
    assert admin.run(HELPDESK, "devices.get", path={"id": other})["posture"] is None
    assert admin.refused(HELPDESK, "devices.get", path={"id": "../etc"}).status == 422


def test_the_cli_resumes_through_the_same_rule(admin: Admin) -> None:
    """`sekisho device resume` is `enrolment.change_status(…, "active")`, as the API."""
    import subprocess
    import sys

    device = admin.add_device("tanaka")
    url = admin.engine.url.render_as_string(hide_password=False)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sekisho", "device", *args,
                               "--database-url", url], capture_output=True, text=True,
                              timeout=60, check=False)

    assert cli("suspend", device).returncode == 0
    resumed = cli("resume", device)
    assert resumed.returncode == 0 and "active" in resumed.stdout, resumed.stderr
    assert store.require_device(admin.engine, device).status == "active"
    assert "unchanged" in cli("resume", device).stdout
    assert [e["action"] for e in admin.events("device.changed")] == ["suspend", "resume"]
