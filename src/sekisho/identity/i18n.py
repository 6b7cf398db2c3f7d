"""Japanese and English for the gateway's own pages: gettext catalogs compiled at import.

Messages live in `locale/{ja,en}/LC_MESSAGES/messages.po` (English message ids). They are
compiled in memory at import with Babel, so no build step is needed and a missing `.mo`
file can never make a page fall back silently. The language is chosen from `?lang=`, then
the `sekisho_lang` cookie, then Accept-Language, then the configured default (Japanese).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from sekisho.web import Request

LANGUAGES = ("ja", "en")
LANG_COOKIE = "sekisho_lang"
LOCALE_DIR = Path(__file__).with_name("locale")


def _compile(lang: str, locale_dir: Path) -> Translations:
    with (locale_dir / lang / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        catalog = read_po(handle, locale=lang)
    buffer = BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(fp=buffer, domain="messages")


def load_translations(locale_dir: Path = LOCALE_DIR) -> dict[str, Translations]:
    """Fresh ja/en translations from `locale_dir` (another package's pages have their own)."""
    return {lang: _compile(lang, locale_dir) for lang in LANGUAGES}


TRANSLATIONS: dict[str, Translations] = load_translations()


def _accept_language(header: str) -> str | None:
    best: tuple[float, str] | None = None
    for index, item in enumerate(header.split(",")[:20]):
        fields = item.strip().split(";")
        tag = fields[0].strip().lower().split("-")[0]
        quality = 1.0
        for param in fields[1:]:
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag in LANGUAGES and quality > 0:
            rank = (quality - index * 1e-6, tag)
            if best is None or rank > best:
                best = rank
    return best[1] if best else None


def choose_language(request: Request, default: str = "ja") -> tuple[str, bool]:
    """(language, explicitly chosen by `?lang=` — the caller then sets the cookie)."""
    asked = request.query_params().get("lang", "")
    if asked in LANGUAGES:
        return asked, True
    cookie = request.cookies().get(LANG_COOKIE, "")
    if cookie in LANGUAGES:
        return cookie, False
    header = _accept_language(request.header("accept-language") or "")
    if header:
        return header, False
    return (default if default in LANGUAGES else "ja"), False


def language_cookie(lang: str, *, secure: bool) -> str:
    return (f"{LANG_COOKIE}={lang}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
            + ("; Secure" if secure else ""))
