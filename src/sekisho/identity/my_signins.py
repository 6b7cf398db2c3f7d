"""Recent sign-ins: the user's last sign-in attempts, read back from the audit log.

A stranger trying passwords on my account leaves `signin.failure` records whose actor is the
name that was typed — my name — so showing them to me is the point: staff are the first to
notice "a failed sign-in from an address I do not know at 3 a.m." A failure typed under
another name is never shown, and neither are other people's records: the query is on the
exact actor (`storage.audit_recent`, newest first, bounded in time and count), and lockouts,
whose actor column is empty, are matched on their key (`account:<my name>`,
`mfa-account:<my name>`), which is built from the canonical name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine

from sekisho.identity.pages import N_
from sekisho.identity.throttle import account_key, mfa_account_key
from sekisho.storage.audit_recent import recent_by_actor, recent_of_type

DAYS, LIMIT = 90, 10
# Lockouts of everyone, newest first, searched for mine: rare events, so a bounded read.
LOCKOUT_WINDOW = 500
LOCKOUT = "signin.lockout"
BY_ACTOR = ("signin.success", "signin.failure", "mfa.failure", "oidc.signin", "oidc.rejected",
            "webauthn.signin_failed")

WHAT = {
    "signin.success": N_("Signed in"),
    "signin.failure": N_("Sign-in failed"),
    "mfa.failure": N_("Second factor failed"),
    "oidc.signin": N_("Signed in at the identity provider"),
    "oidc.rejected": N_("Sign-in at the identity provider refused"),
    "webauthn.signin_failed": N_("Passkey sign-in failed"),
    LOCKOUT: N_("Sign-in locked for a while after repeated failures"),
}
METHODS = {
    "pwd": N_("Password"), "totp": N_("Authenticator app"), "webauthn": N_("Passkey"),
    "webauthn_uv": "", "recovery": N_("Recovery code"), "oidc": N_("Identity provider"),
}
REASONS = {
    "invalid-credentials": N_("wrong user name or password"),
    "account-disabled": N_("account disabled"),
    "throttled": N_("too many attempts"),
    "csrf-invalid": N_("the form had expired"),
    "invalid-code": N_("wrong code"),
    "flow-ended": N_("the sign-in had expired"),
}


@dataclass(frozen=True, slots=True)
class SignInView:
    at: datetime  # UTC
    event_type: str
    what: str  # msgid
    ok: bool
    source_ip: str
    methods: tuple[str, ...]  # msgids (or raw names that have none)
    reason: str  # msgid, raw reason code, or ""



def recent_signins(engine: Engine, username: str, now: datetime) -> list[SignInView]:
    """Synchronous: the newest sign-in events of `username` in the last 90 days (call from a
    thread)."""
    since = now - timedelta(days=DAYS)
    views = [_view(r.event_type or "", json.loads(r.body), r.occurred_at or now)
             for r in recent_by_actor(engine, username, BY_ACTOR, limit=LIMIT, since=since)]
    mine = {account_key(username), mfa_account_key(username)}
    for record in recent_of_type(engine, LOCKOUT, limit=LOCKOUT_WINDOW, since=since):
        body = json.loads(record.body)
        if body.get("key") in mine:
            views.append(_view(LOCKOUT, body, record.occurred_at or now))
    views.sort(key=lambda view: view.at, reverse=True)
    return views[:LIMIT]


def _view(event_type: str, body: dict[str, object], at: datetime) -> SignInView:
    raw = body.get("methods")
    names = list(raw) if isinstance(raw, list) else []
    if event_type == "mfa.failure":
        names = [str(body.get("method", ""))]
    elif event_type in ("oidc.signin", "oidc.rejected"):
        names = ["oidc"]
    elif event_type == "webauthn.signin_failed":
        names = ["webauthn"]
    methods = tuple(label for label in (METHODS.get(str(n), str(n)) for n in names) if label)
    reason = str(body.get("reason", ""))
    return SignInView(
        at=at, event_type=event_type, what=WHAT.get(event_type, event_type),
        ok=event_type in ("signin.success", "oidc.signin"),
        source_ip=str(body.get("source_ip", "")), methods=methods,
        reason=REASONS.get(reason, reason))
