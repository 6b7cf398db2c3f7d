"""Local accounts and groups: the repository functions, returning plain frozen values.

Usernames and group names are stored *canonical*: Unicode NFKC, then case-folded to lower
case, surrounding whitespace removed. So `Tanaka`, `ＴＡＮＡＫＡ` (full-width, as a Japanese IME
may type it) and `tanaka` are one account, and nobody can register a look-alike twin of an
existing name by changing case or width. Every lookup canonicalises its argument the same way.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from sekisho.errors import SekishoError, StorageError
from sekisho.storage import changes
from sekisho.storage.models import Group, GroupMember, User

# Letters, digits and . _ - @ after canonicalisation; no spaces or control characters, so a
# name is safe in logs, audit records, CLI tables and the `user` policy criterion.
_NAME_RE = re.compile(r"^[\w.@-]{1,128}$")


class AlreadyExists(SekishoError):
    code = "already-exists"
    status = 409


class NotFound(SekishoError):
    code = "not-found"
    status = 404


class InvalidName(SekishoError):
    code = "invalid-name"
    status = 400


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    username: str
    display_name: str
    email: str
    password_hash: str | None
    disabled: bool
    created_at: datetime
    updated_at: datetime
    password_changed_at: datetime | None


@dataclass(frozen=True, slots=True)
class GroupRecord:
    id: int
    name: str
    description: str
    created_at: datetime


def canonical_name(name: str) -> str:
    """NFKC, lower case, stripped: the one form under which names are stored and compared."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def valid_name(name: str) -> str:
    """The canonical name, or `InvalidName` when it has characters we refuse to store."""
    canonical = canonical_name(name)
    if not _NAME_RE.fullmatch(canonical):
        raise InvalidName(
            f"名前に使えない文字が含まれています (英数字と . _ - @、128 文字以内): {name!r} / "
            f"invalid name {name!r}: use letters, digits and . _ - @ (at most 128 characters)"
        )
    return canonical


def utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes for aware columns; we always store UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def _now() -> datetime:
    return datetime.now(UTC)


def _storage_error(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"データベースエラー / database error: {type(exc).__name__}")


_USER_COLUMNS = (
    User.id, User.username, User.display_name, User.email, User.password_hash, User.disabled,
    User.created_at, User.updated_at, User.password_changed_at,
)


def _user(r: Sequence[Any]) -> UserRecord:
    return UserRecord(
        id=r[0], username=r[1], display_name=r[2], email=r[3], password_hash=r[4],
        disabled=bool(r[5]), created_at=utc(r[6]), updated_at=utc(r[7]),
        password_changed_at=_opt_utc(r[8]),
    )


def create_user(
    engine: Engine, username: str, *, display_name: str = "", email: str = "",
    password_hash: str | None = None, now: datetime | None = None,
) -> UserRecord:
    name = valid_name(username)
    now = now or _now()
    try:
        with engine.begin() as conn:
            conn.execute(insert(User).values(
                username=name, display_name=display_name.strip(), email=email.strip(),
                password_hash=password_hash, disabled=False, created_at=now, updated_at=now,
                password_changed_at=now if password_hash else None,
            ))
    except IntegrityError:
        raise AlreadyExists(
            f"ユーザー {name} は既に存在します / user {name} already exists") from None
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    user = get_user_by_name(engine, name)
    assert user is not None
    return user


def get_user_by_name(engine: Engine, username: str) -> UserRecord | None:
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(*_USER_COLUMNS).where(User.username == canonical_name(username))
            ).first()
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return None if row is None else _user(row)


def get_user_by_id(engine: Engine, user_id: int) -> UserRecord | None:
    try:
        with engine.connect() as conn:
            row = conn.execute(select(*_USER_COLUMNS).where(User.id == user_id)).first()
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return None if row is None else _user(row)


def require_user(engine: Engine, username: str) -> UserRecord:
    user = get_user_by_name(engine, username)
    if user is None:
        raise NotFound(f"ユーザー {canonical_name(username)} が見つかりません / "
                       f"no user {canonical_name(username)}")
    return user


def list_users(engine: Engine) -> list[UserRecord]:
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(*_USER_COLUMNS).order_by(User.username)).all()
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return [_user(row) for row in rows]


def _update_user(engine: Engine, username: str, **values: object) -> UserRecord:
    name = canonical_name(username)
    try:
        with engine.begin() as conn:
            result = conn.execute(update(User).where(User.username == name).values(**values))
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    if result.rowcount == 0:
        raise NotFound(f"ユーザー {name} が見つかりません / no user {name}")
    return require_user(engine, name)


def set_password_hash(
    engine: Engine, username: str, password_hash: str, *, now: datetime | None = None
) -> UserRecord:
    now = now or _now()
    return _update_user(engine, username, password_hash=password_hash,
                        password_changed_at=now, updated_at=now)


def set_disabled(
    engine: Engine, username: str, disabled: bool, *, now: datetime | None = None
) -> UserRecord:
    """Disable or enable; disabling is announced on the change feed in the same transaction
    (every gateway process closes the user's open WebSockets at once)."""
    name = canonical_name(username)
    moment = now or _now()
    try:
        with engine.begin() as conn:
            user_id = conn.execute(select(User.id).where(User.username == name)).scalar()
            if user_id is None:
                raise NotFound(f"ユーザー {name} が見つかりません / no user {name}")
            conn.execute(update(User).where(User.id == user_id)
                         .values(disabled=disabled, updated_at=moment))
            if disabled:
                changes.record(conn, changes.USER, [user_id], moment)
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return require_user(engine, name)


def update_user(
    engine: Engine, username: str, *, display_name: str | None = None,
    email: str | None = None, now: datetime | None = None,
) -> UserRecord:
    values: dict[str, object] = {"updated_at": now or _now()}
    if display_name is not None:
        values["display_name"] = display_name.strip()
    if email is not None:
        values["email"] = email.strip()
    return _update_user(engine, username, **values)


# -- groups ---------------------------------------------------------------------------------

_GROUP_COLUMNS = (Group.id, Group.name, Group.description, Group.created_at)


def _group(r: Sequence[Any]) -> GroupRecord:
    return GroupRecord(id=r[0], name=r[1], description=r[2], created_at=utc(r[3]))


def create_group(
    engine: Engine, name: str, *, description: str = "", now: datetime | None = None
) -> GroupRecord:
    canonical = valid_name(name)
    try:
        with engine.begin() as conn:
            conn.execute(insert(Group).values(
                name=canonical, description=description.strip(), created_at=now or _now()))
    except IntegrityError:
        raise AlreadyExists(f"グループ {canonical} は既に存在します / "
                            f"group {canonical} already exists") from None
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    group = get_group(engine, canonical)
    assert group is not None
    return group


def get_group(engine: Engine, name: str) -> GroupRecord | None:
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(*_GROUP_COLUMNS).where(Group.name == canonical_name(name))).first()
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return None if row is None else _group(row)


def require_group(engine: Engine, name: str) -> GroupRecord:
    group = get_group(engine, name)
    if group is None:
        raise NotFound(f"グループ {canonical_name(name)} が見つかりません / "
                       f"no group {canonical_name(name)}")
    return group


def list_groups(engine: Engine) -> list[GroupRecord]:
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(*_GROUP_COLUMNS).order_by(Group.name)).all()
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return [_group(row) for row in rows]


def add_member(engine: Engine, group: str, username: str) -> bool:
    """Add a user to a group; False when already a member."""
    g, u = require_group(engine, group), require_user(engine, username)
    try:
        with engine.begin() as conn:
            conn.execute(insert(GroupMember).values(group_id=g.id, user_id=u.id))
            # A group can also be named by a deny rule: membership changes are announced.
            changes.record(conn, changes.USER, [u.id])
    except IntegrityError:
        return False
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return True


def remove_member(engine: Engine, group: str, username: str) -> bool:
    """Remove a user from a group; False when they were not a member."""
    g, u = require_group(engine, group), require_user(engine, username)
    try:
        with engine.begin() as conn:
            result = conn.execute(delete(GroupMember).where(
                GroupMember.group_id == g.id, GroupMember.user_id == u.id))
            if result.rowcount > 0:
                changes.record(conn, changes.USER, [u.id])
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return result.rowcount > 0


def group_members(engine: Engine, group: str) -> list[UserRecord]:
    g = require_group(engine, group)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(*_USER_COLUMNS).join(GroupMember, GroupMember.user_id == User.id)
                .where(GroupMember.group_id == g.id).order_by(User.username)).all()
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return [_user(row) for row in rows]


def groups_of_user(engine: Engine, user_id: int) -> list[str]:
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Group.name).join(GroupMember, GroupMember.group_id == Group.id)
                .where(GroupMember.user_id == user_id).order_by(Group.name)).all()
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return [row[0] for row in rows]


# -- paged listings and whole-list membership (admin console and API) -----------------------

MAX_PAGE = 500


def _like_prefix(text: str) -> str:
    """A LIKE pattern matching values that start with `text` (its own % and _ are literal)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search_users(
    engine: Engine, *, query: str = "", disabled: bool | None = None, after: str = "",
    limit: int = 50,
) -> list[UserRecord]:
    """One page of users in username order, after the username `after` (keyset paging).

    The page is read along the unique username index and stops after `limit` rows, so its
    cost does not grow with the table nor with how deep one pages (10,000 accounts). `query`
    is a prefix of the username, the e-mail, the display name or one word of it.
    """
    conditions: list[Any] = [User.username > canonical_name(after)] if after else []
    if query:
        pattern = _like_prefix(canonical_name(query))
        conditions.append(or_(
            User.username.like(pattern, escape="\\"),
            User.email.ilike(pattern, escape="\\"),
            User.display_name.ilike(pattern, escape="\\"),
            User.display_name.ilike("% " + pattern, escape="\\")))
    if disabled is not None:
        conditions.append(User.disabled.is_(disabled))
    statement = (select(*_USER_COLUMNS).where(*conditions).order_by(User.username)
                 .limit(max(1, min(limit, MAX_PAGE))))
    try:
        with engine.connect() as conn:
            rows = conn.execute(statement).all()
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return [_user(row) for row in rows]


def groups_of_users(engine: Engine, user_ids: Sequence[int]) -> dict[int, list[str]]:
    """Group names of several users in one query (a page of a listing, never N queries)."""
    ids = sorted(set(user_ids))
    found: dict[int, list[str]] = {uid: [] for uid in ids}
    if not ids:
        return found
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(GroupMember.user_id, Group.name)
                .join(Group, Group.id == GroupMember.group_id)
                .where(GroupMember.user_id.in_(ids)).order_by(Group.name)).all()
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    for user_id, name in rows:
        found[user_id].append(name)
    return found


def list_groups_with_counts(engine: Engine) -> list[tuple[GroupRecord, int]]:
    """Every group with its member count, in one grouped query."""
    count = func.count(GroupMember.user_id)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(*_GROUP_COLUMNS, count)
                .outerjoin(GroupMember, GroupMember.group_id == Group.id)
                .group_by(*_GROUP_COLUMNS).order_by(Group.name)).all()
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return [(_group(row[:4]), int(row[4])) for row in rows]


def members_page(engine: Engine, group: str, *, after: str = "",
                 limit: int = 100) -> list[UserRecord]:
    """A page of a group's members in username order, after `after` (keyset)."""
    g = require_group(engine, group)
    conditions: list[Any] = [GroupMember.group_id == g.id]
    if after:
        conditions.append(User.username > canonical_name(after))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(*_USER_COLUMNS).join(GroupMember, GroupMember.user_id == User.id)
                .where(*conditions).order_by(User.username)
                .limit(max(1, min(limit, MAX_PAGE)))).all()
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return [_user(row) for row in rows]


def replace_groups(engine: Engine, username: str, groups: Sequence[str], *,
                   now: datetime | None = None) -> tuple[list[str], list[str]]:
    """Make the user's memberships exactly `groups`, in one transaction: (added, removed).

    Every named group must exist (nothing is changed otherwise). A change is announced on
    the change feed in the same transaction, like `add_member` / `remove_member`.
    """
    user = require_user(engine, username)
    wanted = sorted({canonical_name(name) for name in groups})
    try:
        with engine.begin() as conn:
            known = dict(conn.execute(select(Group.name, Group.id)
                                      .where(Group.name.in_(wanted))).all()) if wanted else {}
            missing = [name for name in wanted if name not in known]
            if missing:
                raise NotFound(f"グループ {', '.join(missing)} が見つかりません / "
                               f"no group {', '.join(missing)}")
            current = dict(conn.execute(
                select(Group.name, Group.id).join(GroupMember, GroupMember.group_id == Group.id)
                .where(GroupMember.user_id == user.id)).all())
            added = [name for name in wanted if name not in current]
            removed = sorted(name for name in current if name not in known)
            if added:
                conn.execute(insert(GroupMember), [{"group_id": known[name], "user_id": user.id}
                                                   for name in added])
            if removed:
                conn.execute(delete(GroupMember).where(
                    GroupMember.user_id == user.id,
                    GroupMember.group_id.in_([current[name] for name in removed])))
            if added or removed:
                changes.record(conn, changes.USER, [user.id], now)
    except SQLAlchemyError as exc:
        raise _storage_error(exc) from None
    return added, removed
