"""Fixtures: a real Gateway on 127.0.0.1:0 in front of real upstreams, with real keys in a
migrated SQLite database, plus a raw-socket HTTP client for the attack tests."""

from __future__ import annotations

import dataclasses
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sekisho.config.model import Config, ListenAddress, Route, Timeouts
from sekisho.devices.trust import DeviceTrust
from sekisho.gateway.keys import KeyRing
from sekisho.gateway.server import Gateway
from sekisho.gateway.tls import self_signed, server_context
from sekisho.runtime import Runtime, build_runtime
from sekisho.storage.database import create_database_engine, upgrade
from sekisho.storage.keys import SigningKeyRepository
from sekisho.web import Request, Response, json_response

from .servers import DictSessions, EchoUpstream, Harness, ListAudit

HOST = "app.localhost"
STAFF = "staff-token-0123456789abcdef"
GUEST = "guest-token-0123456789abcdef"


def make_config(upstream_port: int, **overrides: Any) -> Config:
    to = f"http://127.0.0.1:{upstream_port}"
    routes = (
        Route(id="app", host=HOST, path_prefix="/", to=to, policy="staff", websocket=True),
        Route(id="admin", host=HOST, path_prefix="/denied", to=to, policy="nobody"),
        Route(id="public", host="public.localhost", path_prefix="/", to=to, policy="anyone"),
        Route(id="raw", host="raw.localhost", path_prefix="/", to=to, policy="anyone",
              allow_ambiguous_paths=True),
        Route(id="slow", host="slow.localhost", path_prefix="/", to=to, policy="anyone",
              timeouts=Timeouts(connect=1.0, read=0.5)),
        Route(id="dead", host="dead.localhost", path_prefix="/", to="http://127.0.0.1:9",
              policy="anyone", timeouts=Timeouts(connect=1.0, read=1.0)),
    )
    policies: dict[str, Any] = {
        "staff": {"allow": {"and": [{"group": ["staff"]}]}},
        "nobody": {"allow": {"and": [{"never": True}]}},
        "anyone": {"allow": {"and": [{"always": True}]}},
    }
    return Config(source="<test>", routes=routes, policies=policies, **overrides)


class GatewayUnderTest:
    def __init__(self, tmp_path: Path, tls: bool = False, *,
                 client_ca_dir: Path | None = None, **config: Any) -> None:
        self.harness = Harness()
        self.upstream = EchoUpstream()
        port = self.harness.call(self.upstream.start())
        self.engine = create_database_engine(f"sqlite:///{tmp_path}/gw.db")
        upgrade(self.engine)
        self.keyring = KeyRing(SigningKeyRepository(self.engine))
        self.keyring.ensure()
        self.sessions = DictSessions()
        self.sessions.add(STAFF, "alice", {"staff"})
        self.sessions.add(GUEST, "bob", {"guests"})
        self.audit = ListAudit()
        self.runtime: Runtime = build_runtime(make_config(port, **config))
        self.handled: list[Request] = []

        async def echo_handler(request: Request) -> Response:
            self.handled.append(request)
            return json_response({"body": request.body.decode(),
                                  "signed_in": bool(request.session)})

        # With client_ca_dir: mTLS (client certificates optional) against that internal CA,
        # device standing from the registry in this same database.
        devices = DeviceTrust(self.engine) if client_ca_dir is not None else None
        self.gateway = Gateway(lambda: self.runtime, self.sessions, self.audit, self.keyring,
                               {"/.sekisho/echo": echo_handler}, devices=devices)
        context = None
        if tls:
            cert, key = self_signed(tmp_path)
            context = server_context(cert, key, client_ca_dir=client_ca_dir)
            self.server_cert = cert
            self.client_ssl = ssl.create_default_context(cafile=cert)
        self.tls = tls
        sockets = self.harness.call(self.gateway.start([ListenAddress("127.0.0.1", 0)], context))
        self.port = sockets[0].getsockname()[1]

    def reconfigure(self, **config: Any) -> None:
        self.runtime = build_runtime(dataclasses.replace(
            make_config(self.upstream.port), **config))

    def connect(self, client_ssl: ssl.SSLContext | None = None) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if self.tls:
            context = client_ssl or self.client_ssl
            return context.wrap_socket(sock, server_hostname="localhost")
        return sock

    def raw(self, data: bytes, *, read_all: bool = True) -> bytes:
        """Send bytes, return everything the gateway sends until it closes (or 2 s idle)."""
        with self.connect() as sock:
            sock.sendall(data)
            sock.settimeout(2)
            chunks = []
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if not read_all:
                        break
            except (TimeoutError, ConnectionResetError):
                pass
            return b"".join(chunks)

    def request(self, method: str = "GET", path: str = "/", *, host: str = HOST,
                token: str | None = STAFF, headers: dict[str, str] | None = None,
                body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
        if token:
            lines.append(f"Cookie: __Host-sekisho={token}")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body:
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        return parse_response(self.raw(data))

    def close(self) -> None:
        self.harness.call(self.gateway.close(1.0))
        self.harness.call(self.upstream.stop())
        self.harness.stop()
        self.engine.dispose()


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return status, headers, body


def echoed(body: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(body)
    return value


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayUnderTest]:
    gateway = GatewayUnderTest(tmp_path)
    yield gateway
    gateway.close()


@pytest.fixture
def gw_tls(tmp_path: Path) -> Iterator[GatewayUnderTest]:
    gateway = GatewayUnderTest(tmp_path, tls=True)
    yield gateway
    gateway.close()
