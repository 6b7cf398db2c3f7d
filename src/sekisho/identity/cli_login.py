"""Signing in the command line: a browser hands a credential back to `sekisho login`.

RFC 8252 (native apps) with a PKCE-style challenge (RFC 7636, S256): the CLI listens on
`127.0.0.1:<port>`, opens `/.sekisho/cli/authorize?port=&state=&challenge=` in the browser;
the signed-in user confirms on a CSRF-protected page that names what is authorised; the
gateway redirects to `http://127.0.0.1:<port>/callback?code=&state=`; the CLI posts the code
and its verifier to `/.sekisho/cli/token` and gets a credential for `Authorization: Bearer`.

Defences, each with the attack it blocks:
- the callback host is fixed (127.0.0.1) and only the port comes from the request: the
  authorize page can never be turned into an open redirect that carries a code elsewhere;
- the code is useless without the verifier only the CLI that started the flow holds (another
  local process that reads the code from the browser's history or listens on the port first
  cannot exchange it); `state` lets the CLI refuse a callback it did not ask for;
- a code is single use (a `login_flows` row consumed by one conditional UPDATE, so two
  workers racing on a replayed code cannot both win) and lives `CODE_TTL` seconds;
- code and credential are sealed (AES-GCM, the installation secret `cli-credential`, a
  distinct associated data for each so one can never be played as the other). The credential
  carries the session's token, so it is bound to that session: revoking the session (or the
  user) revokes it, and it expires no later than the session. It is accepted only as a
  bearer on `mode: tcp` routes, never as a cookie, so a leaked one opens no web page.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine

from sekisho.audit.events import CliAuthorized, CliCredentialIssued
from sekisho.identity.i18n import choose_language
from sekisho.identity.principal import SessionInfo
from sekisho.storage import login_flows
from sekisho.storage.secrets_store import get_or_create_secret
from sekisho.web import SECURITY_HEADERS, Handler, Request, Response, json_response, redirect

if TYPE_CHECKING:
    from sekisho.identity.extensions import IdentityContext

log = logging.getLogger("sekisho.identity.cli")

AUTHORIZE_PATH = "/.sekisho/cli/authorize"
TOKEN_PATH = "/.sekisho/cli/token"  # noqa: S105 (a path, not a secret)
SECRET_NAME = "cli-credential"  # noqa: S105 (the secret's name, not its value)
CREDENTIAL_PREFIX = "skc1."
CODE_PREFIX = "skcode1."
CODE_TTL = 120.0  # seconds between the confirmation and the exchange
FLOW_MODE = "cli"
CALLBACK_HOST = "127.0.0.1"
_CODE_AAD = b"sekisho cli code v1"
_CREDENTIAL_AAD = b"sekisho cli credential v1"
_STATE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url(sha256(verifier)), no padding
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 section 4.1
_MAX_SEALED = 2048
_TOKYO = ZoneInfo("Asia/Tokyo")


class CliLoginError(Exception):
    """A refused step of the flow: a machine code, ja/en messages and the HTTP status."""

    def __init__(self, code: str, ja: str, en: str, status: int = 400) -> None:
        super().__init__(code)
        self.code, self.ja, self.en, self.status = code, ja, en, status

    def response(self) -> Response:
        return json_response({"error": self.code, "message": self.ja, "message_en": self.en},
                             self.status)


def challenge_of(verifier: str) -> str:
    """S256: base64url(sha256(verifier)) without padding (what the CLI sends first)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CliCredentials:
    """Seals and opens codes and credentials with the installation's `cli-credential` key."""

    def __init__(self, engine: Engine, clock: Callable[[], float] | None = None) -> None:
        self._engine = engine
        self._clock = clock or (lambda: datetime.now(UTC).timestamp())
        self._aead: AESGCM | None = None
        self._lock = threading.Lock()

    def _cipher(self) -> AESGCM:
        """Synchronous (reads the database the first time): call from a thread."""
        with self._lock:
            if self._aead is None:
                self._aead = AESGCM(get_or_create_secret(self._engine, SECRET_NAME))
            return self._aead

    async def ready(self) -> AESGCM:
        return self._aead if self._aead is not None else await asyncio.to_thread(self._cipher)

    def _seal(self, prefix: str, aad: bytes, payload: Mapping[str, Any]) -> str:
        nonce = os.urandom(12)
        data = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return prefix + _b64(nonce + self._cipher().encrypt(nonce, data, aad))

    def _open(self, prefix: str, aad: bytes, sealed: str) -> dict[str, Any] | None:
        if not sealed.startswith(prefix) or len(sealed) > _MAX_SEALED:
            return None
        try:
            raw = _unb64(sealed[len(prefix):])
            data = self._cipher().decrypt(raw[:12], raw[12:], aad)
            payload = json.loads(data)
        except (ValueError, InvalidTag, UnicodeDecodeError):
            return None  # forged, altered, or sealed for the other purpose
        return payload if isinstance(payload, dict) else None

    # -- credentials (gateway side: `gateway.tcp`) ----------------------------------------

    def seal_credential(self, token: str, expires_at: float) -> str:
        return self._seal(CREDENTIAL_PREFIX, _CREDENTIAL_AAD, {"t": token, "e": expires_at})

    def open_credential(self, credential: str) -> str | None:
        """The session token inside a valid, unexpired credential; None otherwise.
        Synchronous only the first time (the key); `ready()` first on the event loop."""
        payload = self._open(CREDENTIAL_PREFIX, _CREDENTIAL_AAD, credential)
        if payload is None or not isinstance(payload.get("t"), str):
            return None
        expires = payload.get("e")
        if not isinstance(expires, int | float) or expires <= self._clock():
            return None
        return str(payload["t"])

    # -- codes (the authorize page and the token endpoint) --------------------------------

    def seal_code(self, *, token: str, challenge: str, port: int, state: str) -> str:
        return self._seal(CODE_PREFIX, _CODE_AAD, {
            "t": token, "c": challenge, "p": port, "s": state,
            "e": self._clock() + CODE_TTL, "n": _b64(os.urandom(12))})

    def open_code(self, code: str) -> dict[str, Any] | None:
        payload = self._open(CODE_PREFIX, _CODE_AAD, code)
        if payload is None or not all(isinstance(payload.get(k), t) for k, t in (
                ("t", str), ("c", str), ("p", int), ("s", str), ("e", float))):
            return None
        return payload


def flow_id(code: str) -> str:
    """The `login_flows` row that makes a code single use (the hash: a database copy holds
    no code)."""
    return hashlib.sha256(code.encode("ascii")).hexdigest()


def parse_request(params: Mapping[str, str]) -> tuple[int, str, str]:
    """(port, state, challenge) from the authorize request; CliLoginError when malformed."""
    port_text, state, challenge = (params.get(k, "") for k in ("port", "state", "challenge"))
    if not port_text.isdigit() or not 1024 <= int(port_text) <= 65535:
        raise CliLoginError("invalid-port", "port はコマンドが待ち受ける 1024〜65535 の番号です",
                            "port must be the command's listening port, 1024-65535")
    if not _STATE.fullmatch(state):
        raise CliLoginError("invalid-state", "state が不正です", "state is malformed")
    if not _CHALLENGE.fullmatch(challenge):
        raise CliLoginError("invalid-challenge", "challenge が不正です（S256）",
                            "challenge is malformed (S256)")
    return int(port_text), state, challenge


def callback_url(port: int, query: Mapping[str, str]) -> str:
    """Always the loopback address with the given port: nothing else can be reached."""
    return f"http://{CALLBACK_HOST}:{port}/callback?{urlencode(query)}"


class CliLogin:
    """The two endpoints; the credentials object is shared with the gateway's TCP access."""

    def __init__(self, context: IdentityContext, credentials: CliCredentials) -> None:
        self.context = context
        self.credentials = credentials

    # -- GET/POST /.sekisho/cli/authorize -------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        pages = self.context.pages
        try:
            port, state, challenge = parse_request(
                request.form() if request.method == "POST" else request.query_params())
        except CliLoginError as exc:
            return self._message(request, exc.ja, exc.en, 400)
        session = request.session
        if not isinstance(session, SessionInfo):
            query = urlencode({"port": port, "state": state, "challenge": challenge})
            back = f"{AUTHORIZE_PATH}?{query}"
            return redirect(f"/.sekisho/signin?rd={quote(back, safe='')}", 302)
        if request.method == "GET":
            return self._confirm_page(request, session, port, state, challenge)
        if request.method != "POST":
            return self._message(request, "この操作はできません", "method not allowed", 405)
        form = request.form()
        if not pages.csrf_ok(request, form):
            # Login CSRF: a page elsewhere must not make the user's browser authorise an
            # attacker's CLI (it would then act as this user).
            return self._message(request, "画面の有効期限が切れました。もう一度やり直してください",
                                 "the form expired; start again", 403)
        if form.get("decision") != "allow":
            return redirect(callback_url(port, {"error": "access_denied", "state": state}))
        token = request.cookies().get(self.context.current_config().session.cookie_name, "")
        await self.credentials.ready()
        code = self.credentials.seal_code(token=token, challenge=challenge, port=port,
                                          state=state)
        now = self.context.clock()
        await asyncio.to_thread(
            login_flows.create_flow, self.context.engine, flow_id=flow_id(code),
            user_id=session.user_id, mode=FLOW_MODE, primary_method="", idp="", methods=(),
            rd="", session_id=session.session_id, agent_hash="", source_ip=request.client_ip,
            auth_time=session.auth_time, now=now,
            expires_at=now + timedelta(seconds=CODE_TTL))
        await self.context.audit.append(CliAuthorized(
            user=session.username, session=session.short_id, port=port,
            source_ip=request.client_ip))
        return redirect(callback_url(port, {"code": code, "state": state}))

    def _confirm_page(self, request: Request, session: SessionInfo, port: int, state: str,
                      challenge: str) -> Response:
        pages = self.context.pages
        csrf, headers = pages.issue_csrf(request)
        lang, _ = choose_language(request, self.context.current_config().default_language)
        title = "コマンドラインのサインイン" if lang == "ja" else "Sign in the command line"
        response = pages.render(
            request, "cli_authorize.html", title, headers=headers,
            keep={"port": str(port), "state": state, "challenge": challenge},
            csrf=csrf, port=port, state=state, challenge=challenge, action=AUTHORIZE_PATH,
            user=session.display_name or session.username, username=session.username,
            expires=session.expires_at.astimezone(_TOKYO).strftime("%Y-%m-%d %H:%M"))
        # The form posts here and we redirect to the CLI's port: browsers enforce
        # form-action on that redirect too, so exactly that origin is added, nothing wider.
        csp = dict(SECURITY_HEADERS)["Content-Security-Policy"].replace(
            "form-action 'self'", f"form-action 'self' http://{CALLBACK_HOST}:{port}")
        response.set_header("Content-Security-Policy", csp)
        return response

    def _message(self, request: Request, ja: str, en: str, status: int) -> Response:
        lang, _ = choose_language(request, self.context.current_config().default_language)
        title = "コマンドラインのサインイン" if lang == "ja" else "Sign in the command line"
        return self.context.pages.render(request, "message.html", title, status=status,
                                         message=ja if lang == "ja" else en)

    # -- POST /.sekisho/cli/token -----------------------------------------------------------

    async def token(self, request: Request) -> Response:
        try:
            return await self._exchange(request)
        except CliLoginError as exc:
            return exc.response()

    async def _exchange(self, request: Request) -> Response:
        if request.method != "POST":
            raise CliLoginError("method-not-allowed", "POST で送ってください", "use POST", 405)
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            body = None
        code = body.get("code") if isinstance(body, dict) else None
        verifier = body.get("verifier") if isinstance(body, dict) else None
        if not isinstance(code, str) or not isinstance(verifier, str) or \
                not _VERIFIER.fullmatch(verifier):
            raise CliLoginError("invalid-request", "code と verifier が必要です",
                                "code and verifier are required")
        await self.credentials.ready()
        payload = self.credentials.open_code(code)
        if payload is None:
            raise CliLoginError("invalid-code", "コードが不正です", "the code is not valid")
        if payload["e"] <= self.context.clock().timestamp():
            raise CliLoginError("code-expired", "コードの有効期限が切れました。もう一度"
                                "sekisho login を実行してください",
                                "the code expired; run sekisho login again")
        if not hmac.compare_digest(challenge_of(verifier), payload["c"]):
            raise CliLoginError("invalid-verifier", "verifier が一致しません",
                                "the verifier does not match the challenge")
        now = self.context.clock()
        if not await asyncio.to_thread(login_flows.consume_flow, self.context.engine,
                                       flow_id(code), now):
            # Replay: the code was exchanged already (or never recorded).
            raise CliLoginError("code-used", "このコードは使用済みです",
                                "the code was used already")
        session = await self.context.sessions.lookup_fresh(payload["t"], activity=False)
        if session is None:
            raise CliLoginError("session-ended", "ブラウザーのセッションが終了しています。"
                                "もう一度サインインしてください",
                                "the browser session has ended; sign in again", 401)
        credential = self.credentials.seal_credential(payload["t"],
                                                      session.expires_at.timestamp())
        expires = session.expires_at.astimezone(UTC).isoformat()
        await self.context.audit.append(CliCredentialIssued(
            user=session.username, session=session.short_id, expires_at=expires,
            source_ip=request.client_ip))
        return json_response({"credential": credential, "expires_at": expires,
                              "user": session.username})


def build_handlers(context: IdentityContext) -> Mapping[str, Handler]:
    login = CliLogin(context, CliCredentials(context.engine))
    return {AUTHORIZE_PATH: login.authorize, TOKEN_PATH: login.token}


def new_verifier() -> str:
    """A PKCE verifier for the CLI (43 characters of 256 random bits)."""
    return secrets.token_urlsafe(32)
