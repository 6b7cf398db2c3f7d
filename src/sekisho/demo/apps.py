"""Demo internal apps: small real HTTP servers on loopback that stand for a city's systems.

Each page shows who the gateway says is calling, taken from the `X-Sekisho-Assertion` JWT
after verifying it against the gateway's JWKS — exactly what a real upstream should do
(see docs/upstream-verification.md). Only the demo starts these.
"""

from __future__ import annotations

import html
import json
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet


@dataclass(frozen=True)
class DemoApp:
    key: str
    title: str
    body: str


APPS = (
    DemoApp("news", "お知らせ (インターネット接続系)", "お知らせ、庁内リンク、災害時の連絡。"),
    DemoApp("wiki", "庁内Wiki (インターネット接続系)", "業務マニュアル、様式集、よくある質問。"),
    DemoApp("docs", "文書管理システム (LGWAN接続系・デモ)", "起案・決裁・保存文書の管理。"),
    DemoApp("admin-tools", "管理ツール", "情報政策課の管理者だけが開けます。"),
    DemoApp("juki", "住民記録システム (マイナンバー利用事務系・デモ)",
            "2 段階目の認証 (TOTP またはパスキー) から 15 分以内の職員だけが開けます。"),
)
# The closed network's app: no route targets its address; only the demo connector (a
# separate process, demo.connector) reaches it, as an LGWAN server is reached in a city.
INTERNAL_APP = DemoApp("kintai", "庶務事務・勤怠管理 (LGWAN接続系・コネクタ経由のデモ)",
                       "閉域網の中のシステムです。関所のコネクタが外向きに張ったトンネルだけを"
                       "通って届きます (受信用のポートは開いていません)。")


class _JwksCache:
    def __init__(self, url: str) -> None:
        self._url = url
        self._keys: KeySet | None = None
        self._fetched = 0.0
        self._lock = threading.Lock()

    def get(self) -> KeySet:
        with self._lock:
            if self._keys is None or time.monotonic() - self._fetched > 300:
                # The URL is the gateway's own admin listener on loopback, fixed at start.
                with urllib.request.urlopen(self._url, timeout=5) as response:  # noqa: S310
                    self._keys = KeySet.import_key_set(json.load(response))
                self._fetched = time.monotonic()
            return self._keys


def _handler(app: DemoApp, jwks: _JwksCache, issuer: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "sekisho-demo"

        def do_GET(self) -> None:
            who = self._verified_claims()
            if who is None:
                name, groups = "(検証できません / not verified)", ""
            else:
                name = f"{who.get('name') or who.get('sub')} ({who.get('sub')})"
                groups = ", ".join(map(str, who.get("groups") or []))
            page = (
                "<!doctype html><html lang='ja'><head><meta charset='utf-8'>"
                f"<title>{html.escape(app.title)}</title></head><body>"
                f"<h1>{html.escape(app.title)}</h1><p>{html.escape(app.body)}</p>"
                f"<p>ようこそ、{html.escape(name)} さん。グループ: {html.escape(groups)}</p>"
                f"<p>パス / path: <code>{html.escape(self.path)}</code></p>"
                "<p><a href='/.sekisho/signout'>サインアウト / Sign out</a></p>"
                "</body></html>"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def _verified_claims(self) -> dict[str, Any] | None:
            token = self.headers.get("X-Sekisho-Assertion")
            if not token:
                return None
            try:
                decoded = jwt.decode(token, jwks.get(), algorithms=["ES256"])
                jwt.JWTClaimsRegistry(
                    iss={"essential": True, "value": issuer},
                    aud={"essential": True, "value": app.key},
                    exp={"essential": True},
                ).validate(decoded.claims)
            except (JoseError, ValueError, OSError):
                return None
            return dict(decoded.claims)

        def log_message(self, format: str, *args: object) -> None:
            return  # the gateway's audit log is the record

    return Handler


def start_demo_apps(jwks_url: str, issuer: str,
                    preferred: dict[str, int] | None = None) -> dict[str, int]:
    """Start every demo app on loopback — on its `preferred` port when that is free (a kept
    demo configuration names them), else an ephemeral one; return {key: port}."""
    jwks = _JwksCache(jwks_url)
    return {app.key: start_app(app, jwks, issuer, (preferred or {}).get(app.key, 0))
            for app in APPS}


def start_app(app: DemoApp, jwks: _JwksCache | str, issuer: str, port: int = 0) -> int:
    """Serve one demo app on 127.0.0.1:`port` (another free port when it is taken, and the
    caller rewrites the file); return the port."""
    handler = _handler(app, jwks if isinstance(jwks, _JwksCache) else _JwksCache(jwks), issuer)
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"demo-{app.key}", daemon=True).start()
    return int(server.server_address[1])
