"""My devices: the signed-in user's enrolled devices and what their latest posture report says.

The verdict is computed by the very rule the gateway applies (`devices.posture.classify`
over the configured profiles, with the same freshness limit), so the page never tells staff
"fine" while the gateway quarantines the device. Each failed check comes with what to do
about it, in words staff can act on; the names of profiles and checks are the
administrators' vocabulary and are shown only as a detail.

Only the user's own devices are read (`list_devices(engine, user_id)`): the page is no way
to learn which devices, inventory numbers or certificate serials colleagues have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine

from sekisho.config.model import DeviceSettings
from sekisho.devices.posture import (
    QUARANTINE,
    PostureError,
    PostureReport,
    classify,
    parse_report,
)
from sekisho.identity.pages import N_
from sekisho.storage import posture as posture_store
from sekisho.storage.devices import list_devices

# A certificate this close to its end is shown as expiring, so staff ask for a new one in time.
EXPIRY_WARNING = timedelta(days=30)

STATUS = {"active": N_("In use"), "suspended": N_("Suspended"), "revoked": N_("Revoked")}
STATUS_HELP = {
    "suspended": N_("This device is suspended and cannot be used to open apps. Contact the "
                    "IT department."),
    "revoked": N_("This device can no longer be used. Contact the IT department if you "
                  "still need it."),
}
# failed check → (what is wrong, what to do)
CHECKS = {
    "report-missing": (N_("No status report has been received from this device."),
                       N_("Start the device while connected to the network and sign in; "
                          "the status report is sent automatically. If this message stays, "
                          "contact the IT department.")),
    "report-stale": (N_("The latest status report is too old."),
                     N_("Start the device while connected to the network; a new report is "
                        "sent automatically.")),
    "report-future": (N_("The device's clock is wrong (its report is dated in the future)."),
                      N_("Correct the date and time on the device, then restart it.")),
    "os_updated_within": (N_("Operating system updates have not been applied recently."),
                          N_("Install the pending updates (Windows Update, Software Update "
                             "or the package manager) and restart.")),
    "disk_encryption": (N_("The disk is not encrypted."),
                        N_("Turn on disk encryption (BitLocker, FileVault or LUKS). Ask the "
                           "IT department if you are not sure how.")),
    "firewall": (N_("The firewall is off."),
                 N_("Turn the firewall on in the system settings.")),
    "screen_lock": (N_("The screen does not lock automatically."),
                    N_("Set the screen to lock after a few minutes without use.")),
    "edr": (N_("The security software (EDR) is not running."),
            N_("Restart the device. If the security software still does not run, contact "
               "the IT department.")),
}
MSG_UNKNOWN_CHECK = N_("A required check failed.")
MSG_ASK_IT = N_("Contact the IT department.")


@dataclass(frozen=True, slots=True)
class Problem:
    what: str  # msgid
    todo: str  # msgid
    check: str  # the check's name, for administrators


@dataclass(frozen=True, slots=True)
class DeviceView:
    device_id: str
    name: str
    status: str  # "active" | "suspended" | "revoked"
    enrolled_at: datetime  # UTC
    cert_not_after: datetime  # UTC
    cert_expired: bool
    cert_expiring: bool
    reported_at: datetime | None  # UTC, when the latest report was received
    os: str  # "Windows 11 23H2", or ""
    profile: str  # the profile earned now ("quarantine" when none)
    passed: bool  # earned a profile (or none are configured and the report is fresh)
    problems: tuple[Problem, ...]  # when passed: what the best profile still lacks


def my_devices(engine: Engine, user_id: int, settings: DeviceSettings,
               now: datetime) -> list[DeviceView]:
    """Synchronous: the user's devices, newest first, each with its verdict now (call from a
    thread)."""
    views = []
    for device in list_devices(engine, user_id):
        if device.user_id != user_id:  # defence in depth: never another person's device
            continue
        row = posture_store.latest(engine, device.device_id)
        report = _parsed(row.report) if row is not None else None
        if report is not None and report.device_id != device.device_id:
            report = None  # a row filed under the wrong device says nothing about this one
        profile, failed = classify(report, settings.profiles, now, settings.posture_max_age)
        if not settings.profiles and report is not None and not failed:
            passed = True  # no profiles configured: a fresh report is all there is to ask
            profile = ""
        else:
            passed = profile != QUARANTINE
        views.append(DeviceView(
            device_id=device.device_id, name=device.name, status=device.status,
            enrolled_at=device.created_at, cert_not_after=device.cert_not_after,
            cert_expired=now >= device.cert_not_after,
            cert_expiring=now < device.cert_not_after <= now + EXPIRY_WARNING,
            reported_at=None if row is None else row.received_at,
            os=" ".join(p for p in (report.os_name, report.os_version) if p) if report else "",
            profile=profile, passed=passed,
            problems=tuple(_problem(check) for check in failed)))
    views.reverse()
    return views


def _problem(check: str) -> Problem:
    what, todo = CHECKS.get(check, (MSG_UNKNOWN_CHECK, MSG_ASK_IT))
    return Problem(what, todo, check)


def _parsed(text: str) -> PostureReport | None:
    """As `devices.trust.load_report`, from the row already read: one that no longer parses
    counts as no report (quarantine), exactly as at the gateway."""
    try:
        return parse_report(json.loads(text))
    except (ValueError, PostureError):
        return None
