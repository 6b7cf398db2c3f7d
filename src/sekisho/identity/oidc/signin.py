"""Federated sign-in: `/.sekisho/oidc/start` sends the browser to the IdP, `/callback` takes
it back, checks everything, and hands the user to `SignInFlows.after_primary`.

The transaction between the two (state, nonce, PKCE verifier, return URL) is stored
server-side, lives ten minutes, is taken exactly once, and is bound to this browser by the
random `__Host-sekisho-oidc` cookie: a callback carrying a valid `state` in *another*
browser (login CSRF: the attacker's account slipped into the victim's browser) is refused.
Every refusal shows one of a few generic pages in Japanese and English, is audited with its
precise reason (`OidcRejected`), and issues no session.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from joserfc.jwk import Key

from sekisho.audit.events import OidcSignIn
from sekisho.config.model import IdentityProvider
from sekisho.errors import SekishoError
from sekisho.identity.flow import FLOW_COOKIE, PrimaryProof
from sekisho.identity.oidc import claims as claims_mod
from sekisho.identity.oidc.authrequest import build_request
from sekisho.identity.oidc.base import (
    BROWSER_COOKIE,
    MSG_RATE,
    MSG_UNKNOWN_IDP,
    FederationBase,
)
from sekisho.identity.oidc.discovery import ProviderCache
from sekisho.identity.oidc.errors import OidcError
from sekisho.identity.oidc.idtoken import CLOCK_SKEW, validate_id_token
from sekisho.identity.oidc.ratelimit import StartLimiter
from sekisho.identity.oidc.tokens import exchange_code
from sekisho.identity.pages import MSG_METHOD, TITLE_ERROR
from sekisho.identity.sessions import session_id_for
from sekisho.observability import metrics
from sekisho.storage import login_flows
from sekisho.storage import oidc as store
from sekisho.web import Request, Response

if TYPE_CHECKING:
    from sekisho.identity.extensions import IdentityContext

TRANSACTION_LIFETIME = 600.0
_BROWSER_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_CODE_MAX = 2048


class FederatedSignIn(FederationBase):
    """The two browser-facing steps of the authorization code flow."""

    def __init__(self, context: IdentityContext, cache: ProviderCache, *,
                 limiter: StartLimiter | None = None, **options: Any) -> None:
        super().__init__(context, cache, **options)
        self.limiter = limiter or StartLimiter()

    def _browser_cookie(self, request: Request, value: str) -> str:
        secure = "; Secure" if request.scheme == "https" else ""
        return (f"{BROWSER_COOKIE}={value}; Path=/; Max-Age={int(TRANSACTION_LIFETIME)}"
                f"{secure}; HttpOnly; SameSite=Lax")

    async def start(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return self.pages.message(request, TITLE_ERROR, MSG_METHOD, 405,
                                      [("Allow", "GET")])
        # Each start writes a transaction row before anything is proven: bound it per
        # address, checked before any write (storage exhaustion by a GET loop). Refusals are
        # counted, not audited — an audit record per refused request is the same flood.
        if not self.limiter.allow(request.client_ip):
            metrics.SIGNINS.labels("oidc-rate-limited").inc()
            retry = str(self.limiter.retry_after(request.client_ip))
            return self.pages.message(request, TITLE_ERROR, MSG_RATE, 429,
                                      [("Retry-After", retry), ("Cache-Control", "no-store")])
        params = request.query_params()
        idp = self.idp(params.get("idp", ""))
        if idp is None:
            return self.pages.message(request, TITLE_ERROR, MSG_UNKNOWN_IDP, 404)
        rd = params.get("rd", "")[:4096]
        try:
            metadata = await self.cache.metadata(idp)
            auth = build_request(metadata, idp, self.origin(request), random=self.random)
            browser = request.cookies().get(BROWSER_COOKIE, "")
            if not _BROWSER_RE.match(browser):
                browser = secrets.token_urlsafe(32)
            now = self.clock()
            await asyncio.to_thread(
                store.create_transaction, self.engine, state=auth.state, browser=browser,
                idp=idp.id, nonce=auth.nonce, code_verifier=auth.code_verifier,
                redirect_uri=auth.redirect_uri, rd=rd, now=now,
                expires_at=now + timedelta(seconds=TRANSACTION_LIFETIME))
        except OidcError as exc:
            return await self.refuse(request, idp.id, exc)
        except SekishoError:
            return self.unavailable(request)
        return Response(303, [("Location", auth.url), ("Cache-Control", "no-store"),
                              ("Set-Cookie", self._browser_cookie(request, browser))])

    async def callback(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return self.pages.message(request, TITLE_ERROR, MSG_METHOD, 405,
                                      [("Allow", "GET")])
        params = request.query_params()
        state = params.get("state", "")[:512]
        browser = request.cookies().get(BROWSER_COOKIE, "")
        idp_id = ""
        try:
            if not state:
                raise OidcError("state-invalid")
            record = await asyncio.to_thread(store.take_transaction, self.engine, state,
                                             self.clock())
            if record is None:
                raise OidcError("state-invalid")  # unknown, expired or already used
            idp_id = record.idp
            if not _BROWSER_RE.match(browser) or \
                    not secrets.compare_digest(store.digest(browser), record.browser_hash):
                raise OidcError("state-mismatch")
            idp = self.idp(record.idp)
            if idp is None:
                raise OidcError("idp-unknown")
            return await self._complete(request, idp, params, record)
        except OidcError as exc:
            return await self.refuse(request, idp_id, exc)
        except SekishoError:
            return self.unavailable(request)

    async def _complete(self, request: Request, idp: IdentityProvider,
                        params: dict[str, str], record: store.TransactionRecord) -> Response:
        if "error" in params:
            raise OidcError("idp-error")  # the user cancelled, or the IdP refused
        # RFC 9207: the authorization response names its issuer; a different one means the
        # browser was steered through another IdP (mix-up attack).
        if "iss" in params and params["iss"] != idp.issuer:
            raise OidcError("wrong-issuer")
        code = params.get("code", "")
        if not code or len(code) > _CODE_MAX:
            raise OidcError("idp-error")
        metadata = await self.cache.metadata(idp)
        tokens = await exchange_code(self.http_for(idp), metadata, idp, code=code,
                                     redirect_uri=record.redirect_uri,
                                     code_verifier=record.code_verifier)
        now = self.clock()

        async def key_for(kid: str, kty: str) -> Key:
            return await self.cache.key(idp, kid, kty)

        verified = await validate_id_token(
            tokens.id_token, issuer=idp.issuer, client_id=idp.client_id, nonce=record.nonce,
            algorithms=idp.algorithms, key_for=key_for, now=now)
        # Remember the nonce while its token is valid (bounded: a far-future exp is no
        # reason to keep a row forever).
        remaining = float(verified.claims["exp"]) - now.timestamp()
        keep = timedelta(seconds=min(max(remaining, 0.0), 86400.0) + CLOCK_SKEW)
        fresh = await asyncio.to_thread(
            store.use_once, self.engine, "nonce", f"{idp.id}:{record.nonce}", now=now,
            expires_at=now + keep)
        if not fresh:
            raise OidcError("nonce-replay")
        mapped = claims_mod.map_claims(idp, verified)
        user, events = await asyncio.to_thread(claims_mod.resolve_user, self.engine, idp,
                                               mapped, now)
        for event in events:
            await self.audit.append(event)
        # An IdP that must assert MFA and did not: Sekisho's own second factor stands in,
        # enrolled inside the pending flow if the user has none (never a one-factor session).
        proof = PrimaryProof(user, "oidc", idp=idp.id,
                             extra_methods=("idp_mfa",) if mapped.idp_mfa else (),
                             groups_from_idp=tuple(sorted(mapped.groups)),
                             require_second_factor=idp.require_mfa and not mapped.idp_mfa)
        response = await self.flows.after_primary(request, proof, record.rd)
        await self._link(response, user.id, idp, mapped, tokens.id_token)
        pending = any(v.startswith(FLOW_COOKIE + "=") for k, v in response.headers
                      if k.lower() == "set-cookie")
        await self.audit.append(OidcSignIn(
            user=user.username, idp=idp.id, source_ip=request.client_ip,
            idp_mfa=mapped.idp_mfa, next_step="second-factor" if pending else "session"))
        return response

    async def session_issued(self, flow_id: str, session_id: str) -> None:
        """`SignInFlows.on_session_issued`: the pending flow's link now names its session."""
        attached = await asyncio.to_thread(store.attach_session, self.engine, flow_id,
                                           session_id)
        if attached:
            return
        # The flow had a link that a back-channel logout removed while the second factor was
        # being entered (logout race): the IdP session is over, so is this one.
        flow = await asyncio.to_thread(login_flows.load_flow, self.engine, flow_id)
        if flow is not None and flow.idp:
            await asyncio.to_thread(self.sessions.revoke_id, session_id, "idp-logout")

    async def _link(self, response: Response, user_id: int, idp: IdentityProvider,
                    mapped: claims_mod.MappedIdentity, id_token: str) -> None:
        """Remember which Sekisho session (or pending flow) the IdP session became."""
        cookie_name = self.config().session.cookie_name
        session_id = flow_id = ""
        for name, value in response.headers:
            if name.lower() != "set-cookie":
                continue
            key, _, rest = value.partition("=")
            token = rest.split(";", 1)[0]
            if key == cookie_name and token:
                session_id = session_id_for(token)
            elif key == FLOW_COOKIE and token:
                flow_id = hashlib.sha256(token.encode("ascii")).hexdigest()
        if not (session_id or flow_id):
            return
        now = self.clock()
        lifetime = timedelta(seconds=self.config().session.absolute_lifetime)
        await asyncio.to_thread(
            store.link_session, self.engine, session_id=session_id, flow_id=flow_id,
            user_id=user_id, idp=idp.id, sub=mapped.sub, sid=mapped.sid, id_token=id_token,
            now=now, expires_at=now + lifetime)

