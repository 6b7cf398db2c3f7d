"""The broker and the agent for real: `sekisho serve` with `connector.listen`, agents as
separate `sekisho connector run` processes, HTTP through a `connector:` route on 127.0.0.1.

Covers enrolment (token → certificate, pin checked before the token is sent, reused and
expired tokens refused), HTTP through the tunnel, balancing over two connectors, fail-over
when one is killed (SIGKILL) and its reconnection, the agent's allow-list (refused → 502,
logged and audited), and revocation (tunnel cut within seconds, handshake refused after).
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine

from integration.harness import Browser, EchoUpstream, GatewayProcess
from sekisho.connector.enrolment import token_hash
from sekisho.connector.frames import FrameType, Hello, Role, frame
from sekisho.devices.ca import issue_device_certificate, load_ca
from sekisho.storage import connectors
from sekisho.storage.database import create_database_engine

from .broker_kit import SITE, ConnectorGateway, connected, events, staff, wait_for


@pytest.fixture
def upstream() -> Iterator[EchoUpstream]:
    server = EchoUpstream()
    yield server
    server.close()


@pytest.fixture
def gateway(tmp_path: Path, upstream: EchoUpstream) -> Iterator[ConnectorGateway]:
    process = ConnectorGateway(tmp_path, upstream)
    process.provision()
    process.start()
    yield process
    process.stop()


@pytest.fixture
def engine(gateway: ConnectorGateway) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{gateway.tmp}/sekisho.db")
    yield engine
    engine.dispose()


def test_http_through_two_connectors_with_failover_and_reconnection(
        gateway: ConnectorGateway, engine: Engine, upstream: EchoUpstream) -> None:
    token_a, pin = gateway.token()
    token_b, _ = gateway.token()
    agent_a = gateway.agent(gateway.tmp / "a", token=token_a, pin=pin)
    gateway.agent(gateway.tmp / "b", token=token_b, pin=pin)
    wait_for(lambda: connected(engine) == 2, what="two tunnels")
    assert len(connectors.list_connectors(engine)) == 2
    first, second = (c.connector_id for c in connectors.list_connectors(engine))
    state_a = json.loads((gateway.tmp / "a" / "state.json").read_text())
    a_id = state_a["connector_id"]
    b_id = second if first == a_id else first
    # The agent's key never left its state directory, and is private.
    assert (gateway.tmp / "a" / "key.pem").stat().st_mode & 0o777 == 0o600

    browser = staff(gateway)
    answer = browser.get("intranet.localhost", "/hello?x=1")
    assert answer.status == 200, answer.body[:300]
    seen = answer.json()
    assert seen["path"] == "/hello?x=1"
    assert any(k == "x-sekisho-assertion" or k.startswith("x-sekisho") for k, _ in
               seen["headers"])  # the assertion still goes to the upstream

    # Concurrent requests open concurrent streams: the broker spreads them over both tunnels.
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda n: browser.get("intranet.localhost", f"/c{n}").status,
                                 range(16)))
    assert statuses == [200] * 16

    agent_a.send_signal(signal.SIGKILL)
    agent_a.wait(5)
    for n in range(6):  # the other connector takes every new stream
        assert browser.get("intranet.localhost", f"/after-kill/{n}").status == 200
    a_gone = [e for e in events(engine, "connector.disconnected") if e["connector"] == a_id]
    assert a_gone and int(a_gone[0]["streams"]) > 0  # it had carried streams before the kill

    gateway.agent(gateway.tmp / "a", pin=pin)  # restarted: no token, its stored certificate
    wait_for(lambda: connected(engine, a_id) == 2, what="the killed connector to reconnect")
    b_process = gateway.agents[1]
    b_process.send_signal(signal.SIGTERM)
    b_process.wait(10)
    wait_for(lambda: any(e["connector"] == b_id for e in
                         events(engine, "connector.disconnected")), what="b's disconnection")
    b_gone = [e for e in events(engine, "connector.disconnected") if e["connector"] == b_id]
    assert int(b_gone[0]["streams"]) > 0  # balanced: both carried streams of the burst
    for n in range(4):  # the reconnected connector takes streams again
        assert browser.get("intranet.localhost", f"/again/{n}").status == 200
    assert len(upstream.received) == 1 + 16 + 6 + 4


def test_destination_outside_the_allow_list_is_refused_and_audited(
        gateway: ConnectorGateway, engine: Engine) -> None:
    token, pin = gateway.token()
    gateway.agent(gateway.tmp / "a", token=token, pin=pin)
    wait_for(lambda: connected(engine) == 1, what="the tunnel")
    browser = staff(gateway)
    assert browser.get("intranet.localhost", "/forbidden/x").status == 502
    wait_for(lambda: events(engine, "connector.stream_refused"), what="the refusal's audit")
    refused = events(engine, "connector.stream_refused")[0]
    assert refused["code"] == "refused" and refused["site"] == SITE
    assert refused["destination"] == f"127.0.0.1:{gateway.closed_port}"
    log = (gateway.tmp / "a.log").read_text()
    assert "not allow-listed" in log and f"127.0.0.1:{gateway.closed_port}" in log
    # The allowed route through the same tunnel still works.
    assert browser.get("intranet.localhost", "/").status == 200


def test_no_connector_for_the_site_is_a_502(gateway: ConnectorGateway, engine: Engine) -> None:
    browser = staff(gateway)
    assert browser.get("intranet.localhost", "/").status == 502
    wait_for(lambda: events(engine, "connector.stream_refused"), what="the audit")
    assert events(engine, "connector.stream_refused")[0]["code"] == "no-connector"


def test_revoked_connector_is_cut_and_refused_at_handshake(
        gateway: ConnectorGateway, engine: Engine) -> None:
    token, pin = gateway.token()
    agent = gateway.agent(gateway.tmp / "a", token=token, pin=pin)
    wait_for(lambda: connected(engine) == 1, what="the tunnel")
    browser = staff(gateway)
    assert browser.get("intranet.localhost", "/").status == 200
    connector_id = connectors.list_connectors(engine)[0].connector_id
    revoked_at = time.monotonic()
    gateway.cli("connector", "revoke", connector_id)
    wait_for(lambda: any("revoked" in str(e["reason"]) for e in
                         events(engine, "connector.disconnected")), timeout=10,
             what="the tunnel to be cut")
    assert time.monotonic() - revoked_at < 5
    assert events(engine, "connector.revoked")[0]["connector"] == connector_id
    # The agent keeps re-dialling; the registry refuses its (still unexpired) certificate.
    wait_for(lambda: any(not e["accepted"] and e["reason"] == "revoked" for e in
                         events(engine, "connector.connected")), timeout=15,
             what="a refused handshake")
    assert agent.poll() is None
    assert browser.get("intranet.localhost", "/").status == 502


def test_enrolment_tokens_are_single_use_expire_and_need_the_right_pin(
        gateway: ConnectorGateway, engine: Engine) -> None:
    token, pin = gateway.token()
    # A wrong pin: the agent stops before sending the token (a man in the middle gets nothing).
    wrong = gateway.agent(gateway.tmp / "mitm", token=token, pin="sha256:" + "0" * 64)
    assert wrong.wait(30) == 2
    assert "pin" in (gateway.tmp / "mitm.log").read_text()
    record = connectors.load_token(engine, token_hash(token))
    assert record is not None and record.used_at is None

    first = gateway.agent(gateway.tmp / "a", token=token, pin=pin)
    wait_for(lambda: connected(engine) == 1, what="the first enrolment")
    assert first.poll() is None
    reused = gateway.agent(gateway.tmp / "b", token=token, pin=pin)
    assert reused.wait(30) == 2
    assert "connector-token-invalid" in (gateway.tmp / "b.log").read_text()

    expired = "skc_expired-token-for-the-test"
    now = datetime.now(UTC)
    connectors.insert_token(engine, token_hash=token_hash(expired), site=SITE,
                            created_by="test", now=now - timedelta(hours=2),
                            expires_at=now - timedelta(hours=1))
    late = gateway.agent(gateway.tmp / "c", token=expired, pin=pin)
    assert late.wait(30) == 2
    assert "connector-token-invalid" in (gateway.tmp / "c.log").read_text()
    assert len(connectors.list_connectors(engine)) == 1
    assert [e["site"] for e in events(engine, "connector.enrolled")] == [SITE]
    assert len(events(engine, "connector.token_created")) == 1


@pytest.mark.slow
def test_forked_workers_reach_the_tunnels_through_the_master(
        tmp_path: Path, upstream: EchoUpstream) -> None:
    process = ConnectorGateway(tmp_path, upstream, workers=2)
    process.provision()
    process.start()
    try:
        token, pin = process.token()
        process.agent(tmp_path / "a", token=token, pin=pin)
        engine = create_database_engine(f"sqlite:///{tmp_path}/sekisho.db")
        try:
            wait_for(lambda: connected(engine) == 1, what="the tunnel")
        finally:
            engine.dispose()
        browser = staff(process)
        for n in range(6):  # new connections: SO_REUSEPORT spreads them over both workers
            fresh = Browser(browser.port, browser.context, dict(browser.jar))
            assert fresh.get("intranet.localhost", f"/w{n}").status == 200
        # Only Sekisho's own processes may open streams into the closed network.
        socket_path = tmp_path / "data" / "connector.sock"
        assert socket_path.stat().st_mode & 0o777 == 0o600
    finally:
        process.stop()
    assert len(upstream.received) == 6


def test_a_device_certificate_opens_no_tunnel_and_no_certificate_only_enrols(
        gateway: ConnectorGateway, engine: Engine) -> None:
    _, pin = gateway.token()
    # A certificate from the same CA, but a device's: TLS accepts it, the registry does not.
    ca = load_ca(gateway.tmp / "data" / "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    cert = issue_device_certificate(ca, csr, device_id="dev-1", inventory_id="PC-1",
                                    user="tanaka")
    state = gateway.tmp / "device"
    state.mkdir()
    (state / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (state / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (state / "state.json").write_text(json.dumps({"connector_id": "con-0123456789abcdef",
                                                  "site": SITE, "gateway_pin": pin}))
    gateway.agent(state)
    wait_for(lambda: any(not e["accepted"] and e["reason"] == "unknown-certificate"
                         for e in events(engine, "connector.connected")),
             what="the refused device certificate")
    assert connected(engine) == 0

    # Without a certificate a connection may only enrol: the tunnel protocol is not HTTP.
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    for request, status in ((frame(FrameType.HELLO, 0, 0, Hello(1, 1, Role.AGENT, 65536,
                                                                16384, 100).pack()), b"400"),
                            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"404")):
        with socket.create_connection(("127.0.0.1", gateway.connector_port), timeout=10) as raw, \
                context.wrap_socket(raw) as tls:
            tls.sendall(request)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        assert answer.split(b" ")[1] == status, answer[:200]


def test_agents_reconnect_by_themselves_after_a_gateway_restart(
        gateway: ConnectorGateway, engine: Engine) -> None:
    token, pin = gateway.token()
    agent = gateway.agent(gateway.tmp / "a", token=token, pin=pin)
    wait_for(lambda: connected(engine) == 1, what="the tunnel")
    GatewayProcess.stop(gateway)  # the gateway only: the agent process stays up
    time.sleep(1.0)
    gateway.start()
    # Re-dialled with jittered exponential back-off, by the same agent process.
    wait_for(lambda: connected(engine) == 2, timeout=45, what="the agent to re-dial")
    assert agent.poll() is None
    assert staff(gateway).get("intranet.localhost", "/").status == 200
    log = (gateway.tmp / "a.log").read_text()
    assert "tunnel down" in log and log.count("tunnel up") == 2
