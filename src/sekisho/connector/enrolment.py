"""Connector enrolment: one-time tokens, the connector's certificate, revocation.

Rule: the token is the only credential an agent shows at first contact, so it is random
(160 bits), shown once, stored as its SHA-256, bound to one site, expiring, and spent in the
same transaction that records the connector (`storage.connectors`): a token read over a
shoulder or replayed after use enrols nothing. The connector id is chosen here, never by
the agent, and only the CSR's public key reaches the certificate. A connector certificate
names the connector (SAN `urn:sekisho:connector:<id>`) and carries no device URN, so it can
never pass as a device certificate at the gateway's HTTPS listener (and a device
certificate, lacking the connector URN and registry row, never opens a tunnel).

Functions are synchronous (database and signing); the audit events they imply are built
here and appended by the caller (CLI, admin API or broker) after the change.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine

from sekisho.audit.events import ConnectorEnrolled, ConnectorRevoked, ConnectorTokenCreated
from sekisho.devices.ca import CertificateAuthority, issue_client_certificate
from sekisho.errors import SekishoError
from sekisho.storage import connectors as store
from sekisho.storage.connectors import Connector

CONNECTOR_URN = "urn:sekisho:connector:"
TOKEN_PREFIX = "skc_"  # noqa: S105 (a prefix that makes a leaked token recognisable)
MAX_NAME = 128
_SITE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class EnrolmentError(SekishoError):
    """The token is unknown, spent or expired, or the request is malformed."""

    code = "connector-enrolment-invalid"
    status = 400


def token_hash(token: str) -> str:
    return hashlib.sha256(token.strip().encode("utf-8", "replace")).hexdigest()


def check_site(site: str) -> str:
    if not _SITE.match(site):
        raise EnrolmentError("サイト名は英小文字・数字・- の 63 文字以内です / the site must be "
                             "lower-case letters, digits and '-', at most 63",
                             code="connector-site")
    return site


def create_token(engine: Engine, site: str, admin: str, ttl: timedelta, *, max_days: int = 30,
                 now: datetime | None = None) -> tuple[str, ConnectorTokenCreated]:
    """A fresh one-time token for a connector of `site`: (token shown once, audit event)."""
    moment = _now(now)
    check_site(site)
    if not timedelta(minutes=1) <= ttl <= timedelta(days=max_days):
        raise EnrolmentError(f"有効期間は 1 分〜{max_days} 日です / the token's life must be "
                             f"1 minute to {max_days} days", code="connector-token-ttl")
    token = TOKEN_PREFIX + secrets.token_urlsafe(20)
    digest = token_hash(token)
    store.insert_token(engine, token_hash=digest, site=site, created_by=admin, now=moment,
                       expires_at=moment + ttl)
    return token, ConnectorTokenCreated(admin=admin, site=site, token=digest[:8],
                                        expires_at=(moment + ttl).isoformat())


def issue_certificate(ca: CertificateAuthority, csr_pem: bytes, *, connector_id: str,
                      site: str, days: int, now: datetime) -> x509.Certificate:
    """Sign a connector certificate for the CSR's key; nothing else is taken from the CSR."""
    return issue_client_certificate(
        ca, csr_pem, common_name=connector_id,
        extra_names=[x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"connector {site}")],
        uris=[CONNECTOR_URN + connector_id], days=days, now=now)


def enrol(engine: Engine, ca: CertificateAuthority, token: str, csr_pem: bytes, *,
          name: str, source_ip: str, days: int = 365, now: datetime | None = None,
          ) -> tuple[str, str, Connector, ConnectorEnrolled]:
    """Spend `token`; (certificate PEM, chain PEM, the connector, its audit event)."""
    moment = _now(now)
    clean = " ".join(name.split())
    if not 1 <= len(clean) <= MAX_NAME or not clean.isprintable():
        raise EnrolmentError("コネクタ名は 1〜128 文字です / the connector name must be 1-128 "
                             "printable characters", code="connector-name")
    digest = token_hash(token)
    record = store.load_token(engine, digest)
    if record is None or record.used_at is not None or record.expires_at <= moment:
        raise _invalid_token()
    connector_id = "con-" + secrets.token_hex(8)
    # Issued before the token is spent so a bad CSR does not burn it; the certificate is
    # handed out only if the conditional UPDATE below wins (token replay, racing agents).
    cert = issue_certificate(ca, csr_pem, connector_id=connector_id, site=record.site,
                             days=days, now=moment)
    serial = f"{cert.serial_number:x}"
    if not store.consume_token_and_add_connector(
            engine, token_hash=digest, now=moment, connector_id=connector_id,
            site=record.site, name=clean, cert_serial=serial,
            cert_not_after=cert.not_valid_after_utc):
        raise _invalid_token()
    pem = serialization.Encoding.PEM
    chain = (ca.intermediate.public_bytes(pem) + ca.root.public_bytes(pem)).decode("ascii")
    connector = store.require_connector(engine, connector_id)
    event = ConnectorEnrolled(connector=connector_id, site=record.site, name=clean,
                              serial=serial, token=digest[:8], source_ip=source_ip)
    return cert.public_bytes(pem).decode("ascii"), chain, connector, event


def revoke(engine: Engine, connector_id: str, *, admin: str, now: datetime | None = None,
           ) -> tuple[Connector, ConnectorRevoked | None]:
    """Revoke a connector; the event is None when it already was revoked."""
    changed = store.revoke(engine, connector_id, now=_now(now))
    connector = store.require_connector(engine, connector_id)
    if not changed:
        return connector, None
    return connector, ConnectorRevoked(admin=admin, connector=connector_id, site=connector.site)


def connector_id_of(cert: x509.Certificate) -> str | None:
    """The connector id a certificate names in its SAN, or None (e.g. a device certificate)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    found = [uri[len(CONNECTOR_URN):] for uri in
             names.get_values_for_type(x509.UniformResourceIdentifier)
             if uri.startswith(CONNECTOR_URN)]
    return found[0] if len(found) == 1 else None


def _invalid_token() -> EnrolmentError:
    # One answer for unknown, spent and expired tokens: the endpoint tells a guesser nothing.
    return EnrolmentError("登録トークンが無効です (誤り・使用済み・期限切れ) / the enrolment token "
                          "is invalid, already used or expired", code="connector-token-invalid")


def _now(now: datetime | None) -> datetime:
    return (datetime.now(UTC) if now is None else now).astimezone(UTC)
