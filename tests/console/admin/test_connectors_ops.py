"""Connectors through `ops.run`: tokens (superadmin only, returned once, stored hashed,
audited), the registry listing (every admin role), revocation (superadmin, audited, 404/409)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from sekisho.connector import enrolment
from sekisho.console.admin import connectors as _connectors  # noqa: F401 (registers them)
from sekisho.devices.ca import init_ca, load_ca
from sekisho.storage.models import ConnectorToken

from .people_kit import AUDITOR, HELPDESK, SUPER, Admin, build


@pytest.fixture
def admin(database_url: str) -> Iterator[Admin]:
    kit = build(database_url)
    yield kit
    kit.engine.dispose()


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def test_a_token_is_returned_once_stored_hashed_and_audited(admin: Admin) -> None:
    answer = admin.run(SUPER, "connectors.create_token",
                       body={"site": "lgwan-dc", "expires_in_hours": 2})
    token = answer["token"]
    assert token.startswith("skc_") and answer["site"] == "lgwan-dc"
    with admin.engine.connect() as conn:
        stored = list(conn.execute(select(ConnectorToken.token_hash)).scalars())
    assert stored == [enrolment.token_hash(token)]
    event = admin.events("connector.token_created")[-1]
    assert (event["admin"], event["site"]) == ("sato", "lgwan-dc")
    assert token not in json.dumps(admin.events())


def test_only_a_superadmin_creates_tokens_and_revokes(admin: Admin) -> None:
    for actor in (HELPDESK, AUDITOR):
        assert admin.refused(actor, "connectors.create_token",
                             body={"site": "lgwan-dc"}).code == "role-forbidden"
        assert admin.refused(actor, "connectors.revoke",
                             path={"id": "con-0123456789abcdef"}).code == "role-forbidden"
    assert admin.run(AUDITOR, "connectors.list") == {"connectors": []}


def test_bad_input_is_a_clear_422(admin: Admin) -> None:
    assert admin.refused(SUPER, "connectors.create_token",
                         body={"site": "LGWAN DC"}).code == "invalid-input"
    too_long = admin.refused(SUPER, "connectors.create_token",
                             body={"site": "lgwan-dc", "expires_in_hours": 24 * 31})
    assert (too_long.code, too_long.status) == ("token-too-long", 422)
    assert admin.events("connector.token_created") == []


def test_an_enrolled_connector_is_listed_and_revoked_once(admin: Admin, tmp_path: Path) -> None:
    init_ca(tmp_path / "ca", organisation="関所市")
    ca = load_ca(tmp_path / "ca")
    token = admin.run(SUPER, "connectors.create_token", body={"site": "lgwan-dc"})["token"]
    cert_pem, chain, connector, _ = enrolment.enrol(admin.engine, ca, token, _csr(),
                                                    name="データセンター 1", source_ip="10.0.0.2")
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    assert enrolment.connector_id_of(cert) == connector.connector_id
    assert "BEGIN CERTIFICATE" in chain
    listed = admin.run(HELPDESK, "connectors.list", query={"site": "lgwan-dc"})["connectors"]
    assert [(c["id"], c["status"], c["name"]) for c in listed] == [
        (connector.connector_id, "active", "データセンター 1")]
    assert admin.run(HELPDESK, "connectors.list", query={"site": "other"}) == {"connectors": []}

    revoked = admin.run(SUPER, "connectors.revoke", path={"id": connector.connector_id})
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    assert admin.events("connector.revoked")[-1]["connector"] == connector.connector_id
    again = admin.refused(SUPER, "connectors.revoke", path={"id": connector.connector_id})
    assert (again.code, again.status) == ("already-revoked", 409)
    missing = admin.refused(SUPER, "connectors.revoke", path={"id": "con-0123456789abcdef"})
    assert missing.status == 404
    assert len(admin.events("connector.revoked")) == 1
    # The spent token enrols nothing more.
    with pytest.raises(enrolment.EnrolmentError) as refused:
        enrolment.enrol(admin.engine, ca, token, _csr(), name="again", source_ip="10.0.0.3")
    assert refused.value.code == "connector-token-invalid"
