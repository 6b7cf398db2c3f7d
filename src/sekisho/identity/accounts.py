"""Account administration: the one copy of what an administrator's change to an account does,
shared by `sekisho user|group …` and the admin API (`console.admin.users`).

Each function makes its storage writes and, right after each one, hands the audit event that
records it to `audit` (the CLI appends durably with `AuditLog.append_sync`; the admin API
waits for its durable append from the worker thread). If `audit` raises, the function stops
there and the error reaches the caller: a change whose record cannot be written is reported
as failed, never as done (fail closed). Sessions end through the `SessionManager`, so this
process forgets them at once and every other process learns it through the change feed.

Functions are synchronous (database work and argon2); async callers run them in a thread.
Who may do what (roles, lock-out) is decided by the caller, not here.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sekisho.audit.events import (
    AuditEvent,
    FactorsReset,
    GroupChanged,
    SessionRevoked,
    UserChanged,
)
from sekisho.errors import SekishoError
from sekisho.identity.password_policy import PolicyProblem, check_password
from sekisho.identity.passwords import PasswordHasher
from sekisho.storage import factors, oidc, users, webauthn

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from sekisho.identity.sessions import SessionManager

Audit = Callable[[AuditEvent], None]

# No look-alikes (0/O, 1/l/I): an initial password is read aloud or copied from a screen.
_ALPHABET = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789"
GENERATED_LENGTH = 20  # 20 characters of 55: about 115 bits


class PasswordRejected(SekishoError):
    """The password breaks the policy; `problems` says how, in Japanese and English."""

    code = "password-policy"
    status = 422

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = tuple(problems)


def generate_password(*, username: str, display_name: str = "", email: str = "") -> str:
    """A random initial password that passes the policy, grouped for reading (xxxxx-xxxxx-…).

    It is shown once to the administrator; only its argon2 hash is stored."""
    while True:
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(GENERATED_LENGTH))
        candidate = "-".join(raw[i:i + 5] for i in range(0, GENERATED_LENGTH, 5))
        if not check_password(candidate, username=username, display_name=display_name,
                              email=email):
            return candidate


def hash_new_password(password: str, *, username: str, display_name: str = "",
                      email: str = "", hasher: PasswordHasher | None = None) -> str:
    """The argon2 hash of a password that passes the policy; `PasswordRejected` otherwise."""
    problems = check_password(password, username=username, display_name=display_name,
                              email=email)
    if problems:
        raise PasswordRejected(problems)
    return (hasher or PasswordHasher()).hash(password)


def create_account(engine: Engine, audit: Audit, *, username: str, admin: str,
                   display_name: str = "", email: str = "", password_hash: str | None = None,
                   groups: Sequence[str] = ()) -> users.UserRecord:
    """Create a user and add them to existing groups (every group is checked first)."""
    users.valid_name(username)
    for group in groups:  # refuse before creating anything
        users.require_group(engine, group)
    user = users.create_user(engine, username, display_name=display_name, email=email,
                             password_hash=password_hash)
    audit(UserChanged(admin=admin, user=user.username, action="create"))
    for group in groups:
        if users.add_member(engine, group, user.username):
            audit(GroupChanged(admin=admin, group=users.canonical_name(group),
                               action="add-member", user=user.username))
    return user


def update_profile(engine: Engine, audit: Audit, username: str, *, admin: str,
                   display_name: str | None = None, email: str | None = None
                   ) -> users.UserRecord:
    """Change the display name and/or e-mail; audited with the fields that changed."""
    before = users.require_user(engine, username)
    user = users.update_user(engine, before.username, display_name=display_name, email=email)
    changed = [name for name, old, new in (
        ("display_name", before.display_name, user.display_name),
        ("email", before.email, user.email)) if old != new]
    if changed:
        audit(UserChanged(admin=admin, user=user.username, action="update",
                          details=",".join(changed)))
    return user


def set_disabled(engine: Engine, sessions: SessionManager, audit: Audit, username: str,
                 disabled: bool, *, admin: str) -> users.UserRecord:
    """Disable (and end every session now, not at the next lookup) or enable."""
    user = users.set_disabled(engine, username, disabled)
    audit(UserChanged(admin=admin, user=user.username,
                      action="disable" if disabled else "enable"))
    if disabled:
        for event in sessions.revoke_user(user.username, admin, "disabled"):
            audit(event)
    return user


def set_password(engine: Engine, sessions: SessionManager, audit: Audit, username: str,
                 password_hash: str, *, admin: str, reason: str = "password-reset") -> int:
    """Set a password an administrator chose or generated, and end the user's sessions (a
    reset usually means the old password is known to someone else). Returns how many."""
    user = users.set_password_hash(engine, username, password_hash)
    audit(UserChanged(admin=admin, user=user.username, action="password"))
    ended = sessions.revoke_user(user.username, admin, reason)
    for event in ended:
        audit(event)
    return len(ended)


def reset_factors(engine: Engine, sessions: SessionManager, audit: Audit, username: str, *,
                  admin: str) -> tuple[int, int, int]:
    """Lost phone: remove every second factor (TOTP, passkeys) and recovery code; the user
    enrols again at the next sign-in (MFA stays required). Returns (factors, recovery codes,
    sessions ended)."""
    user = users.require_user(engine, username)
    removed, codes = factors.reset_user(engine, user.id)
    removed += webauthn.remove_user_credentials(engine, user.id)
    audit(FactorsReset(admin=admin, user=user.username, factors=removed, recovery_codes=codes))
    # A session proven with the lost factor may be in a thief's hands: end them all.
    ended = sessions.revoke_user(user.username, admin, "factors-reset")
    for event in ended:
        audit(event)
    return removed, codes, len(ended)


def unlink_idp(engine: Engine, sessions: SessionManager, audit: Audit, username: str,
               idp: str, *, admin: str) -> tuple[int, int]:
    """Unbind the user's identities at `idp` and end the sessions that IdP signed in.
    Returns (links removed, sessions ended); `NotFound` when nothing was linked."""
    user = users.require_user(engine, username)
    removed = oidc.remove_identities(engine, user.id, idp)
    if not removed:
        raise users.NotFound(f"{user.username} は {idp} と連携していません / "
                             f"{user.username} has no link to {idp}")
    audit(UserChanged(admin=admin, user=user.username, action="idp-unlink", details=idp))
    ended = 0
    for record in sessions.list_active(user.username):
        if record.idp == idp and sessions.revoke_id(record.id, "idp-unlinked"):
            audit(SessionRevoked(admin=admin, session=record.id[:12], user=user.username,
                                 reason="idp-unlinked"))
            ended += 1
    return removed, ended


def create_group(engine: Engine, audit: Audit, name: str, *, admin: str,
                 description: str = "") -> users.GroupRecord:
    group = users.create_group(engine, name, description=description)
    audit(GroupChanged(admin=admin, group=group.name, action="create"))
    return group


def add_member(engine: Engine, audit: Audit, group: str, username: str, *,
               admin: str) -> bool:
    """False (and nothing audited) when the user already was a member."""
    g, user = users.require_group(engine, group), users.require_user(engine, username)
    if not users.add_member(engine, g.name, user.username):
        return False
    audit(GroupChanged(admin=admin, group=g.name, action="add-member", user=user.username))
    return True


def remove_member(engine: Engine, audit: Audit, group: str, username: str, *,
                  admin: str) -> bool:
    """False (and nothing audited) when the user was not a member."""
    g, user = users.require_group(engine, group), users.require_user(engine, username)
    if not users.remove_member(engine, g.name, user.username):
        return False
    audit(GroupChanged(admin=admin, group=g.name, action="remove-member", user=user.username))
    return True


def replace_groups(engine: Engine, audit: Audit, username: str, groups: Sequence[str], *,
                   admin: str) -> tuple[list[str], list[str]]:
    """Make the user's groups exactly `groups` in one transaction: (added, removed)."""
    user = users.require_user(engine, username)
    added, removed = users.replace_groups(engine, user.username, groups)
    for name in added:
        audit(GroupChanged(admin=admin, group=name, action="add-member", user=user.username))
    for name in removed:
        audit(GroupChanged(admin=admin, group=name, action="remove-member",
                           user=user.username))
    return added, removed
