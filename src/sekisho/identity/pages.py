"""Rendering and CSRF plumbing shared by every page under `/.sekisho/` (sign-in, MFA, …).

One place builds the Jinja environments (Japanese and English catalogs, autoescaping on,
undefined variables are errors), issues CSRF tokens bound to the browser (session id, else
the pre-session cookie) and writes the session cookie, so that the password, TOTP, passkey
and OIDC pages cannot drift apart on these defences.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from babel.support import Translations

from sekisho.config.model import Config
from sekisho.identity import csrf as csrf_mod
from sekisho.identity.csrf import CsrfProtector
from sekisho.identity.i18n import (
    TRANSLATIONS,
    choose_language,
    language_cookie,
    load_translations,
)
from sekisho.identity.principal import SessionInfo
from sekisho.web import Request, Response, html

PREFIX = "/.sekisho"
CSS = PREFIX + "/static/sekisho.css"
CSS_BYTES = (Path(__file__).parent / "static" / "sekisho.css").read_bytes()
CSS_URL = f"{CSS}?v={hashlib.sha256(CSS_BYTES).hexdigest()[:10]}"


def N_(message: str) -> str:  # the gettext marker that message extractors know
    return message


MSG_CSRF = N_("The form has expired. Please try again.")
MSG_UNAVAILABLE = N_("Sign-in is temporarily unavailable. Please try again later.")
MSG_TOO_LARGE = N_("The request is too large.")
MSG_METHOD = N_("This method is not allowed here.")
TITLE_ERROR = N_("Error")


@dataclass(frozen=True, slots=True)
class Catalog:
    """The templates and ja/en messages of one package's pages."""

    environments: Mapping[str, jinja2.Environment]
    translations: Mapping[str, Translations]


def _catalog(loader: jinja2.BaseLoader, translations: dict[str, Translations]) -> Catalog:
    envs = {}
    for lang, messages in translations.items():
        env = jinja2.Environment(
            loader=loader, autoescape=True, extensions=["jinja2.ext.i18n"],
            undefined=jinja2.StrictUndefined)
        env.install_gettext_translations(messages, newstyle=True)  # type: ignore[attr-defined]
        envs[lang] = env
    return Catalog(envs, translations)


IDENTITY = _catalog(jinja2.PackageLoader("sekisho.identity", "templates"), TRANSLATIONS)


def package_catalog(package: str, locale_dir: Path) -> Catalog:
    """`package`'s templates and messages in front of the identity pages' own, so its pages
    can extend `base.html` and share its strings; its catalog wins where both define one."""
    translations = load_translations()  # fresh objects: merging must not alter IDENTITY's
    for lang, messages in load_translations(locale_dir).items():
        translations[lang].merge(messages)
    loader = jinja2.ChoiceLoader([jinja2.PackageLoader(package, "templates"),
                                  jinja2.PackageLoader("sekisho.identity", "templates")])
    return _catalog(loader, translations)


class PageKit:
    """Renders pages and handles CSRF for one installation; shared by all identity pages."""

    def __init__(self, *, current_config: Callable[[], Config], csrf: CsrfProtector,
                 catalog: Catalog = IDENTITY) -> None:
        self.config, self.csrf, self.catalog = current_config, csrf, catalog

    def with_catalog(self, catalog: Catalog) -> PageKit:
        """The same kit (configuration, CSRF key) rendering another package's pages."""
        return PageKit(current_config=self.config, csrf=self.csrf, catalog=catalog)

    def gettext(self, request: Request, message: str) -> str:
        lang, _ = choose_language(request, self.config().default_language)
        return str(self.catalog.translations[lang].ugettext(message))

    def render(self, request: Request, template: str, title: str, *, status: int = 200,
               error: str = "", headers: list[tuple[str, str]] | None = None,
               keep: Mapping[str, str] | None = None, **context: Any) -> Response:
        """`keep`: query parameters the language switch link must carry over."""
        lang, explicit = choose_language(request, self.config().default_language)
        env = self.catalog.environments[lang]
        gettext = self.catalog.translations[lang].ugettext
        params = {"lang": "en" if lang == "ja" else "ja"}
        if context.get("rd"):
            params["rd"] = context["rd"]
        params.update(keep or {})
        extra = list(headers or [])
        if explicit:
            extra.append(("Set-Cookie", language_cookie(lang, secure=self.secure(request))))
        body = env.get_template(template).render(
            lang=lang, title=gettext(title), error=gettext(error) if error else "",
            css_url=CSS_URL, switch_url=request.path + "?" + urlencode(params), **context)
        return html(body, status, extra)

    @staticmethod
    def secure(request: Request) -> bool:
        return request.scheme == "https"

    def bindings(self, request: Request) -> list[str]:
        found = []
        if isinstance(request.session, SessionInfo):
            found.append(csrf_mod.session_binding(request.session.session_id))
        pre = request.cookies().get(csrf_mod.PRE_SESSION_COOKIE, "")
        if pre:
            found.append(csrf_mod.cookie_binding(pre))
        return found

    def issue_csrf(self, request: Request) -> tuple[str, list[tuple[str, str]]]:
        """A token for this browser; sets the pre-session cookie when there is none."""
        if isinstance(request.session, SessionInfo):
            return self.csrf.issue(csrf_mod.session_binding(request.session.session_id)), []
        pre = request.cookies().get(csrf_mod.PRE_SESSION_COOKIE, "")
        headers = []
        if not pre or len(pre) > 64:
            pre = csrf_mod.new_pre_session_value()
            headers.append(("Set-Cookie", csrf_mod.pre_session_cookie(
                pre, secure=self.secure(request))))
        return self.csrf.issue(csrf_mod.cookie_binding(pre)), headers

    def csrf_ok(self, request: Request, form: dict[str, str]) -> bool:
        return self.csrf.verify(form.get(csrf_mod.FIELD), self.bindings(request))

    def message(self, request: Request, title: str, text: str, status: int,
                headers: list[tuple[str, str]] | None = None) -> Response:
        return self.render(request, "message.html", title, status=status, headers=headers,
                           message=self.gettext(request, text))

    def session_cookie(self, request: Request, value: str, max_age: int) -> str:
        name = self.config().session.cookie_name
        secure = "; Secure" if self.secure(request) else ""
        return f"{name}={value}; Path=/; Max-Age={max_age}{secure}; HttpOnly; SameSite=Lax"
