"""A real `sekisho serve` in a subprocess, real upstreams, and a small HTTPS client.

Everything talks over 127.0.0.1: the gateway is started exactly as an administrator would
(config file, `sekisho db upgrade`, `sekisho user add`, `sekisho serve`), nothing in-process.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

SEKISHO = [sys.executable, "-m", "sekisho"]
PASSWORD = "Kaigan-Shiokaze-77"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1 that this process has not been given before: two calls in a
    row can get the same port back from the kernel (once in CI: a public and an admin listener
    on one port, and the configuration refused)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class EchoUpstream:
    """An upstream that answers every request with what it received, as JSON."""

    def __init__(self) -> None:
        self.received: list[dict[str, object]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                record = {"method": self.command, "path": self.path,
                          "headers": [[k.lower(), v] for k, v in self.headers.items()],
                          "body": body.decode("utf-8", "replace")}
                upstream.received.append(record)
                payload = json.dumps(record).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def config_text(data_dir: Path, storage_url: str, listen: int, admin: int, upstream: int,
                extra_policy: str = "") -> str:
    return f"""\
server:
  listen: ["127.0.0.1:{listen}"]
  admin_listen: "127.0.0.1:{admin}"
  workers: 1
  data_dir: "{data_dir}"
tls:
  self_signed: true
storage:
  url: "{storage_url}"
session:
  idle_timeout: 30m
  absolute_lifetime: 12h
  cache_ttl: 0s
throttle:
  account_max_failures: 3
  ip_max_failures: 50
  lockout: 15m
  base_delay: 10ms
  max_delay: 10ms
mfa:
  office_networks: ["127.0.0.0/8"]
  require_groups: []
audit:
  flush_interval: 100ms
assertion:
  issuer: "https://sekisho.test"
  lifetime: 60s
policies:
  staff:
    allow:
      and:
        - authenticated: true
        - group: [staff]
  admins:
    allow:
      and:
        - authenticated: true
        - group: [admins]
{extra_policy}
routes:
  - id: wiki
    title: 庁内Wiki
    from: https://wiki.localhost/
    to: http://127.0.0.1:{upstream}
    segment: internet
    policy: staff
  - id: finance
    title: 財務会計
    from: https://finance.localhost/
    to: http://127.0.0.1:{upstream}
    segment: lgwan
    policy: admins
"""


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> dict[str, object]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Browser:
    """A cookie-keeping HTTPS client that speaks to the gateway on 127.0.0.1 with a Host header."""

    port: int
    context: ssl.SSLContext
    jar: dict[str, dict[str, str]] = field(default_factory=dict)  # host -> cookies (__Host-)

    def cookies_for(self, host: str) -> dict[str, str]:
        return self.jar.setdefault(host, {})

    def request(self, method: str, host: str, target: str, *, body: bytes = b"",
                headers: dict[str, str] | None = None) -> Response:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=10)
        sent = {"Host": host, **(headers or {})}
        cookies = self.cookies_for(host)
        if cookies and "Cookie" not in sent:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        if body:
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        try:
            conn.request(method, target, body=body or None, headers=sent)
            raw = conn.getresponse()
            response = Response(raw.status, raw.getheaders(), raw.read())
        finally:
            conn.close()
        for key, value in response.headers:
            if key.lower() == "set-cookie":
                jar: SimpleCookie = SimpleCookie()
                jar.load(value)
                for morsel in jar.values():
                    if morsel["max-age"] == "0" or not morsel.value:
                        cookies.pop(morsel.key, None)
                    else:
                        cookies[morsel.key] = morsel.value
        return response

    def get(self, host: str, target: str, **kwargs: object) -> Response:
        return self.request("GET", host, target, **kwargs)  # type: ignore[arg-type]

    def signin_form(self, host: str, rd: str = "/") -> tuple[Response, str]:
        page = self.get(host, "/.sekisho/signin?" + urlencode({"rd": rd}))
        match = re.search(rb'name="csrf" value="([^"]+)"', page.body)
        assert match, page.body[:500]
        return page, match.group(1).decode()

    def signin(self, host: str, username: str, password: str = PASSWORD,
               rd: str = "/") -> Response:
        _, token = self.signin_form(host, rd)
        form = urlencode({"csrf": token, "rd": rd, "username": username, "password": password})
        return self.request("POST", host, "/.sekisho/signin", body=form.encode())


class GatewayProcess:
    """`sekisho serve --config FILE` as a child process, with its admin CLI."""

    def __init__(self, tmp: Path, storage_url: str, upstream: EchoUpstream) -> None:
        self.tmp = tmp
        self.port, self.admin = free_port(), free_port()
        self.config = tmp / "sekisho.yaml"
        self.config.write_text(config_text(tmp / "data", storage_url, self.port, self.admin,
                                           upstream.port), encoding="utf-8")
        self.env = {**os.environ, "SEKISHO_LOG_LEVEL": "INFO"}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tmp / "gateway.log"

    def cli(self, *args: str, stdin: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*SEKISHO, *args, "--config", str(self.config)], input=stdin, text=True,
            capture_output=True, env=self.env, timeout=60, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"sekisho {' '.join(args)} failed: {result.stderr}")
        return result

    def provision(self) -> None:
        self.cli("db", "upgrade")
        for group in ("staff", "admins"):
            self.cli("group", "add", group)
        self.cli("user", "add", "tanaka", "--password-stdin", "--group", "staff",
                 "--email", "tanaka@city.example.jp", "--display-name", "田中 花子",
                 stdin=PASSWORD + "\n")
        self.cli("user", "add", "sato", "--password-stdin", "--group", "staff",
                 "--group", "admins", stdin=PASSWORD + "\n")

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*SEKISHO, "serve", "--config", str(self.config)], env=self.env,
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("gateway exited: " + self.log.read_text()[-3000:])
            try:
                if self.admin_get("/readyz")[0] == 200:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("gateway did not become ready: " + self.log.read_text()[-3000:])

    def admin_get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        try:
            conn.request("GET", path)
            raw = conn.getresponse()
            return raw.status, raw.read()
        finally:
            conn.close()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def browser(self) -> Browser:
        cert = self.tmp / "data" / "tls" / "self-signed.crt"
        context = ssl.create_default_context(cafile=str(cert)) if cert.exists() else (
            ssl._create_unverified_context())
        return Browser(self.port, context)
