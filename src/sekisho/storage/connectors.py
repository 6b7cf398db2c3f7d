"""Rows of the connector registry: enrolled connectors and one-time enrolment tokens.

Tokens are stored only as their SHA-256, so a copy of the database enrols nothing. A token is
spent, and its connector row written, in one transaction whose first statement is a
conditional UPDATE (`used_at IS NULL AND expires_at > now`): of two agents racing with one
token, exactly one gets a row count of 1 (token replay). The rules live in
`connector.enrolment`; this module only reads and writes rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from sekisho.errors import SekishoError, StorageError
from sekisho.storage.models import ConnectorRecord, ConnectorToken
from sekisho.storage.users import utc

STATUSES = ("active", "revoked")


class ConnectorNotFound(SekishoError):
    code = "connector-not-found"
    status = 404


@dataclass(frozen=True, slots=True)
class Connector:
    connector_id: str
    site: str
    name: str
    status: str
    cert_serial: str  # lower-case hex
    cert_not_after: datetime
    enrolled_at: datetime
    last_seen: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_hash: str
    site: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    connector_id: str


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"コネクタの登録情報を読み書きできません / connector registry storage "
                        f"failed: {type(exc).__name__}")


def _opt(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def _connector(row: Any) -> Connector:
    return Connector(
        connector_id=row.connector_id, site=row.site, name=row.name, status=row.status,
        cert_serial=row.cert_serial, cert_not_after=utc(row.cert_not_after),
        enrolled_at=utc(row.enrolled_at), last_seen=_opt(row.last_seen),
        revoked_at=_opt(row.revoked_at))


def insert_token(engine: Engine, *, token_hash: str, site: str, created_by: str,
                 now: datetime, expires_at: datetime) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(insert(ConnectorToken).values(
                token_hash=token_hash, site=site, created_by=created_by[:128], created_at=now,
                expires_at=expires_at, used_at=None, connector_id=""))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def load_token(engine: Engine, token_hash: str) -> TokenRecord | None:
    try:
        with engine.connect() as conn:
            row = conn.execute(select(ConnectorToken.__table__)
                               .where(ConnectorToken.token_hash == token_hash)).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    if row is None:
        return None
    return TokenRecord(token_hash=row.token_hash, site=row.site, created_by=row.created_by,
                       created_at=utc(row.created_at), expires_at=utc(row.expires_at),
                       used_at=_opt(row.used_at), connector_id=row.connector_id)


def consume_token_and_add_connector(
    engine: Engine, *, token_hash: str, now: datetime, connector_id: str, site: str,
    name: str, cert_serial: str, cert_not_after: datetime,
) -> bool:
    """Spend the token and record the connector atomically; False if the token was not usable."""
    try:
        with engine.begin() as conn:
            spent = conn.execute(
                update(ConnectorToken)
                .where(ConnectorToken.token_hash == token_hash, ConnectorToken.site == site,
                       ConnectorToken.used_at.is_(None), ConnectorToken.expires_at > now)
                .values(used_at=now, connector_id=connector_id))
            if spent.rowcount != 1:
                return False
            conn.execute(insert(ConnectorRecord).values(
                connector_id=connector_id, site=site, name=name[:128], status="active",
                cert_serial=cert_serial, cert_not_after=cert_not_after, enrolled_at=now,
                last_seen=None, revoked_at=None))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return True


def get_connector(engine: Engine, connector_id: str) -> Connector | None:
    try:
        with engine.connect() as conn:
            row = conn.execute(select(ConnectorRecord.__table__)
                               .where(ConnectorRecord.connector_id == connector_id)).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return None if row is None else _connector(row)


def require_connector(engine: Engine, connector_id: str) -> Connector:
    found = get_connector(engine, connector_id)
    if found is None:
        raise ConnectorNotFound(f"コネクタ {connector_id!r} はありません / no connector "
                                f"{connector_id!r}")
    return found


def by_serial(engine: Engine, cert_serial: str) -> Connector | None:
    """The connector holding the certificate with this serial (the handshake's lookup)."""
    try:
        with engine.connect() as conn:
            row = conn.execute(select(ConnectorRecord.__table__)
                               .where(ConnectorRecord.cert_serial == cert_serial)).first()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    return None if row is None else _connector(row)


def list_connectors(engine: Engine, site: str | None = None) -> list[Connector]:
    query = select(ConnectorRecord.__table__).order_by(ConnectorRecord.site,
                                                        ConnectorRecord.enrolled_at)
    if site is not None:
        query = query.where(ConnectorRecord.site == site)
    try:
        with engine.connect() as conn:
            return [_connector(row) for row in conn.execute(query)]
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def active_among(engine: Engine, connector_ids: Iterable[str]) -> set[str]:
    """Which of these connectors are still active (the broker's revocation sweep)."""
    wanted = list(connector_ids)
    if not wanted:
        return set()
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(ConnectorRecord.connector_id).where(
                ConnectorRecord.connector_id.in_(wanted), ConnectorRecord.status == "active"))
            return {row.connector_id for row in rows}
    except SQLAlchemyError as exc:
        raise _fail(exc) from None


def revoke(engine: Engine, connector_id: str, *, now: datetime) -> bool:
    """Mark revoked; False when it already was (nothing changed)."""
    try:
        with engine.begin() as conn:
            changed = conn.execute(
                update(ConnectorRecord)
                .where(ConnectorRecord.connector_id == connector_id,
                       ConnectorRecord.status == "active")
                .values(status="revoked", revoked_at=now))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    if changed.rowcount != 1:
        require_connector(engine, connector_id)  # unknown id: ConnectorNotFound
        return False
    return True


def touch(engine: Engine, connector_ids: Iterable[str], *, now: datetime) -> None:
    """Record that these connectors were connected at `now` (for `connector list`)."""
    wanted = list(connector_ids)
    if not wanted:
        return
    try:
        with engine.begin() as conn:
            conn.execute(update(ConnectorRecord)
                         .where(ConnectorRecord.connector_id.in_(wanted))
                         .values(last_seen=now))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
