"""Console pages for the installation as a whole: the dashboard, the configuration editor,
the audit log and API tokens.

The configuration editor checks before it applies: "check" shows the schema errors with their
line numbers, warnings, policy test results and the diff; "apply" sends the text with the
digest of the file it was based on, so two administrators editing at once cannot overwrite
each other unseen (the operation answers 409). The dashboard's figures travel to `admin.js`
as a JSON data block (`<script type="application/json">`, never executed), so the page needs
no inline script and the CSP can forbid them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from sekisho.console.admin.ops import AdminError, Answer
from sekisho.console.admin.pages import ADMIN_PATH, Page, clean, items
from sekisho.identity.pages import N_
from sekisho.web import Response

if TYPE_CHECKING:
    from sekisho.console.admin.pages import Console

TITLE_DASHBOARD = N_("Dashboard")
TITLE_CONFIG = N_("Configuration")
TITLE_AUDIT = N_("Audit log")
TITLE_TOKENS = N_("API tokens")
TITLE_SECRET = N_("Shown only once")
LABEL_TOKEN = N_("API token")
SERIES_LABELS = {
    "signins": N_("Sign-ins"), "signin_failures": N_("Failed sign-ins"),
    "denials": N_("Denials"), "hour": N_("Hour"), "day": N_("Day"),
}

DASHBOARD = ("dashboard.get", "GET", "/dashboard")
CONFIG = ("config.get", "GET", "/config")
CONFIG_CHECK = ("config.check", "POST", "/config/check")
CONFIG_APPLY = ("config.apply", "PUT", "/config")
AUDIT = ("audit.search", "GET", "/audit/events")
AUDIT_EXPORT = ("audit.export", "GET", "/audit/export")
AUDIT_VERIFY = ("audit.verify", "POST", "/audit/verify")
AUDIT_FILTERS = ("since", "until", "user", "route", "decision", "reason", "type")
TOKENS = ("tokens.list", "GET", "/tokens")
TOKEN_CREATE = ("tokens.create", "POST", "/tokens")
TOKEN_REVOKE = ("tokens.revoke", "DELETE", "/tokens/{id}")
EXPORT_TYPES = ("csv", "jsonl")


# -- dashboard ------------------------------------------------------------------------------------

async def dashboard(page: Page) -> Response:
    data = await page.call(*DASHBOARD)
    data = data if isinstance(data, dict) else {}
    labels = {key: page.text(text) for key, text in SERIES_LABELS.items()}
    return page.render("admin_dashboard.html", TITLE_DASHBOARD, menu_key="dashboard",
                       data=data, chart={"data": data, "labels": labels, "lang": page.lang},
                       hourly=_rows(data, "hourly", "per_hour"),
                       daily=_rows(data, "daily", "per_day"),
                       reasons=items(data.get("top_denial_reasons") or data.get("reasons")),
                       failing=items(data.get("devices_failing_posture")
                                     or data.get("failing_devices")),
                       chain=data.get("audit") or data.get("chain") or {})


def _rows(data: dict[str, Any], *keys: str) -> list[dict[str, Any]]:
    """A time series as rows (the accessible table beside each chart)."""
    for key in keys:
        value = data.get(key)
        if isinstance(value, list):
            return [row for row in value if isinstance(row, dict)]
        if isinstance(value, dict) and isinstance(value.get("buckets"), list):
            return [row for row in value["buckets"] if isinstance(row, dict)]
    return []


# -- configuration --------------------------------------------------------------------------------

async def config(page: Page) -> Response:
    current = await page.call(*CONFIG)
    return _config_page(page, current if isinstance(current, dict) else {}, text=None)


def _config_page(page: Page, current: dict[str, Any], *, text: str | None,
                 check: Any = None, refusal: str = "", status: int = 200) -> Response:
    return page.render(
        "admin_config.html", TITLE_CONFIG, status=status, menu_key="config", current=current,
        yaml_text=current.get("yaml", "") if text is None else text,
        base=page.form.get("base_sha256") or current.get("sha256", ""),
        check=check if isinstance(check, dict) else None, refusal=refusal,
        can_check=page.can(*CONFIG_CHECK), can_apply=page.can(*CONFIG_APPLY),
        comment=page.form.get("comment", ""))


async def config_post(page: Page) -> Response:
    text = page.form.get("yaml", "").replace("\r\n", "\n")
    base = page.form.get("base_sha256", "")
    current = await page.call(*CONFIG)
    current = current if isinstance(current, dict) else {}
    if page.form.get("action") != "apply":
        body = {"yaml": text, **({"base_sha256": base} if base else {})}
        check = await page.call(*CONFIG_CHECK, body=body)
        return _config_page(page, current, text=text, check=check)
    body = {"yaml": text, "base_sha256": base, "comment": page.form.get("comment", "").strip()}
    try:
        result = await page.call(*CONFIG_APPLY, body=body)
    except AdminError as error:
        if error.status not in (409, 422):
            raise
        # Refused (stale base, or the check failed): the text stays in the editor, with why.
        check = error.details if isinstance(error.details, dict) else None
        if check is None and isinstance(error.details, list):
            check = {"ok": False, "errors": error.details}
        return _config_page(page, current, text=text, check=check,
                            refusal=error.message(page.lang), status=error.status)
    outcome = result.get("reload") if isinstance(result, dict) else None
    flash = {"pending": "config-pending", "unchanged": "config-unchanged"}.get(
        str(outcome), "config-applied")
    return page.done(f"{ADMIN_PATH}/config", flash)


# -- audit ----------------------------------------------------------------------------------------

async def audit(page: Page) -> Response:
    asked = page.query()
    filters = clean(asked, AUDIT_FILTERS)
    query = {**filters, **clean(asked, ("cursor",)), "limit": "50"}
    result = await page.call(*AUDIT, query=query)
    next_cursor = result.get("next_cursor") if isinstance(result, dict) else None
    return page.render(
        "admin_audit.html", TITLE_AUDIT, menu_key="audit", events=items(result, "events"),
        filters={name: asked.get(name, "") for name in AUDIT_FILTERS},
        next_url="?" + urlencode({**filters, "cursor": str(next_cursor)}) if next_cursor
        else "", first_url="?" + urlencode(filters) if "cursor" in asked else "",
        export_urls={kind: f"{ADMIN_PATH}/audit/export?" + urlencode({**filters,
                                                                     "format": kind})
                     for kind in EXPORT_TYPES} if page.can(*AUDIT_EXPORT) else {},
        can_verify=page.can(*AUDIT_VERIFY), verification=None)


async def audit_export(page: Page) -> Response:
    """The operation's own download (media type, file name, record count and cap headers)."""
    asked = page.query()
    kind = asked.get("format", "csv")
    answer = await page.call(*AUDIT_EXPORT, query={**clean(asked, AUDIT_FILTERS),
                                                   "format": kind if kind in EXPORT_TYPES
                                                   else "csv"}, raw=True)
    if not isinstance(answer, Answer):  # the operation always answers a download
        raise TypeError("audit.export answered without a media type")
    return Response(200, [("Content-Type", answer.media_type or "text/csv; charset=utf-8"),
                          ("Cache-Control", "no-store"), *answer.headers], answer.body)


async def audit_verify(page: Page) -> Response:
    """The answer is the verification itself (recorded by the operation as AuditVerified);
    posting again only verifies again."""
    result = await page.call(*AUDIT_VERIFY, body={})
    listing = await page.call(*AUDIT, query={"limit": "50"})
    return page.render(
        "admin_audit.html", TITLE_AUDIT, menu_key="audit", events=items(listing, "events"),
        filters={name: "" for name in AUDIT_FILTERS}, next_url="", first_url="",
        export_urls={}, can_verify=True, verification=result if isinstance(result, dict)
        else {})


# -- API tokens -----------------------------------------------------------------------------------

async def tokens(page: Page) -> Response:
    result = await page.call(*TOKENS)
    return page.render("admin_tokens.html", TITLE_TOKENS, menu_key="tokens",
                       tokens=items(result, "tokens"), can_create=page.can(*TOKEN_CREATE),
                       can_revoke=page.can(*TOKEN_REVOKE),
                       max_days=page.console.kit.config().admin.token_max_days)


async def token_create(page: Page) -> Response:
    body: dict[str, Any] = clean(page.form, ("name", "role"))
    days = page.form.get("expires_in_days", "").strip()
    if days.isdigit():
        body["expires_in_days"] = int(days)
    result = await page.call(*TOKEN_CREATE, body=body)
    secret = result.get("token") or result.get("secret") if isinstance(result, dict) else ""
    return page.render("admin_secret.html", TITLE_SECRET, label=page.text(LABEL_TOKEN),
                       secret=str(secret or ""), next_url=f"{ADMIN_PATH}/tokens",
                       expires=result.get("expires_at") if isinstance(result, dict) else None)


async def token_revoke(page: Page) -> Response:
    await page.call(*TOKEN_REVOKE, params={"id": page.param("id")})
    return page.done(f"{ADMIN_PATH}/tokens", "token-revoked")


def register(console: Console) -> None:
    console.route("GET", "/", dashboard)
    console.route("GET", "/config", config)
    console.route("POST", "/config", config_post)
    console.route("GET", "/audit", audit)
    console.route("GET", "/audit/export", audit_export)
    console.route("POST", "/audit/verify", audit_verify)
    console.route("GET", "/tokens", tokens)
    console.route("POST", "/tokens", token_create)
    console.route("POST", "/tokens/{id}/revoke", token_revoke)
