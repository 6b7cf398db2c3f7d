"""Every message the pages use has a Japanese translation; language choice order."""

from __future__ import annotations

from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

import sekisho.identity
from sekisho.identity.i18n import LOCALE_DIR, choose_language
from sekisho.web import Request

PACKAGE = Path(sekisho.identity.__file__).parent


def _used_messages():
    method_map = [("*.py", "python"), ("templates/**.html", "jinja2.ext:babel_extract")]
    options = {"templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    return {msg[2] for msg in extract_from_dir(
        str(PACKAGE), method_map, options, keywords={"N_": None, "_": None, "gettext": None})}


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_catalogs_cover_every_message(lang):
    with (LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        catalog = read_po(handle)
    used = _used_messages()
    assert len(used) >= 15
    missing = [m for m in used if m not in catalog or not catalog[m].string]
    assert missing == []


def _request(query="", cookie="", accept=""):
    headers = [("cookie", cookie)] if cookie else []
    if accept:
        headers.append(("accept-language", accept))
    return Request("GET", "/", "/", query, headers, "127.0.0.1", "https", "h")


def test_choice_order():
    assert choose_language(_request()) == ("ja", False)
    assert choose_language(_request(accept="en-GB,en;q=0.8")) == ("en", False)
    assert choose_language(_request(accept="fr, ja;q=0.1, en;q=0.05")) == ("ja", False)
    assert choose_language(_request(cookie="sekisho_lang=en", accept="ja")) == ("en", False)
    assert choose_language(_request(query="lang=ja", cookie="sekisho_lang=en")) == ("ja", True)
    assert choose_language(_request(query="lang=xx")) == ("ja", False)
    assert choose_language(_request(), default="en") == ("en", False)
