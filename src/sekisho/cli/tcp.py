"""`sekisho login` and `sekisho tcp`: TCP access from a staff machine (docs/connector.md).

`login` signs the command line in through the browser (`identity.cli_login`: loopback
redirect, S256 challenge, state) and keeps the credential 0600 in the user's configuration
directory. `tcp ROUTE --listen 127.0.0.1:PORT` then carries every local connection to the
route through the gateway (`cli._tcp_client`); every connection is decided by the gateway,
and a refusal is explained in Japanese and English with what to do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import secrets
import signal
import ssl
import sys
import threading
import urllib.error
import urllib.request
import webbrowser
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from sekisho.cli._tcp_client import Gateway, LocalListener, Refused
from sekisho.identity.cli_login import AUTHORIZE_PATH, TOKEN_PATH, challenge_of, new_verifier

LOGIN_TIMEOUT = 300.0
STEP_UP_PATH = "/.sekisho/stepup"
_DONE_PAGE = ("<!doctype html><meta charset=utf-8><title>sekisho</title>"
              "<p>コマンドラインに戻ってください。このタブは閉じて構いません。</p>"
              "<p lang=en>Return to the command line; you may close this tab.</p>").encode()


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sekisho"


def credentials_file() -> Path:
    return config_dir() / "credentials.json"


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def load_credentials() -> dict[str, Any]:
    try:
        data = json.loads(credentials_file().read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_credential(gateway: str, entry: dict[str, Any]) -> Path:
    """Written 0600 from the start (a credential lets anyone who reads it act as the user)."""
    data = load_credentials()
    data[origin_of(gateway)] = entry
    data["default"] = origin_of(gateway)
    path = credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)
    return path


def find_credential(gateway: str | None) -> str | None:
    """The credential saved for `gateway`, else the one of the last `sekisho login` (the
    credential is valid on every host of the installation that signed it)."""
    data = load_credentials()
    entry = data.get(origin_of(gateway)) if gateway else None
    if not isinstance(entry, dict):
        entry = data.get(str(data.get("default", "")))
    if not isinstance(entry, dict) or not isinstance(entry.get("credential"), str):
        return None
    return str(entry["credential"])


def ssl_context(ca_file: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if cert:
        context.load_cert_chain(cert, key)  # device certificate: mTLS facts at the gateway
    return context


# -------------------------------------------------------------------------------- login


class _Callback:
    """The loopback listener the browser is sent back to: takes one code with our state."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.code: str | None = None
        self.error: str | None = None
        self.done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                # A callback without our state is someone else's (CSRF against the CLI):
                # refused, and we keep waiting for ours.
                if parts.path != "/callback" or not hmac.compare_digest(
                        query.get("state", ""), outer.state):
                    self.send_response(400)
                    self.end_headers()
                    return
                outer.code = query.get("code")
                outer.error = query.get("error")
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(_DONE_PAGE)))
                self.end_headers()
                self.wfile.write(_DONE_PAGE)
                outer.done.set()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LoginFailed(Exception):
    def __init__(self, ja: str, en: str) -> None:
        super().__init__(en)
        self.ja, self.en = ja, en


def login(gateway: str, *, context: ssl.SSLContext | None, step_up: bool = False,
          open_browser: Callable[[str], object] = webbrowser.open,
          timeout: float = LOGIN_TIMEOUT, announce: Callable[[str], None] = print
          ) -> dict[str, Any]:
    """The whole browser flow; returns {credential, expires_at, user}."""
    base = gateway.rstrip("/")
    if urlsplit(base).scheme not in ("https", "http"):
        raise LoginFailed("--gateway は https:// の URL です", "--gateway must be an https:// URL")
    verifier = new_verifier()
    state = secrets.token_urlsafe(24)
    callback = _Callback(state)
    try:
        query = urlencode({"port": callback.port, "state": state,
                           "challenge": challenge_of(verifier)})
        url = f"{base}{AUTHORIZE_PATH}?{query}"
        if step_up:  # prove a second factor first, then come back to the authorisation
            url = f"{base}{STEP_UP_PATH}?rd={quote(f'{AUTHORIZE_PATH}?{query}', safe='')}"
        announce(f"ブラウザーでサインインしてください / Sign in in your browser:\n  {url}")
        open_browser(url)
        if not callback.done.wait(timeout):
            raise LoginFailed("ブラウザーからの応答がありませんでした",
                              "no answer from the browser in time")
    finally:
        callback.close()
    if callback.error or not callback.code:
        raise LoginFailed("許可されませんでした", "the authorisation was declined")
    request = urllib.request.Request(  # noqa: S310 (the scheme was checked: http or https)
        base + TOKEN_PATH, method="POST",
        data=json.dumps({"code": callback.code, "verifier": verifier}).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as answer:  # noqa: S310
            result = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {}
        raise LoginFailed(str(body.get("message", exc.code)),
                          str(body.get("message_en", exc.reason))) from None
    except (OSError, ValueError) as exc:
        raise LoginFailed("ゲートウェイに接続できません", f"gateway unreachable: {exc}") from None
    if not isinstance(result, dict) or not isinstance(result.get("credential"), str):
        raise LoginFailed("ゲートウェイの応答が不正です", "unexpected answer from the gateway")
    return result


def run_login(args: argparse.Namespace) -> int:
    context = ssl_context(args.ca_file, None, None) if args.gateway.startswith("https") \
        else None
    opener: Callable[[str], object] = (lambda url: None) if args.no_browser else webbrowser.open
    try:
        result = login(args.gateway, context=context, step_up=args.step_up,
                       open_browser=opener, timeout=args.timeout)
    except LoginFailed as exc:
        print(f"sekisho login: {exc.ja} / {exc.en}", file=sys.stderr)
        return 1
    path = save_credential(args.gateway, result)
    print(f"{result.get('user')} としてサインインしました（{result.get('expires_at')} まで）/ "
          f"signed in as {result.get('user')} until {result.get('expires_at')} ({path})")
    return 0


# ---------------------------------------------------------------------------------- tcp


def explain(exc: BaseException) -> str:
    """One line (ja / en) for a connection the gateway did not open, and what to do."""
    if isinstance(exc, Refused):
        reasons = f" [{', '.join(exc.reasons)}]" if exc.reasons else ""
        return f"{exc.ja} / {exc.en}{reasons}"
    return (f"ゲートウェイに接続できません / the gateway cannot be reached "
            f"({type(exc).__name__}: {exc})")


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError("--listen HOST:PORT")
    return host, int(port)


async def serve_tcp(args: argparse.Namespace) -> int:
    context = ssl_context(args.ca_file, args.cert, args.key)
    try:
        gateway = Gateway.parse(args.route, args.gateway, context)
    except ValueError as exc:
        print(f"sekisho tcp: {exc} が不正です / {exc} is not valid", file=sys.stderr)
        return 2
    credential = find_credential(args.gateway)
    if credential is None and not args.cert:
        print("sekisho tcp: サインインしていません。sekisho login --gateway URL を実行してください"
              " / not signed in: run sekisho login --gateway URL", file=sys.stderr)
        return 1
    host, port = args.listen

    def refused(exc: BaseException) -> None:
        print(f"sekisho tcp: {explain(exc)}", file=sys.stderr, flush=True)

    listener = LocalListener(gateway, credential, on_refused=refused)
    bound = await listener.start(host, port)
    print(f"{host}:{bound} で待ち受け中 → {gateway.host} / listening on {host}:{bound} → "
          f"{gateway.host}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await listener.close()
    return 0


def run_tcp(args: argparse.Namespace) -> int:
    try:
        import uvloop

        return uvloop.run(serve_tcp(args))
    except ImportError:
        return asyncio.run(serve_tcp(args))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    login_parser = subparsers.add_parser(
        "login", help="コマンドラインをブラウザーでサインイン (sekisho tcp 用) / sign the command "
        "line in through the browser (for sekisho tcp)")
    login_parser.add_argument("--gateway", required=True,
                              help="ゲートウェイの URL / the gateway's URL (https://…)")
    login_parser.add_argument("--ca-file", default=None,
                              help="ゲートウェイの証明書の CA / CA file for the gateway's "
                                   "certificate")
    login_parser.add_argument("--step-up", action="store_true",
                              help="2 段階目の認証をしてから許可 / prove a second factor first")
    login_parser.add_argument("--no-browser", action="store_true",
                              help="ブラウザーを開かず URL を表示 / print the URL only")
    login_parser.add_argument("--timeout", type=float, default=LOGIN_TIMEOUT,
                              help="ブラウザーを待つ秒数 / seconds to wait for the browser")
    login_parser.set_defaults(handler=run_login)

    tcp = subparsers.add_parser(
        "tcp", help="TCP ルートをローカルのポートに中継 (SSH・RDP・DB) / carry local TCP "
        "connections to a TCP route (SSH, RDP, databases)")
    tcp.add_argument("route", help="ルートのホスト名 / the route's host name")
    tcp.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 0),
                     help="待ち受けるアドレス / local address HOST:PORT (default 127.0.0.1:0)")
    tcp.add_argument("--gateway", default=None,
                     help="接続先のゲートウェイ (既定: https://ROUTE) / gateway URL when not the "
                          "route's own host")
    tcp.add_argument("--ca-file", default=None,
                     help="ゲートウェイの証明書の CA / CA file for the gateway's certificate")
    tcp.add_argument("--cert", default=None, help="端末証明書 (mTLS) / device certificate")
    tcp.add_argument("--key", default=None, help="端末証明書の鍵 / device certificate key")
    tcp.set_defaults(handler=run_tcp)

