"""The screen-transfer page: its HTML, the watermark data, and its static files (noVNC).

The page runs no inline script and no inline style: its Content-Security-Policy allows
scripts and styles from this origin only, so HTML injected through a route title or a user
name cannot run. The data the page needs (user, route, WebSocket path, language) travels in
a JSON data block that the module script reads. noVNC is served from the files that
`scripts/assets` vendored from its registry package (no CDN: closed networks have none),
under a path holding a digest of every file, so browsers may cache them for ever and a new
version is a new path (ES modules import each other by relative path, so the digest is a
directory, not a query string).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

from sekisho.config.model import Route
from sekisho.gateway.pages import prefers_english
from sekisho.web import Request, Response

ASSET_ROOT = "/.sekisho/screen/"
_STATIC = Path(__file__).resolve().parents[1] / "console" / "static"
_OWN = ("screen.js", "screen.css")  # console/static/
_NOVNC = "vendor/novnc"  # console/static/vendor/novnc/{core,vendor}, from scripts/assets
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".txt": "text/plain; charset=utf-8"}
# connect-src 'self' covers the same-origin ws:/wss: URL; data: and blob: images are the
# cursor noVNC draws; nothing from another origin, no inline code, no framing (clickjacking
# the remote desktop).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; form-action 'none'; frame-ancestors 'none'; "
       "base-uri 'none'")


@dataclass(frozen=True, slots=True)
class ScreenAssets:
    """The page's files, read once: relative name → (body, content type)."""

    files: dict[str, tuple[bytes, str]]
    version: str

    @property
    def prefix(self) -> str:
        return f"{ASSET_ROOT}{self.version}/"

    @property
    def has_novnc(self) -> bool:
        return "novnc/core/rfb.js" in self.files

    @classmethod
    def load(cls, static: Path = _STATIC) -> ScreenAssets:
        files: dict[str, tuple[bytes, str]] = {}
        for name in _OWN:
            path = static / name
            if path.is_file():
                files[name] = (path.read_bytes(), _TYPES[path.suffix])
        novnc = static / _NOVNC
        if novnc.is_dir():
            for path in sorted(novnc.rglob("*")):
                if path.is_file() and path.suffix in _TYPES:
                    files["novnc/" + path.relative_to(novnc).as_posix()] = (
                        path.read_bytes(), _TYPES[path.suffix])
        digest = hashlib.sha256()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name][0]).digest())
        return cls(files, digest.hexdigest()[:12])

    async def serve(self, request: Request) -> Response:
        name = request.path[len(self.prefix):] if request.path.startswith(self.prefix) else ""
        found = self.files.get(name)
        headers = [("X-Content-Type-Options", "nosniff")]
        if found is None or request.method not in ("GET", "HEAD"):
            return Response(404, [*headers, ("Content-Type", "text/plain; charset=utf-8"),
                                  ("Cache-Control", "no-store")], b"not found\n")
        body, kind = found
        return Response(200, [*headers, ("Content-Type", kind),
                              ("Cache-Control", "public, max-age=31536000, immutable")],
                        b"" if request.method == "HEAD" else body)


def watermark_data(route: Route, user: str, ws_path: str, english: bool,
                   has_novnc: bool) -> str:
    """The JSON data block: `<` escaped so no value can close the element (HTML injection
    through a route title or a user name)."""
    return json.dumps({
        "user": user, "route": route.title or route.id, "route_id": route.id,
        "ws_path": ws_path, "lang": "en" if english else "ja", "novnc": has_novnc,
        "clipboard": route.screen.clipboard,
    }, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


def page_response(assets: ScreenAssets, *, route: Route, user: str, ws_path: str,
                  language: str, cookies: str, secure: bool) -> Response:
    english = prefers_english(language, cookies)
    title = escape(route.title or route.id)
    if english:
        heading, connecting = "Screen transfer", "Connecting…"
        note = ("Clipboard, file transfer and printing are off (enforced by the gateway)"
                if not route.screen.clipboard else "Clipboard allowed on this route")
        password, submit = "VNC password", "Connect"
    else:
        heading, connecting = "画面転送", "接続しています…"
        note = ("クリップボード・ファイル転送・印刷は使えません（関所が遮断）"
                if not route.screen.clipboard else "このルートはクリップボードを使えます")
        password, submit = "VNC のパスワード", "接続"
    data = watermark_data(route, user, ws_path, english, assets.has_novnc)
    prefix = assets.prefix
    body = f"""<!doctype html>
<html lang="{'en' if english else 'ja'}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — {heading}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{prefix}screen.css">
<script type="application/json" id="sekisho-screen">{data}</script>
<script type="module" src="{prefix}screen.js"></script>
</head>
<body>
<header id="bar">
<strong id="route-title">{title}</strong>
<span id="status" role="status">{connecting}</span>
<span id="note">{escape(note)}</span>
</header>
<main id="screen"></main>
<form id="password" hidden>
<label>{password} <input type="password" name="password" autocomplete="off"></label>
<button type="submit">{submit}</button>
</form>
<div id="watermark" aria-hidden="true"></div>
</body>
</html>
"""
    headers = [("Content-Type", "text/html; charset=utf-8"), ("Content-Security-Policy", CSP),
               ("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"),
               ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store")]
    if secure:
        headers.append(("Strict-Transport-Security", "max-age=31536000"))
    return Response(200, headers, body.encode("utf-8"))
