"""What the people operations (users, groups, devices, sessions) share: who may act on whom,
how their blocking work runs, how refusals read, and the JSON shape of each record.

The rules (each blocks an attack or an accident):
- A `helpdesk` actor may not act on an account that holds any admin role — its password,
  factors, sessions, devices, profile or groups. Otherwise helpdesk could reset a
  superadmin's password or factors and sign in as them (privilege escalation).
- A `helpdesk` actor may not add anyone to, or remove anyone from, a group that gives an
  admin role (`admin.roles` in the configuration): that is granting or taking admin rights.
- Nobody may disable their own account or remove their own last admin-role group: the
  console would lock out the only people able to repair it.
Reads (listings, details) are open to every role the operation lists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sekisho.audit.events import AuditEvent
from sekisho.console.admin.ops import Actor, AdminContext, AdminError, Role
from sekisho.errors import SekishoError
from sekisho.identity.accounts import PasswordRejected
from sekisho.storage.users import canonical_name

if TYPE_CHECKING:
    from sekisho.config.model import AdminSettings
    from sekisho.storage.devices import DeviceRecord
    from sekisho.storage.sessions import SessionRecord
    from sekisho.storage.users import UserRecord

T = TypeVar("T")
AuditFn = Callable[[AuditEvent], None]

# JSON Schema pieces reused by the operations' declarations.
USERNAME = {"type": "string", "minLength": 1, "maxLength": 128}
LIMIT = {"type": "integer", "minimum": 1, "maximum": 200}


def admin_settings(ctx: AdminContext) -> AdminSettings:
    return ctx.identity.current_config().admin


# -- the rules --------------------------------------------------------------------------------

def guard_target(settings: AdminSettings, actor: Actor, username: str,
                 groups: Iterable[str]) -> None:
    """Refuse a helpdesk actor acting on an account that holds an admin role."""
    if actor.role is Role.SUPERADMIN:
        return
    role = settings.role_of(frozenset(groups))
    if role is not None:
        raise AdminError(
            "target-is-admin",
            f"{username} は管理者 ({role}) です。管理者の利用者を操作できるのは superadmin "
            "だけです。",
            f"{username} holds an admin role ({role}); only a superadmin may act on an "
            "administrator's account.", 403)


def guard_groups(settings: AdminSettings, actor: Actor, changed: Iterable[str]) -> None:
    """Refuse a helpdesk actor adding or removing members of an admin-role group."""
    if actor.role is Role.SUPERADMIN:
        return
    touched = sorted(set(map(canonical_name, changed)) & settings.admin_groups)
    if touched:
        names = ", ".join(touched)
        raise AdminError(
            "admin-group-forbidden",
            f"管理者グループ ({names}) のメンバーを変更できるのは superadmin だけです。",
            f"Only a superadmin may change the members of an admin group ({names}).", 403)


def is_self(actor: Actor, username: str) -> bool:
    return actor.via == "session" and canonical_name(actor.name) == canonical_name(username)


def guard_disable_self(actor: Actor, username: str) -> None:
    if is_self(actor, username):
        raise AdminError("self-lockout", "自分自身のアカウントは無効化できません。",
                         "You cannot disable your own account.", 409)


def guard_keeps_admin(settings: AdminSettings, actor: Actor, username: str,
                      groups_after: Iterable[str]) -> None:
    """Refuse an admin removing their own last admin-role group."""
    if is_self(actor, username) and settings.role_of(frozenset(groups_after)) is None:
        raise AdminError(
            "self-lockout", "自分自身の最後の管理者グループは外せません。",
            "You cannot remove your own last admin group (you would lock yourself out).", 409)


# -- running blocking work ------------------------------------------------------------------

def refusal(exc: SekishoError) -> AdminError:
    """A domain refusal ("日本語 / English") as an AdminError with its code and status."""
    text = exc.description
    ja, sep, en = text.partition(" / ")
    if not sep:
        ja = en = text
    return AdminError(exc.code, ja.strip(), en.strip(), exc.status)


async def blocking(ctx: AdminContext, work: Callable[[AuditFn], T]) -> T:
    """Run `work(audit)` in a thread; `audit(event)` there waits for the durable append.

    So each storage write is followed by its audit record before the next step, and an audit
    failure stops the work and reaches the API shell (503). Refusals raised by the domain
    (not found, already exists, invalid name, password policy …) become AdminErrors; storage
    and audit failures (5xx) propagate unchanged.
    """
    loop = asyncio.get_running_loop()
    sink = ctx.identity.audit

    def audit(event: AuditEvent) -> None:
        asyncio.run_coroutine_threadsafe(sink.append(event), loop).result()

    try:
        return await asyncio.to_thread(work, audit)
    except AdminError:
        raise
    except PasswordRejected as exc:
        raise AdminError(
            "password-policy",
            "パスワードが要件を満たしていません: " + " ".join(p.ja for p in exc.problems),
            "The password does not meet the policy: " + "; ".join(p.en for p in exc.problems),
            422, details=[{"code": p.code, "message_ja": p.ja, "message_en": p.en}
                          for p in exc.problems]) from None
    except SekishoError as exc:
        if exc.status >= 500:
            raise
        raise refusal(exc) from None


# -- JSON views ---------------------------------------------------------------------------------

def iso(moment: datetime | None) -> str | None:
    """UTC, ISO 8601 with Z (the console shows Asia/Tokyo)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def user_json(user: UserRecord, groups: Iterable[str], settings: AdminSettings
              ) -> dict[str, Any]:
    names = sorted(groups)
    return {"username": user.username, "display_name": user.display_name,
            "email": user.email, "disabled": user.disabled,
            "password_set": bool(user.password_hash),
            "groups": names, "admin_role": settings.role_of(frozenset(names)),
            "created_at": iso(user.created_at), "updated_at": iso(user.updated_at),
            "password_changed_at": iso(user.password_changed_at)}


def session_json(record: SessionRecord) -> dict[str, Any]:
    return {"id": record.id[:12], "user": record.username, "source_ip": record.source_ip,
            "user_agent": record.user_agent, "methods": sorted(record.auth_methods),
            "idp": record.idp, "created_at": iso(record.created_at),
            "last_seen_at": iso(record.last_seen_at), "expires_at": iso(record.expires_at),
            "auth_time": iso(record.auth_time), "mfa_time": iso(record.mfa_time)}


def device_json(device: DeviceRecord) -> dict[str, Any]:
    return {"device_id": device.device_id, "user": device.username, "name": device.name,
            "inventory_id": device.inventory_id, "status": device.status,
            "created_at": iso(device.created_at), "cert_serial": device.cert_serial,
            "cert_not_after": iso(device.cert_not_after),
            "revoked_at": iso(device.revoked_at), "reason": device.revoked_reason}


USER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["username", "display_name", "email", "disabled", "groups", "admin_role"],
    "properties": {"username": {"type": "string"}, "display_name": {"type": "string"},
                   "email": {"type": "string"}, "disabled": {"type": "boolean"},
                   "password_set": {"type": "boolean"},
                   "groups": {"type": "array", "items": {"type": "string"}},
                   "admin_role": {"type": ["string", "null"]},
                   "created_at": {"type": "string"}, "updated_at": {"type": "string"},
                   "password_changed_at": {"type": ["string", "null"]}}}
SESSION_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["id", "user"],
    "properties": {"id": {"type": "string"}, "user": {"type": "string"},
                   "source_ip": {"type": "string"}, "user_agent": {"type": "string"},
                   "methods": {"type": "array", "items": {"type": "string"}},
                   "idp": {"type": "string"}}}
DEVICE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["device_id", "user", "name", "status"],
    "properties": {"device_id": {"type": "string"}, "user": {"type": "string"},
                   "name": {"type": "string"}, "inventory_id": {"type": "string"},
                   "status": {"enum": ["active", "suspended", "revoked"]},
                   "cert_serial": {"type": "string"}, "reason": {"type": "string"}}}
