"""Passkey ceremonies: registration and assertion options and their verification.

The `webauthn` package checks the cryptography (client data type, challenge, origin, RP ID
hash, flags, signature, attestation); this module adds what only the server can know:
- the challenge is server-side, random, single use, short-lived and bound to the pending
  sign-in flow, the session or the browser that asked for it (`storage.webauthn`);
- the origin must be one the administrator listed, or `https://<host>[:listen port]` of the
  route host or portal host (`portal.host`) being visited (phishing: an assertion made for
  another site never verifies);
- the credential must belong to the expected user, and its user handle must match;
- the signature counter must grow (cloned authenticator), checked atomically in storage.
User handles are HMAC(installation secret, user id): stable, opaque, and no personal data.
Everything here is synchronous (call from a thread); the pages live in `passkey_pages`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import webauthn
from sqlalchemy import Engine
from webauthn.helpers import bytes_to_base64url, parse_client_data_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.parse_authentication_credential_json import (
    parse_authentication_credential_json,
)
from webauthn.helpers.parse_registration_credential_json import (
    parse_registration_credential_json,
)
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from sekisho.config.model import Config
from sekisho.config.webauthn import origin_in_rp
from sekisho.storage import webauthn as store
from sekisho.storage.webauthn import CredentialRecord

CHALLENGE_LIFETIME = 180.0  # seconds between the page and the authenticator's answer
TIMEOUT_MS = 120_000
MAX_CREDENTIAL_JSON = 16 * 1024
_ERRORS = (WebAuthnException, ValueError, TypeError, KeyError)


@dataclass(frozen=True, slots=True)
class RelyingParty:
    id: str
    name: str
    origins: tuple[str, ...]


def _host_origins(config: Config, host: str) -> list[str]:
    ports = sorted({listen.port for listen in config.server.listen} - {443})
    return [f"https://{host}", *(f"https://{host}:{port}" for port in ports)]


def relying_party(config: Config, host: str) -> RelyingParty | None:
    """The RP for a page served on `host`, or None when passkeys are not offered there.

    Without `webauthn.rp_id` the RP ID is the visited route or portal host itself and only
    its own origins are accepted; any other host (a raw IP, a forged Host header) gets none.
    With `rp_id` but no `origins`, the origins are those of the route and portal hosts
    within `rp_id`.
    """
    settings = config.webauthn
    # The portal host serves the sign-in pages without being any route's host.
    hosts = {route.host for route in config.routes} | ({config.portal.host} - {""})
    host = host.lower()
    if settings.rp_id:
        if host != settings.rp_id and not host.endswith("." + settings.rp_id):
            return None
        origins = list(settings.origins) or [
            origin for route_host in sorted(hosts) for origin in _host_origins(config, route_host)
            if origin_in_rp(origin, settings.rp_id)]
        return RelyingParty(settings.rp_id, settings.rp_name, tuple(origins))
    if host not in hosts:
        return None
    return RelyingParty(host, settings.rp_name, tuple(_host_origins(config, host)))


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of verifying a browser's answer; `reason` is "" on success."""

    reason: str
    credential: CredentialRecord | None = None
    user_verified: bool = False
    received_count: int = 0

    @property
    def ok(self) -> bool:
        return not self.reason


def binding_of(kind: str, value: str) -> str:
    """What a challenge is bound to: "flow", "session" or "browser" plus its secret value."""
    return hashlib.sha256(f"{kind}|{value}".encode()).hexdigest()


class Passkeys:
    """Options and verification over the credential and challenge rows."""

    def __init__(self, engine: Engine, installation_secret: bytes,
                 clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._handle_key = hashlib.sha256(b"sekisho webauthn user handle|"
                                          + installation_secret).digest()
        self._clock = clock

    def user_handle(self, user_id: int) -> bytes:
        return hmac.new(self._handle_key, str(user_id).encode(), hashlib.sha256).digest()

    def enrolled(self, engine: Engine, user_id: int) -> bool:
        return store.has_credentials(engine, user_id)

    def _challenge(self, purpose: str, binding: str, user_id: int | None) -> bytes:
        challenge = secrets.token_bytes(32)
        now = self._clock()
        store.create_challenge(
            self._engine, challenge_id=hashlib.sha256(challenge).hexdigest(), purpose=purpose,
            binding=binding, user_id=user_id, now=now,
            expires_at=now + timedelta(seconds=CHALLENGE_LIFETIME))
        return challenge

    def _take(self, client_data_json: bytes, purpose: str,
              binding: str) -> tuple[bytes, int | None] | None:
        challenge = parse_client_data_json(client_data_json).challenge
        taken, user_id = store.take_challenge(
            self._engine, challenge_id=hashlib.sha256(challenge).hexdigest(), purpose=purpose,
            binding=binding, now=self._clock())
        return (challenge, user_id) if taken else None

    # -- registration -----------------------------------------------------------------------

    def registration_options(self, rp: RelyingParty, *, user_id: int, username: str,
                             display_name: str, binding: str, uv_required: bool) -> str:
        existing = store.list_credentials(self._engine, user_id)
        options = webauthn.generate_registration_options(
            rp_id=rp.id, rp_name=rp.name, user_name=username,
            user_id=self.user_handle(user_id), user_display_name=display_name or username,
            challenge=self._challenge("register", binding, user_id), timeout=TIMEOUT_MS,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=_uv(uv_required)),
            # One authenticator, one credential: the browser refuses a second registration.
            exclude_credentials=[_descriptor(c) for c in existing])
        return webauthn.options_to_json(options)

    def verify_registration(self, rp: RelyingParty, *, user_id: int, binding: str,
                            credential_json: str, uv_required: bool, name: str) -> Outcome:
        if len(credential_json) > MAX_CREDENTIAL_JSON:
            return Outcome("malformed")
        try:
            credential = parse_registration_credential_json(_object(credential_json))
            taken = self._take(credential.response.client_data_json, "register", binding)
        except _ERRORS:
            return Outcome("malformed")
        if taken is None or taken[1] != user_id:
            return Outcome("challenge-invalid")
        try:
            verified = webauthn.verify_registration_response(
                credential=credential, expected_challenge=taken[0], expected_rp_id=rp.id,
                expected_origin=list(rp.origins), require_user_verification=uv_required)
        except _ERRORS:
            return Outcome("invalid-registration")
        transports = tuple(str(getattr(t, "value", t))
                           for t in (credential.response.transports or ()))
        row_id = store.add_credential(
            self._engine, user_id=user_id,
            credential_id=bytes_to_base64url(verified.credential_id),
            public_key=bytes_to_base64url(verified.credential_public_key),
            sign_count=verified.sign_count, name=name, transports=transports,
            aaguid=verified.aaguid, user_verified=verified.user_verified,
            backed_up=verified.credential_backed_up, now=self._clock())
        if row_id is None:
            return Outcome("duplicate")
        record = next(c for c in store.list_credentials(self._engine, user_id) if c.id == row_id)
        return Outcome("", record, verified.user_verified, verified.sign_count)

    # -- assertion --------------------------------------------------------------------------

    def authentication_options(self, rp: RelyingParty, *, user_id: int | None, purpose: str,
                               binding: str, uv_required: bool) -> str:
        """For a known user, their credentials; for passwordless, discoverable ones (none)."""
        allowed = [] if user_id is None else [
            _descriptor(c) for c in store.list_credentials(self._engine, user_id)]
        options = webauthn.generate_authentication_options(
            rp_id=rp.id, challenge=self._challenge(purpose, binding, user_id),
            timeout=TIMEOUT_MS, allow_credentials=allowed, user_verification=_uv(uv_required))
        return webauthn.options_to_json(options)

    def verify_assertion(self, rp: RelyingParty, *, credential_json: str, purpose: str,
                         binding: str, uv_required: bool,
                         user_id: int | None = None) -> Outcome:
        """Check an assertion; `user_id` is the expected user (None: passwordless).

        The challenge is consumed together with the counter update (one transaction); a
        refused answer discards it, so each challenge is tried at most once.
        """
        if len(credential_json) > MAX_CREDENTIAL_JSON:
            return Outcome("malformed")
        try:
            credential = parse_authentication_credential_json(_object(credential_json))
            challenge = parse_client_data_json(credential.response.client_data_json).challenge
        except _ERRORS:
            return Outcome("malformed")
        challenge_id = hashlib.sha256(challenge).hexdigest()
        live, owner = store.peek_challenge(self._engine, challenge_id=challenge_id,
                                           purpose=purpose, binding=binding, now=self._clock())
        if not live or owner != user_id:
            return Outcome("challenge-invalid")
        outcome = self._check(rp, credential, challenge, uv_required, user_id)
        if not outcome.ok or outcome.credential is None:
            store.discard_challenge(self._engine, challenge_id)
            return outcome
        reason = store.finish_assertion(
            self._engine, challenge_id=challenge_id, purpose=purpose, binding=binding,
            now=self._clock(), row_id=outcome.credential.id, new_count=outcome.received_count)
        return replace(outcome, reason=reason)

    def _check(self, rp: RelyingParty, credential: Any, challenge: bytes, uv_required: bool,
               user_id: int | None) -> Outcome:
        record = store.find_credential(self._engine, bytes_to_base64url(credential.raw_id))
        if record is None:
            return Outcome("unknown-credential")
        if user_id is not None and record.user_id != user_id:
            return Outcome("unknown-credential")  # another user's passkey: not a proof here
        handle = credential.response.user_handle
        if (user_id is None and not handle) or (
                handle and not hmac.compare_digest(handle, self.user_handle(record.user_id))):
            return Outcome("invalid-assertion", record)
        try:
            # The counter is checked in storage, atomically, so a regression is told apart.
            verified = webauthn.verify_authentication_response(
                credential=credential, expected_challenge=challenge, expected_rp_id=rp.id,
                expected_origin=list(rp.origins),
                credential_public_key=webauthn.base64url_to_bytes(record.public_key),
                credential_current_sign_count=0, require_user_verification=uv_required)
        except _ERRORS:
            return Outcome("invalid-assertion", record)
        return Outcome("", record, verified.user_verified, verified.new_sign_count)


def _uv(required: bool) -> UserVerificationRequirement:
    return (UserVerificationRequirement.REQUIRED if required
            else UserVerificationRequirement.PREFERRED)


def _descriptor(record: CredentialRecord) -> PublicKeyCredentialDescriptor:
    transports = []
    for name in record.transports:
        try:
            transports.append(AuthenticatorTransport(name))
        except ValueError:
            continue  # a transport this library does not know is only a hint
    return PublicKeyCredentialDescriptor(
        id=webauthn.base64url_to_bytes(record.credential_id), transports=transports or None)


def _object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
