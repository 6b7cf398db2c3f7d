"""The launcher sees the connection's device certificate, exactly as the gateway does.

A real Gateway with mTLS (tests/gateway/test_mtls.py: internal CA in tmp, devices enrolled
through the real enrolment path into the real registry) serves the portal; Python `ssl`
clients present an enrolled device certificate, or none.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from sekisho.config.model import Route, SessionSettings
from sekisho.console import portal
from sekisho.devices.ca import load_ca
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.storage import devices

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway.conftest import HOST, STAFF, parse_response
from gateway.test_mtls import POLICIES, MtlsGateway, _read_all

ROUTE_POLICIES = {**POLICIES, "named": {"allow": {"and": [
    {"authenticated": True}, {"device": {"id": "dev-not-mine"}}]}}}


def _issuer_policy(ca_dir: Path) -> dict[str, object]:
    """A route for any certificate of the internal CA (its issuer name, as an admin copies it
    from `sekisho ca show`)."""
    issuer = load_ca(ca_dir).intermediate.subject.rfc4514_string()
    return {"allow": {"and": [{"authenticated": True},
                              {"client_certificate": {"issuer": issuer}}]}}


class PortalGateway(MtlsGateway):
    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, cache_ttl=0)
        to = f"http://127.0.0.1:{self.upstream.port}"
        config = self.runtime.config
        tls = dataclasses.replace(config.tls, client_certificates="optional",
                                  client_ca_dir=str(self.ca_dir))
        self.reconfigure(
            routes=(Route(id="app", host=HOST, path_prefix="/", to=to, policy="device",
                          title="端末限定アプリ"),
                    Route(id="inv", host=HOST, path_prefix="/inventory", to=to,
                          policy="inventory", title="PC-0042 専用"),
                    Route(id="named", host=HOST, path_prefix="/named", to=to,
                          policy="named", title="他人の端末専用"),
                    Route(id="ca", host=HOST, path_prefix="/ca", to=to, policy="ca",
                          title="庁内 CA の証明書"),
                    Route(id="open", host="public.localhost", path_prefix="/", to=to,
                          policy="anyone", title="公開")),
            policies={**ROUTE_POLICIES, "ca": _issuer_policy(self.ca_dir)},
            session=SessionSettings(cache_ttl=0), tls=tls)
        self.gateway.handlers = build_signin_handlers(
            current_config=lambda: self.runtime.config, engine=self.engine,
            sessions=SessionManager(self.engine, SessionSettings()), audit=self.audit,
            builders=[portal.build_handlers], device_trust=self.gateway.devices,
            current_runtime=lambda: self.runtime)

    def page(self, context: object, target: str = "/.sekisho/portal/") -> tuple[int, str]:
        with self.connect(context) as sock:  # type: ignore[arg-type]
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nCookie: "
                         f"__Host-sekisho={STAFF}\r\nConnection: close\r\n\r\n".encode())
            status, _, body = parse_response(_read_all(sock))
            return status, body.decode()

    def listed(self, context: object) -> dict[str, str]:
        status, body = self.page(context)
        assert status == 200, body[:300]
        found = re.findall(r'<li class="app app-([a-z-]+)" data-route="([^"]+)"', body)
        return {route: access for access, route in found}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[PortalGateway]:
    server = PortalGateway(tmp_path)
    yield server
    server.close()


def test_without_a_device_the_device_apps_say_so(gateway: PortalGateway) -> None:
    # The certificate-bound app names one inventory number: enrolling "a device" would not
    # open it, so it is not listed; neither is the app bound to another device's id.
    # The app for any certificate of the internal CA: the portal read the CA's issuer name.
    assert gateway.listed(None) == {"app": "device", "ca": "device", "open": "open"}
    status, body = gateway.page(None, "/.sekisho/portal/why?route=app")
    assert status == 200
    assert "登録済みの許可された端末ではありません" in body  # reasons.py, in Japanese
    assert 'id="enrol"' in body and 'id="stepup"' not in body


def test_an_enrolled_device_opens_them(gateway: PortalGateway) -> None:
    device = gateway.enrol("alice", "pc1")
    assert gateway.listed(device.context) == {"app": "open", "inv": "open", "ca": "open",
                                              "open": "open"}


def test_a_suspended_device_counts_for_nothing(gateway: PortalGateway) -> None:
    device = gateway.enrol("alice", "pc1")
    devices.set_status(gateway.engine, device.device_id, "suspended", now=datetime.now(UTC))
    assert gateway.listed(device.context) == {"app": "device", "ca": "device", "open": "open"}


def test_another_users_device_does_not_vouch(gateway: PortalGateway) -> None:
    device = gateway.enrol("bob", "pc-bob")  # the session is alice's
    assert gateway.listed(device.context)["app"] == "device"


def test_registry_failure_is_503_not_a_guess(gateway: PortalGateway) -> None:
    device = gateway.enrol("alice", "pc1")
    with gateway.engine.begin() as conn:
        conn.execute(text("ALTER TABLE devices RENAME TO devices_gone"))
    status, body = gateway.page(device.context)
    assert status == 503
    assert "data-route" not in body
    assert "ポータルは一時的に利用できません" in body
