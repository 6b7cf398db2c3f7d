"""Real servers for the OIDC tests: the certified OpenID Provider (`oidc-provider` on Node.js)
in a subprocess, and a deliberately misbehaving IdP for token-level negatives.

A certified OP never signs a token with the wrong audience or `alg: none`, so those cases
are served by `FakeIdp`: a plain HTTP server on 127.0.0.1 that speaks enough of the protocol
(discovery, JWKS, an authorization endpoint that answers at once, a token endpoint) and mints
ID tokens with joserfc from claims the test chooses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

ROOT = Path(__file__).resolve().parents[3]
PROVIDER_DIR = ROOT / "tests" / "oidc_provider"
PASSWORD = "pw"


def ensure_node_modules() -> None:
    """`npm ci` from the committed lockfile when node_modules is missing."""
    if (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed for the OIDC tests (Node.js 20+)")
    subprocess.run([npm, "ci", "--prefix", str(PROVIDER_DIR), "--no-audit", "--no-fund"],
                   check=True, timeout=300, capture_output=True)


class OpenIdProvider:
    """`node provider.mjs` on a free port; `issuer` once READY."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str) -> None:
        ensure_node_modules()
        self.config_file = workdir / f"{name}.json"
        self.config_file.write_text(json.dumps(config), "utf-8")
        self.log = (workdir / f"{name}.log").open("w")
        self.process = subprocess.Popen(
            [shutil.which("node") or "node", str(PROVIDER_DIR / "provider.mjs"),
             "--port", "0", "--config", str(self.config_file)],
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=PROVIDER_DIR,
            env={**os.environ, "NODE_ENV": "test"})
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"oidc-provider did not start: {line!r}")
        self.issuer = line.split()[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()


def client(client_id: str, secret: str, gateway: str, **extra: Any) -> dict[str, Any]:
    return {
        "client_id": client_id, "client_secret": secret,
        "redirect_uris": [gateway + "/.sekisho/oidc/callback"],
        "post_logout_redirect_uris": [gateway + "/.sekisho/oidc/signed-out"],
        "backchannel_logout_uri": gateway + "/.sekisho/oidc/backchannel-logout",
        "backchannel_logout_session_required": True, **extra}


# -- the misbehaving IdP --------------------------------------------------------------------

Mint = Callable[[dict[str, Any]], str]  # default claims -> the compact token to return


class FakeIdp:
    """Discovery + JWKS + instant authorization + a token endpoint returning `mint(claims)`."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.key = RSAKey.generate_key(2048, parameters={"kid": "fake-1", "use": "sig"})
        self.published: list[RSAKey | ECKey] = [self.key]
        self.nonces: dict[str, str] = {}  # code -> nonce of its authorization request
        self.mint: Mint = self.sign
        self.jwks_fetches = 0
        self.last_sid = ""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, value: object, status: int = 200) -> None:
                body = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/.well-known/openid-configuration":
                    return self._json(fake.discovery())
                if url.path == "/jwks":
                    fake.jwks_fetches += 1
                    return self._json({"keys": [k.as_dict(private=False)
                                                for k in fake.published]})
                if url.path == "/auth":
                    query = {k: v[0] for k, v in parse_qs(url.query).items()}
                    code = f"code-{len(fake.nonces)}"
                    fake.nonces[code] = query["nonce"]
                    target = query["redirect_uri"] + "?" + urlencode(
                        {"code": code, "state": query["state"]})
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return self._json({"error": "not_found"}, 404)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                nonce = fake.nonces.get(form.get("code", ""))
                if nonce is None:
                    return self._json({"error": "invalid_grant"}, 400)
                return self._json({"access_token": "x", "token_type": "Bearer",
                                   "id_token": fake.mint(fake.claims(nonce))})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def discovery(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "authorization_endpoint": self.issuer + "/auth",
                "token_endpoint": self.issuer + "/token", "jwks_uri": self.issuer + "/jwks",
                "end_session_endpoint": self.issuer + "/logout",
                "backchannel_logout_supported": True}

    def claims(self, nonce: str) -> dict[str, Any]:
        now = int(time.time())
        self.last_sid = f"fake-sid-{time.time_ns()}"  # one IdP session per sign-in
        return {"iss": self.issuer, "aud": self.client_id, "sub": "fake-sub-1",
                "iat": now, "exp": now + 300, "nonce": nonce, "sid": self.last_sid,
                "email": "kato@city.example.jp", "email_verified": True, "name": "Kato",
                "groups": ["staff"], "amr": ["pwd", "mfa"]}

    def sign(self, claims: dict[str, Any], *, key: RSAKey | ECKey | OctKey | None = None,
             header: dict[str, Any] | None = None) -> str:
        key = key or self.key
        head = header or {"alg": "RS256", "kid": key.kid}
        return jwt.encode(head, claims, key, algorithms=[head["alg"]])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
