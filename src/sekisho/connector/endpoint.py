"""First contact: `POST /.sekisho/connector/enrol` on the connector listener, without a
client certificate.

Request JSON `{token, csr, name}`; answer JSON `{connector_id, site, certificate, chain,
not_after}`, or `{error, message}` with a stable code. It is the only thing a connection
without a client certificate may do on the listener: one request, then close. Limits: the
request head and body together at most `MAX_REQUEST` bytes, read within `TIMEOUT` seconds
(a slow or huge request cannot hold the master's memory). The token is the credential (160
random bits, single use, expiring, bound to its site): online guessing is hopeless, and
every wrong token is logged with the source address. The enrolment is audited (durable)
before the certificate is sent; if the audit log cannot take it, the answer is 503 and the
agent retries with a new token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httptools

from sekisho.connector import enrolment
from sekisho.devices.ca import CaError, CertificateAuthority, load_ca
from sekisho.errors import SekishoError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from sekisho.services import AuditSink

log = logging.getLogger("sekisho.connector.enrol")

PATH = "/.sekisho/connector/enrol"
MAX_REQUEST = 32 * 1024
TIMEOUT = 10.0
PASSPHRASE_ENV = "SEKISHO_CA_PASSPHRASE"  # noqa: S105 (the variable's name, not a secret)


class _Request:
    """httptools callbacks collecting one request."""

    def __init__(self) -> None:
        self.url = b""
        self.body = bytearray()
        self.complete = False
        self.content_type = b""
        self._header = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value.split(b";")[0].strip().lower()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class Enrolment:
    """The endpoint: the broker hands it every connection that shows no certificate."""

    def __init__(self, engine: Engine, audit: AuditSink, ca_dir: Path, *,
                 certificate_days: int = 365,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.engine = engine
        self.audit = audit
        self.ca_dir = ca_dir
        self.certificate_days = certificate_days
        self.clock = clock

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    source_ip: str) -> None:
        try:
            status, body = await asyncio.wait_for(self._handle(reader, source_ip), TIMEOUT)
        except TimeoutError:
            status, body = 408, _error("connector-request", "要求が遅すぎます / request timeout")
        payload = json.dumps(body, ensure_ascii=False).encode()
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode()
        try:
            writer.write(head + payload)
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, source_ip: str
                      ) -> tuple[int, dict[str, Any]]:
        request = _Request()
        parser = httptools.HttpRequestParser(request)
        received = 0
        while not request.complete:
            data = await reader.read(8192)
            received += len(data)
            if not data:
                return 400, _error("connector-request", "要求が途中で終わりました / truncated")
            if received > MAX_REQUEST:
                return 413, _error("connector-request", "要求が大きすぎます / too large")
            try:
                parser.feed_data(data)
            except httptools.HttpParserError:
                return 400, _error("connector-request", "HTTP を読めません / malformed HTTP")
        if parser.get_method() != b"POST" or request.url != PATH.encode():
            return 404, _error("not-found", "登録のみ受け付けます / only enrolment is served here "
                               f"(POST {PATH})")
        if request.content_type != b"application/json":
            return 400, _error("connector-request", "JSON で送ってください / send JSON")
        try:
            fields = _fields(bytes(request.body))
        except enrolment.EnrolmentError as exc:
            return 400, _error(exc.code, exc.description)
        try:
            ca = await asyncio.to_thread(self._ca)
        except CaError as exc:
            return 503, _error(exc.code, "CA を使えません / the CA is unavailable: "
                               + exc.description)
        try:
            cert, chain, connector, event = await asyncio.to_thread(
                lambda: enrolment.enrol(
                    self.engine, ca, fields["token"], fields["csr"].encode("ascii"),
                    name=fields["name"], source_ip=source_ip, days=self.certificate_days,
                    now=self.clock()))
        except enrolment.EnrolmentError as exc:
            log.warning("connector enrolment refused", extra={"fields": {
                "code": exc.code, "peer": source_ip}})
            return (403 if exc.code == "connector-token-invalid" else 400,
                    _error(exc.code, exc.description))
        except CaError as exc:  # the CSR was refused (signature, key type, size)
            return 400, _error(exc.code, exc.description)
        try:
            await self.audit.append(event)
        except SekishoError as exc:
            # Fail closed: a connector whose enrolment is not on record gets no certificate.
            # The row stays (the token is spent): the admin revokes it and issues a new token.
            log.error("connector enrolment not audited; certificate withheld",
                      extra={"fields": {"connector": connector.connector_id,
                                        "error": str(exc)}})
            return 503, _error(exc.code, "監査ログに記録できません / the audit log is unavailable")
        log.info("connector enrolled", extra={"fields": {
            "connector": connector.connector_id, "site": connector.site, "peer": source_ip}})
        return 200, {"connector_id": connector.connector_id, "site": connector.site,
                     "certificate": cert, "chain": chain,
                     "not_after": connector.cert_not_after.isoformat()}

    def _ca(self) -> CertificateAuthority:
        passphrase = os.environ.get(PASSPHRASE_ENV)
        return load_ca(self.ca_dir, passphrase.encode() if passphrase else None)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": code, "message": message}


def _fields(body: bytes) -> dict[str, str]:
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise enrolment.EnrolmentError("JSON オブジェクトが必要です / a JSON object is required",
                                       code="connector-request")
    result: dict[str, str] = {}
    for name, limit in (("token", 128), ("csr", 16 * 1024), ("name", enrolment.MAX_NAME)):
        value = data.get(name)
        if not isinstance(value, str) or not value or len(value) > limit or (
                name != "name" and not value.isascii()):
            raise enrolment.EnrolmentError(f"{name} が不正です / invalid or missing field: "
                                           f"{name}", code="connector-request")
        result[name] = value
    return result
