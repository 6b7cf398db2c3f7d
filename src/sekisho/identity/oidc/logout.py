"""Logout in both directions: the IdP ends Sekisho sessions (Back-Channel Logout 1.0), and a
Sekisho sign-out ends the IdP session too (RP-Initiated Logout 1.0).

Back-channel: the IdP POSTs a signed `logout_token`; it is verified like an ID token plus the
logout rules (events claim, no nonce, sid and/or sub), and its `jti` is accepted once — a
captured logout token replayed later must not sign somebody out again and again. The
matching sessions are revoked; a sign-in still waiting for its second factor is ended too,
so that finishing the second factor after the IdP logged the user out yields no session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import timedelta
from urllib.parse import urlencode

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import Key

from sekisho.audit.events import BackchannelLogout, OidcRejected, SignedOut
from sekisho.config.model import IdentityProvider
from sekisho.errors import SekishoError
from sekisho.identity.oidc.base import FederationBase
from sekisho.identity.oidc.errors import OidcError
from sekisho.identity.oidc.idtoken import CLOCK_SKEW, MAX_TOKEN_AGE, validate_logout_token
from sekisho.identity.pages import MSG_CSRF, MSG_METHOD, N_, TITLE_ERROR
from sekisho.identity.principal import SessionInfo
from sekisho.storage import login_flows
from sekisho.storage import oidc as store
from sekisho.storage.users import get_user_by_id
from sekisho.web import Request, Response, json_response

SIGNED_OUT_PATH = "/.sekisho/oidc/signed-out"
SIGNOUT_PATH = "/.sekisho/oidc/signout"
MSG_SIGNED_OUT = N_("You have signed out. Close the browser if you are on a shared computer.")
TITLE_SIGNOUT, TITLE_SIGNED_OUT = N_("Sign out"), N_("Signed out")


def _unverified_claims(token: str) -> dict[str, object]:
    """Only to pick which IdP's keys verify the token; nothing here is trusted."""
    try:
        payload = json.loads(jws.extract_compact(token.encode("ascii")).payload)
    except (JoseError, ValueError, UnicodeError):
        raise OidcError("token-malformed") from None
    return payload if isinstance(payload, dict) else {}


class Logout(FederationBase):
    def _issuer_match(self, token: str) -> IdentityProvider:
        claims = _unverified_claims(token)
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        known = [i for i in self.config().identity_providers if i.issuer == claims.get("iss")]
        for idp in known:
            if idp.client_id in audiences:
                return idp
        raise OidcError("wrong-audience" if known else "wrong-issuer")

    async def backchannel(self, request: Request) -> Response:
        if request.method != "POST":
            return json_response({"error": "invalid_request"}, 405, [("Allow", "POST")])
        token = request.form().get("logout_token", "")
        idp_id = ""
        try:
            if len(request.body) > self.config().limits.max_form_bytes or not token:
                raise OidcError("token-malformed")
            idp = self._issuer_match(token)
            idp_id = idp.id
            now = self.clock()

            async def key_for(kid: str, kty: str) -> Key:
                return await self.cache.key(idp, kid, kty)

            claims = await validate_logout_token(
                token, issuer=idp.issuer, client_id=idp.client_id, algorithms=idp.algorithms,
                key_for=key_for, now=now)
            fresh = await asyncio.to_thread(
                store.use_once, self.engine, "jti", f"{idp.id}:{claims.jti}", now=now,
                expires_at=now + timedelta(seconds=2 * (MAX_TOKEN_AGE + CLOCK_SKEW)))
            if not fresh:
                raise OidcError("jti-replay")
            ended, username = await asyncio.to_thread(self._end, idp, claims.sub, claims.sid)
            await self.audit.append(BackchannelLogout(idp=idp.id, user=username,
                                                      sessions=ended,
                                                      source_ip=request.client_ip))
        except OidcError as exc:
            with contextlib.suppress(SekishoError):
                await self.audit.append(OidcRejected(idp=idp_id, reason=exc.code,
                                                     source_ip=request.client_ip))
            return json_response({"error": "invalid_request"}, 400)
        except SekishoError:
            # Storage down: 5xx tells the IdP the logout did not happen (it may retry).
            return json_response({"error": "temporarily_unavailable"}, 503)
        return json_response({}, 200)

    def _end(self, idp: IdentityProvider, sub: str, sid: str) -> tuple[int, str]:
        """Revoke every session the logout names; returns (count, a user name).

        Each link names exactly one session: the one issued at the callback, or the one its
        pending flow became (`SignInFlows.on_session_issued`); other sessions of the same
        user through the same IdP are not touched.
        """
        links = store.links_for_logout(self.engine, idp.id, sub, sid)
        now = self.clock()
        ended = 0
        for link in links:
            if link.session_id:
                ended += self.sessions.revoke_id(link.session_id, "idp-logout")
            elif link.flow_id:
                # Pending second factor: end the flow, so finishing it yields no session.
                ended += login_flows.consume_flow(self.engine, link.flow_id, now)
        store.delete_links(self.engine, [link.id for link in links])
        user = get_user_by_id(self.engine, links[0].user_id) if links else None
        return ended, user.username if user is not None else ""

    # -- RP-initiated logout -------------------------------------------------------------------

    async def signout(self, request: Request) -> Response:
        session = request.session if isinstance(request.session, SessionInfo) else None
        name = session.username if session else ""
        if request.method in ("GET", "HEAD"):
            token, headers = self.pages.issue_csrf(request)
            return self.pages.render(request, "signout.html", TITLE_SIGNOUT, headers=headers,
                                     csrf=token, signed_in_as=name, signout_action=SIGNOUT_PATH)
        if request.method != "POST":
            return self.pages.message(request, TITLE_ERROR, MSG_METHOD, 405,
                                      [("Allow", "GET, POST")])
        if len(request.body) > self.config().limits.max_form_bytes or \
                not self.pages.csrf_ok(request, request.form()):
            token, headers = self.pages.issue_csrf(request)  # forged sign-out (CSRF)
            return self.pages.render(request, "signout.html", TITLE_SIGNOUT, status=403,
                                     error=MSG_CSRF, headers=headers, csrf=token,
                                     signed_in_as=name, signout_action=SIGNOUT_PATH)
        clear = ("Set-Cookie", self.pages.session_cookie(request, "", 0))
        if session is None:
            return self.pages.message(request, TITLE_SIGNED_OUT, MSG_SIGNED_OUT, 200, [clear])
        try:
            link = await asyncio.to_thread(
                store.link_for_session, self.engine, session.session_id) if session.idp \
                else None
            await asyncio.to_thread(self.sessions.revoke_id, session.session_id, "signout")
            await self.audit.append(SignedOut(user=session.username, session=session.short_id,
                                              source_ip=request.client_ip))
            if link is not None:
                await asyncio.to_thread(store.delete_links, self.engine, [link.id])
        except SekishoError:
            return self.unavailable(request)
        location = await self._end_session_url(request, session, link)
        if location is None:
            return self.pages.message(request, TITLE_SIGNED_OUT, MSG_SIGNED_OUT, 200, [clear])
        return Response(303, [("Location", location), ("Cache-Control", "no-store"), clear])

    async def _end_session_url(self, request: Request, session: SessionInfo,
                               link: store.SessionLink | None) -> str | None:
        idp = self.idp(session.idp) if session.idp else None
        if idp is None:
            return None
        try:
            metadata = await self.cache.metadata(idp)
        except OidcError:
            return None  # the IdP is down: the Sekisho session is ended all the same
        if not metadata.end_session_endpoint:
            return None
        params = {"client_id": idp.client_id,
                  "post_logout_redirect_uri": self.origin(request) + SIGNED_OUT_PATH}
        if link is not None and link.id_token:
            params["id_token_hint"] = link.id_token
        endpoint = metadata.end_session_endpoint
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    async def signed_out(self, request: Request) -> Response:
        clear = ("Set-Cookie", self.pages.session_cookie(request, "", 0))
        return self.pages.message(request, TITLE_SIGNED_OUT, MSG_SIGNED_OUT, 200, [clear])
