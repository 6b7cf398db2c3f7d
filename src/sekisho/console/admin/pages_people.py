"""Console pages for people and their things: users, groups, devices and sessions.

Each view reads and changes only through operations (`Page.call`), so who may do what (and
the help-desk rule that admins are managed by superadmins only) is decided once, in the
operation, for the console and the API alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from sekisho.console.admin.ops import AdminError
from sekisho.console.admin.pages import ADMIN_PATH, Page, clean, items
from sekisho.identity.pages import N_
from sekisho.web import Response

if TYPE_CHECKING:
    from sekisho.console.admin.pages import Console

TITLE_USERS = N_("Users")
TITLE_USER = N_("User details")
TITLE_GROUPS = N_("Groups")
TITLE_GROUP = N_("Group members")
TITLE_DEVICES = N_("Devices")
TITLE_DEVICE = N_("Device details")
TITLE_SESSIONS = N_("Sessions")
TITLE_SECRET = N_("Shown only once")
LABEL_PASSWORD = N_("Initial password")
LABEL_CODE = N_("Enrolment code")
PAGE_SIZE = 50

USERS = ("users.list", "GET", "/users")
USER = ("users.get", "GET", "/users/{username}")
USER_CREATE = ("users.create", "POST", "/users")
USER_UPDATE = ("users.update", "PATCH", "/users/{username}")
USER_PASSWORD = ("users.reset_password", "POST", "/users/{username}/password")
USER_FACTORS = ("users.reset_factors", "POST", "/users/{username}/reset-factors")
USER_GROUPS = ("users.set_groups", "PUT", "/users/{username}/groups")
USER_IDP = ("users.unlink_idp", "DELETE", "/users/{username}/idp-links/{idp}")
USER_SESSIONS = ("sessions.revoke_user", "DELETE", "/users/{username}/sessions")
GROUPS = ("groups.list", "GET", "/groups")
GROUP = ("groups.get", "GET", "/groups/{name}")
GROUP_CREATE = ("groups.create", "POST", "/groups")
MEMBER_ADD = ("groups.add_member", "PUT", "/groups/{name}/members/{username}")
MEMBER_REMOVE = ("groups.remove_member", "DELETE", "/groups/{name}/members/{username}")
DEVICES = ("devices.list", "GET", "/devices")
DEVICE = ("devices.get", "GET", "/devices/{id}")
CODE_CREATE = ("devices.create_code", "POST", "/devices/enrolment-codes")
DEVICE_ACTIONS = {
    "suspend": (("devices.suspend", "POST", "/devices/{id}/suspend"), "device-suspended"),
    "resume": (("devices.resume", "POST", "/devices/{id}/resume"), "device-resumed"),
    "revoke": (("devices.revoke", "POST", "/devices/{id}/revoke"), "device-revoked"),
}
SESSIONS = ("sessions.list", "GET", "/sessions")
SESSION_REVOKE = ("sessions.revoke", "DELETE", "/sessions/{id}")


def _user_url(username: str) -> str:
    return f"{ADMIN_PATH}/users/{quote(username, safe='')}"


def _paging(page: Page, result: Any) -> dict[str, str]:
    """Links to the next page (keyset: the operation's `next_cursor`) and back to the first."""
    query = {k: v for k, v in page.query().items() if k not in ("cursor", "done", "lang")}
    links = {"next": "", "first": ""}
    cursor = result.get("next_cursor") if isinstance(result, dict) else None
    if cursor:
        links["next"] = "?" + urlencode({**query, "cursor": str(cursor)})
    if "cursor" in page.query():
        links["first"] = "?" + urlencode(query)
    return links


# -- users ----------------------------------------------------------------------------------------

async def users(page: Page) -> Response:
    asked = page.query()
    query = {"limit": str(PAGE_SIZE), **clean(asked, ("q", "cursor"))}
    result = await page.call(*USERS, query=query)
    return page.render("admin_users.html", TITLE_USERS, menu_key="users",
                       users=items(result, "users"), q=asked.get("q", ""),
                       paging=_paging(page, result), can_create=page.can(*USER_CREATE))


async def user_create(page: Page) -> Response:
    body: dict[str, Any] = clean(page.form, ("username", "display_name", "email", "password"))
    result = await page.call(*USER_CREATE, body=body)
    generated = result.get("password") if isinstance(result, dict) else None
    created = result.get("user", {}) if isinstance(result, dict) else {}
    url = _user_url(str(created.get("username") or body.get("username", "")))
    if generated:
        return _secret(page, LABEL_PASSWORD, str(generated), url)
    return page.done(url, "user-created")


async def user(page: Page) -> Response:
    username = page.param("username")
    found = await page.call(*USER, params={"username": username})
    groups = items(await page.call(*GROUPS), "groups") if page.can(*GROUPS) else []
    detail = found.get("user", found) if isinstance(found, dict) else {}
    member_of = set(found.get("groups") or detail.get("groups") or [])
    return page.render(
        "admin_user.html", TITLE_USER, menu_key="users", user=detail, found=found,
        username=username, url=_user_url(username),
        group_choices=[{"name": g.get("name", ""), "checked": g.get("name") in member_of}
                       for g in groups if isinstance(g, dict)],
        member_of=sorted(member_of), sessions=items(found, "sessions"),
        back_url=_user_url(username),
        devices=items(found, "devices"), idp_links=items(found, "idp_links"),
        factors=found.get("factors") or {})


async def user_post(page: Page) -> Response:
    username = page.param("username")
    action = page.param("action")
    params = {"username": username}
    url = _user_url(username)
    if action == "edit":
        body = {k: page.form.get(k, "").strip() for k in ("display_name", "email")}
        await page.call(*USER_UPDATE, params=params, body=body)
        return page.done(url, "user-updated")
    if action in ("disable", "enable"):
        await page.call(*USER_UPDATE, params=params, body={"disabled": action == "disable"})
        return page.done(url, f"user-{action}d")
    if action == "password":
        result = await page.call(*USER_PASSWORD, params=params,
                                 body=clean(page.form, ("password",)))
        generated = result.get("password") if isinstance(result, dict) else None
        return _secret(page, LABEL_PASSWORD, str(generated), url) if generated \
            else page.done(url, "user-updated")
    if action == "factors":
        await page.call(*USER_FACTORS, params=params, body={})
        return page.done(url, "factors-reset")
    if action == "groups":
        chosen = sorted(k.removeprefix("group:") for k, v in page.form.items()
                        if k.startswith("group:") and v == "on")
        await page.call(*USER_GROUPS, params=params, body={"groups": chosen})
        return page.done(url, "groups-saved")
    if action == "sessions":
        await page.call(*USER_SESSIONS, params=params)
        return page.done(url, "sessions-revoked")
    if action == "unlink":
        await page.call(*USER_IDP, params={**params, "idp": page.form.get("idp", "")})
        return page.done(url, "user-updated")
    return page.console.refusal(page, _unknown_action())


# -- groups ---------------------------------------------------------------------------------------

async def groups(page: Page) -> Response:
    result = await page.call(*GROUPS)
    return page.render("admin_groups.html", TITLE_GROUPS, menu_key="groups",
                       groups=items(result, "groups"), can_create=page.can(*GROUP_CREATE))


async def group_create(page: Page) -> Response:
    body = clean(page.form, ("name", "description"))
    await page.call(*GROUP_CREATE, body=body)
    return page.done(f"{ADMIN_PATH}/groups/{quote(body.get('name', ''), safe='')}",
                     "group-created")


async def group(page: Page) -> Response:
    name = page.param("name")
    result = await page.call(*GROUP, params={"name": name},
                             query=clean(page.query(), ("cursor",)))
    return page.render("admin_group.html", TITLE_GROUP, menu_key="groups", name=name,
                       group=result, members=items(result, "members"),
                       paging=_paging(page, result), can_change=page.can(*MEMBER_ADD))


async def group_post(page: Page) -> Response:
    name = page.param("name")
    url = f"{ADMIN_PATH}/groups/{quote(name, safe='')}"
    username = page.form.get("username", "").strip()
    if page.param("action") == "add":
        await page.call(*MEMBER_ADD, params={"name": name, "username": username})
        return page.done(url, "member-added")
    await page.call(*MEMBER_REMOVE, params={"name": name, "username": username})
    return page.done(url, "member-removed")


# -- devices --------------------------------------------------------------------------------------

async def devices(page: Page) -> Response:
    asked = page.query()
    query = clean(asked, ("user", "status", "cursor"))
    result = await page.call(*DEVICES, query=query)
    return page.render("admin_devices.html", TITLE_DEVICES, menu_key="devices",
                       devices=items(result, "devices"), user=asked.get("user", ""),
                       status_filter=asked.get("status", ""), paging=_paging(page, result),
                       can_code=page.can(*CODE_CREATE))


async def code_create(page: Page) -> Response:
    body: dict[str, Any] = clean(page.form, ("user",))
    hours = page.form.get("hours", "").strip()
    if hours.isdigit():
        body["expires_in_hours"] = int(hours)
    result = await page.call(*CODE_CREATE, body=body)
    code = result.get("code") if isinstance(result, dict) else None
    return _secret(page, LABEL_CODE, str(code or ""), f"{ADMIN_PATH}/devices",
                   expires=result.get("expires_at") if isinstance(result, dict) else None)


async def device(page: Page) -> Response:
    device_id = page.param("id")
    result = await page.call(*DEVICE, params={"id": device_id})
    detail = result.get("device", result) if isinstance(result, dict) else {}
    actions = [name for name, (op, _) in DEVICE_ACTIONS.items() if page.can(*op)]
    return page.render("admin_device.html", TITLE_DEVICE, menu_key="devices",
                       device=detail, device_id=device_id, actions=actions,
                       posture=items(result, "posture_history"),
                       latest=result.get("posture") if isinstance(result, dict) else None)


async def device_post(page: Page) -> Response:
    device_id = page.param("id")
    chosen = DEVICE_ACTIONS.get(page.param("action"))
    if chosen is None:
        return page.console.refusal(page, _unknown_action())
    op, flash = chosen
    body = clean(page.form, ("reason",))
    await page.call(*op, params={"id": device_id}, body=body)
    return page.done(f"{ADMIN_PATH}/devices/{quote(device_id, safe='')}", flash)


# -- sessions -------------------------------------------------------------------------------------

async def sessions(page: Page) -> Response:
    asked = page.query()
    query = {"limit": str(PAGE_SIZE), **clean(asked, ("user",))}
    result = await page.call(*SESSIONS, query=query)
    return page.render("admin_sessions.html", TITLE_SESSIONS, menu_key="sessions",
                       sessions=items(result, "sessions"), user=asked.get("user", ""),
                       back_url=f"{ADMIN_PATH}/sessions?" + urlencode(clean(asked, ("user",))),
                       paging=_paging(page, result), can_revoke=page.can(*SESSION_REVOKE))


async def session_revoke(page: Page) -> Response:
    await page.call(*SESSION_REVOKE, params={"id": page.param("id")})
    back = page.form.get("back", "")
    # Only a page of this console: the form field must not become an open redirect.
    local = back.startswith(ADMIN_PATH + "/") and "//" not in back and "\\" not in back
    return page.done(back if local else f"{ADMIN_PATH}/sessions", "session-revoked")


async def sessions_of_user(page: Page) -> Response:
    username = page.form.get("username", "").strip()
    await page.call(*USER_SESSIONS, params={"username": username})
    return page.done(f"{ADMIN_PATH}/sessions?" + urlencode({"user": username}),
                     "sessions-revoked")


# -- shared ---------------------------------------------------------------------------------------

def _secret(page: Page, label: str, secret: str, next_url: str,
            expires: Any = None) -> Response:
    """The POST's own answer (no redirect: the secret must not travel in a URL)."""
    return page.render("admin_secret.html", TITLE_SECRET, label=page.text(label),
                       secret=secret, next_url=next_url, expires=expires)


def _unknown_action() -> AdminError:
    return AdminError("unknown-action", "その操作はありません。", "There is no such action.", 404)


def register(console: Console) -> None:
    console.route("GET", "/users", users)
    console.route("POST", "/users", user_create)
    console.route("GET", "/users/{username}", user)
    console.route("POST", "/users/{username}/{action}", user_post)
    console.route("GET", "/groups", groups)
    console.route("POST", "/groups", group_create)
    console.route("GET", "/groups/{name}", group)
    console.route("POST", "/groups/{name}/{action}", group_post)
    console.route("GET", "/devices", devices)
    console.route("POST", "/devices/codes", code_create)
    console.route("GET", "/devices/{id}", device)
    console.route("POST", "/devices/{id}/{action}", device_post)
    console.route("GET", "/sessions", sessions)
    console.route("POST", "/sessions/revoke-user", sessions_of_user)
    console.route("POST", "/sessions/{id}/revoke", session_revoke)
