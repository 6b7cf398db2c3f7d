"""My sessions: the user's live sessions, and signing out the others, one or all.

Signing out goes through `SessionManager.revoke_id`, which writes the revocation and its
change-feed entry in one transaction: every gateway worker drops the session from its cache
and closes its open WebSockets at once, not when a cache entry runs out. No recent proof is
asked for: ending sessions only ever reduces access, and a user who suspects a stolen
session must be able to end it without first passing a step-up they may not manage.

Another session is named by its short id (12 hex digits), looked up only among the user's
own live sessions: an unknown id and someone else's id get the very same answer, so the
form is no oracle for which sessions exist (a prelude to hijacking one). The session in use
is not ended here: that is what "Sign out" is for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sekisho.audit.events import SessionRevoked
from sekisho.identity.principal import SessionInfo
from sekisho.identity.sessions import SessionManager
from sekisho.storage.sessions import SessionRecord

REASON_OTHERS = "user-signed-out-others"
REASON_ONE = "user-signed-out-one"
SHORT_ID = re.compile(r"[0-9a-f]{12}")
AGENT_MAX = 120  # enough to recognise a browser; the rest is noise on the page


@dataclass(frozen=True, slots=True)
class SessionView:
    short_id: str
    current: bool
    created_at: datetime  # UTC
    last_seen_at: datetime  # UTC
    source_ip: str
    methods: tuple[str, ...]  # raw method names ("pwd", "totp", …)
    idp: str
    user_agent: str


def my_sessions(sessions: SessionManager, current: SessionInfo) -> list[SessionView]:
    """Synchronous: the user's live sessions, the current one first (call from a thread)."""
    views = [SessionView(
        short_id=record.id[:12], current=record.id == current.session_id,
        created_at=record.created_at, last_seen_at=record.last_seen_at,
        source_ip=record.source_ip, methods=tuple(sorted(record.auth_methods)),
        idp=record.idp, user_agent=_agent(record.user_agent))
        for record in _live(sessions, current)]
    views.sort(key=lambda view: not view.current)  # stable: newest first after it
    return views


def _live(sessions: SessionManager, current: SessionInfo) -> list[SessionRecord]:
    return [record for record in sessions.list_active(current.username)
            if record.user_id == current.user_id]


def _agent(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= AGENT_MAX else text[:AGENT_MAX - 1] + "…"


def sign_out_others(sessions: SessionManager, current: SessionInfo) -> list[SessionRevoked]:
    """Synchronous: revoke every other live session of the user; returns the audit events
    to append (one per session ended)."""
    ended = []
    for record in _live(sessions, current):
        if record.id != current.session_id and sessions.revoke_id(record.id, REASON_OTHERS):
            ended.append(_event(current, record.id, REASON_OTHERS))
    return ended


def sign_out_one(sessions: SessionManager, current: SessionInfo,
                 short_id: str) -> SessionRevoked | None:
    """Synchronous: revoke the user's *other* session named by `short_id`; returns its audit
    event, or None when no other live session of this user has that id (unknown, someone
    else's, malformed, already ended: one answer for all)."""
    if not SHORT_ID.fullmatch(short_id):
        return None
    for record in _live(sessions, current):
        if record.id[:12] == short_id and record.id != current.session_id:
            if sessions.revoke_id(record.id, REASON_ONE):
                return _event(current, record.id, REASON_ONE)
            return None
    return None


def _event(current: SessionInfo, session_id: str, reason: str) -> SessionRevoked:
    # `admin` is who ended it: here the owner, so the auditor reads "user ended their own".
    return SessionRevoked(admin=current.username, session=session_id[:12],
                          user=current.username, reason=reason)
