"""The device endpoints under `/.sekisho/devices/`: enrolment and the CRL (a BUILDERS entry).

`POST /.sekisho/devices/enroll` takes JSON `{code, csr, name, inventory_id}` and answers JSON
`{device_id, certificate, chain, not_after}`; errors are JSON `{error, message}` with a
stable code. No session is needed: the one-time code is the credential, so wrong codes are
throttled per source address (key `enrol-ip:<ip>`, locked after `throttle.ip_max_failures`)
against online guessing. `GET
/.sekisho/devices/crl.pem` serves the current CRL. The CA is read from `devices.ca.ca_directory`
(`tls.client_ca_dir`, else `<data_dir>/ca`: the one the mTLS listener trusts) with the
passphrase from `$SEKISHO_CA_PASSPHRASE`; without a CA both answer 503 (fail closed).
`POST /.sekisho/devices/posture` takes a signed posture report `{report, signature,
certificate}` (checked by `devices.intake`: chain, registry, signature, freshness, nonce) and
answers `{device_id, profile, failed_checks}`; it needs only the CA certificates, not the key.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sekisho.audit.events import PostureReported
from sekisho.devices import enrolment, intake
from sekisho.devices.ca import CaError, CaPaths, CertificateAuthority, ca_directory, load_ca
from sekisho.devices.enrolment import EnrolmentError
from sekisho.devices.posture import PostureError
from sekisho.errors import StorageError
from sekisho.storage.posture import PostureReplayed
from sekisho.web import Handler, Request, Response, json_response

if TYPE_CHECKING:  # extensions.BUILDERS lists this module: no import cycle at run time
    from sekisho.identity.extensions import IdentityContext

ENROL_PATH = "/.sekisho/devices/enroll"
CRL_PATH = "/.sekisho/devices/crl.pem"
POSTURE_PATH = "/.sekisho/devices/posture"
PASSPHRASE_ENV = "SEKISHO_CA_PASSPHRASE"  # noqa: S105 (the variable's name, not a secret)
_MAX_FIELD = 256


def enrol_ip_key(address: str) -> str:
    return "enrol-ip:" + address[:64]


class _CaCache:
    """The loaded CA, reloaded when a CA file changes (decrypting the key is slow on purpose)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stamp: tuple[object, ...] | None = None
        self._ca: CertificateAuthority | None = None

    def get(self, directory: Path) -> CertificateAuthority:
        paths = CaPaths.of(directory)
        try:
            stamp: tuple[object, ...] = (str(directory), *(
                (p.stat().st_mtime_ns, p.stat().st_size) for p in
                (paths.root_cert, paths.intermediate_cert, paths.intermediate_key)))
        except OSError:
            raise CaError(f"CA がありません / no CA in {directory} (sekisho ca init)",
                          code="ca-missing") from None
        with self._lock:
            if self._ca is None or stamp != self._stamp:
                passphrase = os.environ.get(PASSPHRASE_ENV)
                self._ca = load_ca(directory, passphrase.encode() if passphrase else None)
                self._stamp = stamp
            return self._ca


def build_handlers(context: IdentityContext) -> Mapping[str, Handler]:
    """The device handlers keyed by exact path (an `extensions.BUILDERS` entry)."""
    endpoints = _DeviceEndpoints(context)
    return {ENROL_PATH: endpoints.enroll, CRL_PATH: endpoints.crl,
            POSTURE_PATH: endpoints.posture}


def _error(code: str, message: str, status: int,
           headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return json_response({"error": code, "message": message}, status, headers)


class _DeviceEndpoints:
    def __init__(self, context: IdentityContext) -> None:
        self.ctx = context
        self.cache = _CaCache()

    def _ca_dir(self) -> Path:
        return ca_directory(self.ctx.current_config())

    async def enroll(self, request: Request) -> Response:
        if request.method != "POST":
            return _error("method-not-allowed", "POST のみ / POST only", 405,
                          (("Allow", "POST"),))
        settings = self.ctx.current_config().throttle  # `enrol-ip:`: the address limit
        key = enrol_ip_key(request.client_ip)
        verdict = await asyncio.to_thread(self.ctx.throttle.check_keys, [key], settings)
        if not verdict.allowed:
            return _error("throttled", "試行が多すぎます。しばらく待ってください / too many "
                          "attempts, try again later", 429,
                          (("Retry-After", str(max(1, round(verdict.retry_after)))),))
        try:
            fields = _fields(request)
        except EnrolmentError as exc:
            return _error(exc.code, exc.description, 400)
        try:
            ca = await asyncio.to_thread(self.cache.get, self._ca_dir())
        except CaError as exc:
            return _error(exc.code, "端末 CA を使えません / the device CA is unavailable: "
                          + exc.description, 503)
        clock = self.ctx.clock
        try:
            cert, chain, device = await asyncio.to_thread(
                lambda: enrolment.enrol(
                    self.ctx.engine, ca, fields["code"], fields["csr"].encode("ascii"),
                    device_name=fields["name"], inventory_id=fields["inventory_id"],
                    now=clock()))
        except EnrolmentError as exc:
            if exc.code == "enrolment-code-invalid":
                locked = await asyncio.to_thread(self.ctx.throttle.record_failure_keys, [key],
                                                 request.client_ip, settings)
                for event in locked:
                    await self.ctx.audit.append(event)
            return _error(exc.code, exc.description, 403 if exc.code.startswith(
                ("enrolment-code", "enrolment-user")) else 400)
        except CaError as exc:  # the CSR was refused (signature, key type, size)
            return _error(exc.code, exc.description, 400)
        await self.ctx.audit.append(
            enrolment.enrolled_event(device, fields["code"], request.client_ip))
        return json_response({
            "device_id": device.device_id, "certificate": cert, "chain": chain,
            "not_after": device.cert_not_after.isoformat(), "user": device.username,
        })

    async def posture(self, request: Request) -> Response:
        if request.method != "POST":
            return _error("method-not-allowed", "POST のみ / POST only", 405, (("Allow", "POST"),))
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return _error("posture-request", "JSON で送ってください / send application/json", 400)
        ctx = self.ctx
        config = ctx.current_config()
        now = ctx.clock()
        try:
            accepted = await asyncio.to_thread(
                intake.accept, ctx.engine, self._ca_dir(), request.body, config.devices, now)
        except CaError as exc:
            return _error(exc.code, "端末 CA を使えません / the device CA is unavailable: "
                          + exc.description, 503)
        except PostureReplayed as exc:
            return _error(exc.code, exc.description, 409)
        except PostureError as exc:
            return _error(exc.code, exc.description, 400 if exc.code == "posture-request" else 403)
        except StorageError as exc:
            return _error(exc.code, exc.description, 503)
        device, report = accepted.device, accepted.report
        trust = getattr(ctx, "device_trust", None)
        if trust is not None:
            trust.evict(device.device_id)  # this process sees the new profile at once
        await ctx.audit.append(PostureReported(
            device=device.device_id, user=device.username, profile=accepted.profile,
            failed=",".join(accepted.failed),
            os=f"{report.os_name} {report.os_version}".strip()[:128],
            source_ip=request.client_ip))
        return json_response({"device_id": device.device_id, "profile": accepted.profile,
                              "failed_checks": list(accepted.failed)})

    async def crl(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _error("method-not-allowed", "GET のみ / GET only", 405,
                          (("Allow", "GET, HEAD"),))
        try:
            ca = await asyncio.to_thread(self.cache.get, self._ca_dir())
            body = await asyncio.to_thread(
                enrolment.current_crl, self.ctx.engine, ca, now=self.ctx.clock())
        except CaError as exc:
            return _error(exc.code, "端末 CA を使えません / the device CA is unavailable: "
                          + exc.description, 503)
        return Response(200, [("Content-Type", "application/x-pem-file"),
                              ("Cache-Control", "no-store")],
                        b"" if request.method == "HEAD" else body)


def _fields(request: Request) -> dict[str, str]:
    content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise EnrolmentError("JSON で送ってください / send application/json",
                             code="enrolment-request")
    try:
        data: Any = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise EnrolmentError("JSON を読めません / malformed JSON",
                             code="enrolment-request") from None
    if not isinstance(data, dict):
        raise EnrolmentError("JSON オブジェクトが必要です / a JSON object is required",
                             code="enrolment-request")
    result: dict[str, str] = {}
    for name, required, limit in (("code", True, _MAX_FIELD), ("csr", True, 16 * 1024),
                                  ("name", True, _MAX_FIELD), ("inventory_id", False, 64)):
        value = data.get(name, "")
        if not isinstance(value, str) or len(value) > limit or (required and not value):
            raise EnrolmentError(f"{name} が不正です / invalid or missing field: {name}",
                                 code="enrolment-request")
        if name == "csr" and not value.isascii():
            raise EnrolmentError("CSR は PEM です / the CSR must be PEM",
                                 code="enrolment-request")
        result[name] = value
    return result
