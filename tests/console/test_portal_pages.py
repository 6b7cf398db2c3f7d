"""The portal's strings are all translated, and sharing PageKit left the identity pages alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir

import sekisho.console
from sekisho.config.model import Config
from sekisho.console import portal
from sekisho.identity import pages
from sekisho.identity.csrf import CsrfProtector
from sekisho.web import Request

PACKAGE = Path(sekisho.console.__file__).parent


def _used_messages() -> set[str]:
    method_map = [("*.py", "python"), ("templates/**.html", "jinja2.ext:babel_extract")]
    options = {"templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    return {msg[2] for msg in extract_from_dir(
        str(PACKAGE), method_map, options, keywords={"N_": None, "_": None, "gettext": None})}


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_every_message_is_translated(lang: str) -> None:
    """Through the merged catalog the pages use: the portal's own, over the identity one."""
    translations = portal.CATALOG.translations[lang]
    used = _used_messages() | {pages.MSG_METHOD, pages.TITLE_ERROR}
    assert len(used) >= 30
    catalog = dict(translations._catalog)  # the compiled messages: msgid -> text
    assert sorted(m for m in used if not catalog.get(m)) == []
    if lang == "ja":  # really Japanese, not the English id copied over
        assert sorted(m for m in used if catalog[m].isascii()) == []


def test_the_identity_catalog_is_not_changed_by_the_merge() -> None:
    assert pages.IDENTITY.translations["ja"].ugettext("Your apps") == "Your apps"
    assert portal.CATALOG.translations["ja"].ugettext("Your apps") == "アプリ一覧"
    # Shared strings come from the identity catalog.
    assert portal.CATALOG.translations["ja"].ugettext("Sign out") == "サインアウト"


def _request(query: str = "") -> Request:
    return Request("GET", "/x", "/x", query, [], "127.0.0.1", "https", "h")


def test_a_kit_renders_another_packages_templates_with_identity_ones_still_found() -> None:
    kit = pages.PageKit(current_config=lambda: Config(source="<t>"),
                        csrf=CsrfProtector(b"k" * 32))
    console = kit.with_catalog(portal.CATALOG)
    assert console.csrf is kit.csrf and console.config is kit.config
    message = console.message(_request(), pages.TITLE_ERROR, pages.MSG_METHOD, 405)
    assert "この操作" in message.body.decode() or "許可" in message.body.decode()
    response = console.render(_request("lang=en"), "portal_missing.html", portal.TITLE_MISSING,
                              status=404, keep={"route": "a&b"}, portal_css_url="/c.css",
                              home_url="/h", security_url="/s", signout_url="/o",
                              contact="", page="why")
    body = response.body.decode()
    assert response.status == 404 and "App not found" in body
    assert 'href="/x?lang=ja&amp;route=a%26b"' in body  # kept, encoded, escaped
    # The identity kit still renders its own pages in Japanese by default.
    assert "サインイン" in kit.render(_request(), "message.html", "Sign in",
                                     message="").body.decode()


def _luminance(colour: str) -> float:
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_segment_and_badge_colours_meet_wcag_aa() -> None:
    """Text on the segment labels and status badges: at least 4.5:1 (WCAG 2.x AA)."""
    css = portal.CSS_BYTES.decode()
    segments = re.findall(r"--seg-bg: (#[0-9a-f]{6}); --seg-ink: (#[0-9a-f]{6})", css)
    badges = re.findall(r"\.badge-[a-z-]+ \{ color: (#[0-9a-f]{6}); background: (#[0-9a-f]{6})",
                        css)
    assert len(segments) == 3 and len(badges) == 3
    for background, ink in segments:
        assert _contrast(background, ink) >= 4.5
    for ink, background in badges:
        assert _contrast(ink, background) >= 4.5
