"""What changed on my account: the user's recent factor events, read back from the audit log.

Every factor change is already an audit event, so the "my security" page shows the user the
same record the auditor sees instead of keeping a second notification store: an attacker who
added a passkey to a stolen account is visible to the owner at their next visit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from sekisho.identity.pages import N_
from sekisho.storage.audit_log import search_records

DAYS, LIMIT = 90, 10
TOKYO = ZoneInfo("Asia/Tokyo")

KINDS = {"totp": N_("Authenticator app"), "webauthn": N_("Passkey"),
         "recovery": N_("Recovery codes")}
ACTIONS = {"enrol": N_("added"), "remove": N_("removed"), "rename": N_("renamed"),
           "renew": N_("renewed")}
MSG_RESET = N_("An administrator reset all your second factors")
MSG_RECOVERY_USED = N_("A recovery code was used")
MSG_REGRESSED = N_("A passkey was refused: its counter went backwards (it may have been copied)")
# Event types about one user's factors, with the user as the record's actor …
_BY_ACTOR = ("mfa.factor.changed", "mfa.recovery.used", "webauthn.sign_count_regressed")
# … and the one whose actor is the administrator.
_RESET = "mfa.factors.reset"


@dataclass(frozen=True, slots=True)
class Notice:
    at: datetime  # UTC
    what: str  # msgid
    detail: str = ""  # msgid, or ""

    def local_time(self) -> str:
        return self.at.astimezone(TOKYO).strftime("%Y-%m-%d %H:%M")


def recent_notices(engine: Engine, username: str, now: datetime) -> list[Notice]:
    """Synchronous: the newest factor events of `username` in the last 90 days (call in a
    thread)."""
    since = now - timedelta(days=DAYS)
    notices: list[Notice] = []
    for event_type in (*_BY_ACTOR, _RESET):
        actor = None if event_type == _RESET else username
        for record in search_records(engine, since=since, event_type=event_type, actor=actor):
            body = json.loads(record.body)
            if body.get("user") != username:
                continue
            at = datetime.fromisoformat(body["occurred_at"].replace("Z", "+00:00"))
            notices.append(_notice(event_type, body, at))
    notices.sort(key=lambda notice: notice.at, reverse=True)
    return notices[:LIMIT]


def _notice(event_type: str, body: dict[str, object], at: datetime) -> Notice:
    if event_type == "mfa.factor.changed":
        return Notice(at, KINDS.get(str(body.get("kind")), N_("Second factor")),
                      ACTIONS.get(str(body.get("action")), ""))
    if event_type == "mfa.recovery.used":
        return Notice(at, MSG_RECOVERY_USED)
    if event_type == "webauthn.sign_count_regressed":
        return Notice(at, MSG_REGRESSED)
    return Notice(at, MSG_RESET)
