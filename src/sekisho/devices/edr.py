"""The EDR webhook `POST /.sekisho/hooks/edr`: an EDR/XDR product reports a compromised device.

The sender signs `timestamp + "." + raw body` with HMAC-SHA256 under the shared key from
`hooks.edr.secret` and sends `X-Sekisho-Timestamp` (unix seconds) and `X-Sekisho-Signature:
sha256=<hex>`. `verify()` is the pure check: the digest is compared in constant time
(`hmac.compare_digest`, against a timing oracle that would reveal the right signature byte by
byte), and a timestamp more than `MAX_SKEW` seconds from now is refused, so a captured
request cannot be replayed later; within the window the single-use `event_id` (the primary
key of `edr_events`) stops a replay. The timestamp is inside the signed string, so it cannot
be refreshed without the key.

An accepted event suspends the device (its certificate goes on the CRL as certificateHold)
and revokes every session of its user in one transaction (`storage.edr`), evicts both from
this process's caches at once, and is audited (`device.compromised`). Other worker processes
learn it from the change feed within a second (`session.cache_ttl`, default 1 s, bounds the
delay only while the feed cannot be read). Without `hooks.edr` the path answers 404.
Every answer is JSON `{error, message}` or `{status, ...}`; refusals are audited.

Failed calls — a missing, malformed or wrong signature, a stale timestamp, a replayed event
id — are throttled per source address (key `edr-ip:<ip>`, the sign-in throttle with
`throttle.ip_max_failures`) against online probing of the endpoint. A correctly signed new
event is acted on even from a throttled address: otherwise anyone sharing the EDR's address
(its vendor's cloud egress, a NAT, a proxy not listed in `trusted_proxies`) could lock the
real alerts out with a few bad calls and keep a compromised device connected.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sekisho.audit.events import DeviceCompromised, EdrHookRefused, SessionRevoked
from sekisho.errors import SekishoError, StorageError
from sekisho.storage import edr as store
from sekisho.storage.devices import DeviceNotFound
from sekisho.web import Handler, Request, Response, json_response

if TYPE_CHECKING:  # extensions.BUILDERS lists this module: no import cycle at run time
    from sekisho.identity.extensions import IdentityContext

HOOK_PATH = "/.sekisho/hooks/edr"
TIMESTAMP_HEADER = "x-sekisho-timestamp"
SIGNATURE_HEADER = "x-sekisho-signature"
MAX_SKEW = 300.0  # seconds either way: older is a replay, newer a request signed in advance
MAX_BODY = 8 * 1024
_DEVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_EVENT_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
_MAX_REASON = 100


def edr_ip_key(address: str) -> str:
    return "edr-ip:" + address[:64]


class EdrRefused(SekishoError):
    """The webhook call was refused; `code` is the machine reason, `status` the HTTP status."""

    code = "signature-invalid"
    status = 401

    def __init__(self, description: str, *, code: str, status: int = 401) -> None:
        super().__init__(description, code=code)
        self.status = status


@dataclass(frozen=True, slots=True)
class EdrEvent:
    device_id: str
    reason: str
    event_id: str


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `X-Sekisho-Signature` value for a timestamp and body (what the sender computes)."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str | None, signature: str | None, body: bytes, *,
           now: float, max_skew: float = MAX_SKEW) -> None:
    """Raise `EdrRefused` unless the signature is right and the timestamp is fresh."""
    if not timestamp or not signature:
        raise EdrRefused("署名または時刻のヘッダーがありません / missing "
                         "X-Sekisho-Timestamp or X-Sekisho-Signature", code="signature-missing")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise EdrRefused("時刻の形式が不正です / X-Sekisho-Timestamp must be unix seconds",
                         code="timestamp-invalid")
    expected = sign(secret, timestamp, body)
    # Constant time: a byte-by-byte compare would let an attacker learn the MAC (timing oracle).
    if not hmac.compare_digest(expected.encode("ascii"),
                               signature.strip().lower().encode("utf-8", "replace")):
        raise EdrRefused("署名が一致しません / signature mismatch", code="signature-invalid")
    if abs(now - int(timestamp)) > max_skew:
        raise EdrRefused("時刻が古すぎるか未来です / timestamp outside the allowed window "
                         f"(±{int(max_skew)} s)", code="timestamp-stale")


def parse_event(body: bytes) -> EdrEvent:
    """The JSON body `{device_id, reason, event_id}`; raises `EdrRefused` (400)."""
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise EdrRefused("JSON オブジェクトが必要です / a JSON object is required",
                         code="request-invalid", status=400)
    device_id, reason, event_id = (data.get(k) for k in ("device_id", "reason", "event_id"))
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise EdrRefused("device_id が不正です / invalid device_id", code="request-invalid",
                         status=400)
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise EdrRefused("event_id が不正です / invalid event_id (1-128 printable ASCII)",
                         code="request-invalid", status=400)
    if not isinstance(reason, str) or len(reason) > _MAX_REASON or not reason.isprintable():
        raise EdrRefused(f"reason が不正です / invalid reason (at most {_MAX_REASON} "
                         "printable characters)", code="request-invalid", status=400)
    return EdrEvent(device_id, reason.strip() or "unspecified", event_id)


def build_handlers(context: IdentityContext) -> Mapping[str, Handler]:
    """The EDR webhook keyed by its path (an `extensions.BUILDERS` entry)."""
    return {HOOK_PATH: _EdrHook(context).handle}


def _error(code: str, message: str, status: int,
           headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return json_response({"error": code, "message": message}, status, headers)


class _EdrHook:
    def __init__(self, context: IdentityContext) -> None:
        self.ctx = context

    async def handle(self, request: Request) -> Response:
        secret = self.ctx.current_config().hooks.edr_secret
        if secret is None:  # not configured: the endpoint does not exist
            return _error("not-found", "見つかりません / not found", 404)
        if request.method != "POST":
            return _error("method-not-allowed", "POST のみ / POST only", 405,
                          (("Allow", "POST"),))
        if len(request.body) > MAX_BODY:
            return _error("body-too-large", f"本文が大きすぎます / body larger than {MAX_BODY} "
                          "bytes", 413)
        try:
            verify(secret.reveal().encode("utf-8"), request.header(TIMESTAMP_HEADER),
                   request.header(SIGNATURE_HEADER), request.body,
                   now=self.ctx.clock().timestamp())
        except EdrRefused as exc:  # not from the key holder: counted against the address
            throttled = await self._count_failure(request)
            return throttled or await self._refused(exc.code, exc.description, exc.status,
                                                    request)
        try:
            event = parse_event(request.body)
        except EdrRefused as exc:  # signed, so the EDR's own mistake: audited, not counted
            return await self._refused(exc.code, exc.description, exc.status, request)
        reason = "edr:" + event.reason
        try:
            done = await asyncio.to_thread(
                store.mark_compromised, self.ctx.engine, event_id=event.event_id,
                device_id=event.device_id, reason=reason, now=self.ctx.clock())
        except DeviceNotFound:
            return await self._refused("device-not-found", "端末が見つかりません / no such "
                                       f"device: {event.device_id}", 404, request)
        except StorageError as exc:
            return _error("storage-unavailable", exc.description, 503)
        if done is None:
            # A replay (a captured call sent again within the time window) or the sender's
            # retry: nothing is done again, and it counts as a failure of the address.
            throttled = await self._count_failure(request)
            return throttled or json_response({"status": "already-processed",
                                               "event_id": event.event_id,
                                               "message": "処理済みです / already processed"})
        self.ctx.sessions.evict(done.session_ids)
        if self.ctx.device_trust is not None:
            self.ctx.device_trust.evict(done.device_id)
        await self.ctx.audit.append(DeviceCompromised(
            device=done.device_id, user=done.username, reason=reason, event_id=event.event_id,
            sessions_revoked=len(done.session_ids), source_ip=request.client_ip))
        for session_id in done.session_ids:
            await self.ctx.audit.append(SessionRevoked(
                admin="edr", session=session_id[:12], user=done.username, reason=reason))
        return json_response({"status": "suspended", "device_id": done.device_id,
                              "sessions_revoked": len(done.session_ids),
                              "already_suspended": not done.suspended})

    async def _count_failure(self, request: Request) -> Response | None:
        """Count a failed call against its address; a 429 answer while the address is locked.

        A throttled call is refused without being counted (the lock runs its course) and
        audited as `throttled`, as sign-in does.
        """
        settings = self.ctx.current_config().throttle  # `edr-ip:`: the address limit
        key = [edr_ip_key(request.client_ip)]
        throttle = self.ctx.throttle
        try:
            verdict = await asyncio.to_thread(throttle.check_keys, key, settings)
            if verdict.allowed:
                locked = await asyncio.to_thread(throttle.record_failure_keys, key,
                                                 request.client_ip, settings)
        except StorageError as exc:  # cannot count: refuse rather than let probing run free
            return _error("storage-unavailable", exc.description, 503)
        if not verdict.allowed:
            await self.ctx.audit.append(EdrHookRefused(reason="throttled",
                                                       source_ip=request.client_ip))
            return _error("throttled", "失敗が多すぎます。しばらく待ってください / too many "
                          "failed calls, try again later", 429,
                          (("Retry-After", str(max(1, round(verdict.retry_after)))),))
        for event in locked:
            await self.ctx.audit.append(event)
        return None

    async def _refused(self, code: str, message: str, status: int,
                       request: Request) -> Response:
        await self.ctx.audit.append(EdrHookRefused(reason=code, source_ip=request.client_ip))
        return _error(code, message, status)
