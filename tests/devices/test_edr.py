"""The EDR webhook through the real handler on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from sekisho.audit.log import AuditLog
from sekisho.config.loader import parse_config
from sekisho.config.model import Config, HookSettings, Route, Secret, ThrottleSettings
from sekisho.devices.edr import HOOK_PATH, EdrRefused, sign, verify
from sekisho.devices.identity import DeviceIdentity
from sekisho.devices.trust import DeviceTrust
from sekisho.errors import ConfigError
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.storage import audit_log, devices, edr, users
from sekisho.web import Request, Response

NOW = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
SECRET = "k" * 24 + "-edr-test-secret-0123"
SERIAL = 0xABCDEF
# Lenient enough that the refusal tables below are not throttled themselves.
NO_BACKOFF = ThrottleSettings(account_max_failures=50, ip_max_failures=50, lockout=600,
                              base_delay=0.0, max_delay=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class EdrApp:
    def __init__(self, engine: Engine, secret: str | None = SECRET,
                 throttle: ThrottleSettings = NO_BACKOFF) -> None:
        self.engine = engine
        self.clock = Clock()
        self.config = Config(
            source="test",
            routes=(Route(id="r", host="gw.city.example", path_prefix="/",
                          to="http://127.0.0.1:9"),),
            hooks=HookSettings(None if secret is None else Secret(secret, "env:TEST")),
            throttle=throttle)
        self.sessions = SessionManager(engine, self.config.session, clock=self.clock)
        self.trust = DeviceTrust(engine, clock=lambda: 0.0, wall_clock=self.clock)
        self.handlers = build_signin_handlers(
            current_config=lambda: self.config, engine=engine, sessions=self.sessions,
            audit=AuditLog(engine), clock=self.clock, device_trust=self.trust)

    def call(self, body: bytes, headers: list[tuple[str, str]],
             method: str = "POST", ip: str = "198.51.100.7") -> Response:
        request = Request(method=method, target=HOOK_PATH, path=HOOK_PATH, query="",
                          headers=[("host", "gw.city.example"),
                                   ("content-type", "application/json"), *headers],
                          client_ip=ip, scheme="https", host="gw.city.example",
                          body=body)

        async def run() -> Response:
            return await self.handlers[HOOK_PATH](request)

        return asyncio.run(run())

    def post(self, payload: Mapping[str, object], *, secret: str = SECRET,
             at: datetime | None = None, tamper: bytes | None = None,
             ip: str = "198.51.100.7") -> Response:
        body = json.dumps(payload).encode()
        timestamp = str(int((at or self.clock.now).timestamp()))
        signature = sign(secret.encode(), timestamp, body)
        return self.call(tamper if tamper is not None else body,
                         [("x-sekisho-timestamp", timestamp),
                          ("x-sekisho-signature", signature)], ip=ip)

    def audit_types(self) -> list[str]:
        return [str(r.event_type) for r in audit_log.iter_records(self.engine)]


def _enrolled(engine: Engine, username: str = "tanaka",
              device_id: str = "dev-0123456789abcdef") -> str:
    user = users.create_user(engine, username)
    devices.insert_code(engine, code_hash=device_id.ljust(64, "0")[:64], user_id=user.id,
                        created_by="admin", now=NOW, expires_at=NOW + timedelta(hours=1))
    assert devices.consume_code_and_add_device(
        engine, code_hash=device_id.ljust(64, "0")[:64], now=NOW, device_id=device_id,
        inventory_id="PC-1", user_id=user.id, name="PC", cert_serial=f"{SERIAL:x}",
        cert_not_after=NOW + timedelta(days=365))
    return device_id


def _body(response: Response) -> dict[str, object]:
    return json.loads(response.body)  # type: ignore[no-any-return]


def _identity(device_id: str) -> DeviceIdentity:
    return DeviceIdentity(device_id=device_id, inventory_id="PC-1", serial=SERIAL,
                          not_after=NOW + timedelta(days=365), issuer="CN=x", user="tanaka")


def test_a_valid_notification_suspends_revokes_and_audits(engine: Engine) -> None:
    app = EdrApp(engine)
    device_id = _enrolled(engine)
    other = _enrolled(engine, "suzuki", "dev-fedcba9876543210")
    user = users.require_user(engine, "tanaka")
    tokens = [app.sessions.create(user, ["password"], "192.0.2.1", "ua")[0] for _ in range(2)]
    bystander, _ = app.sessions.create(users.require_user(engine, "suzuki"), ["password"],
                                       "192.0.2.2", "ua")
    assert all(asyncio.run(app.sessions.lookup(t)) is not None for t in tokens)  # now cached
    assert asyncio.run(app.trust.standing(_identity(device_id), 3600)).enrolled  # cached too

    response = app.post({"device_id": device_id, "reason": "ransomware", "event_id": "e-1"})
    assert response.status == 200, response.body
    assert _body(response) == {"status": "suspended", "device_id": device_id,
                               "sessions_revoked": 2, "already_suspended": False}
    record = devices.require_device(engine, device_id)
    assert (record.status, record.revoked_reason) == ("suspended", "edr:ransomware")
    # The caches of this process were evicted: the old tokens and the device fail at once.
    assert all(asyncio.run(app.sessions.lookup(t)) is None for t in tokens)
    assert all(app.sessions.lookup_sync(t) is None for t in tokens)
    assert not asyncio.run(app.trust.standing(_identity(device_id), 3600)).enrolled
    # Another user's device and sessions are untouched.
    assert app.sessions.lookup_sync(bystander) is not None
    assert devices.require_device(engine, other).status == "active"
    assert app.audit_types() == ["device.compromised", "session.revoked", "session.revoked"]
    event = next(iter(audit_log.iter_records(engine)))
    body = json.loads(event.body)
    assert (body["device"], body["user"], body["reason"], body["event_id"],
            body["sessions_revoked"]) == (device_id, "tanaka", "edr:ransomware", "e-1", 2)

    # A replay of the same event id: 200 "already processed", no second action.
    again_token, _ = app.sessions.create(user, ["password"], "192.0.2.1", "ua")
    replay = app.post({"device_id": device_id, "reason": "ransomware", "event_id": "e-1"})
    assert replay.status == 200 and _body(replay)["status"] == "already-processed"
    assert app.sessions.lookup_sync(again_token) is not None
    assert len(app.audit_types()) == 3
    # A new event for an already suspended device still signs the user out everywhere.
    second = app.post({"device_id": device_id, "reason": "lateral", "event_id": "e-2"})
    assert _body(second)["already_suspended"] is True
    assert app.sessions.lookup_sync(again_token) is None
    assert devices.require_device(engine, device_id).revoked_reason == "edr:ransomware"


def _refused(response: Response, status: int, code: str) -> None:
    assert (response.status, _body(response)["error"]) == (status, code), response.body
    assert any(k.lower() == "content-type" and v.startswith("application/json")
               for k, v in response.headers)
    assert b"Traceback" not in response.body


def test_refusals_change_nothing_and_are_audited(engine: Engine) -> None:
    app = EdrApp(engine)
    device_id = _enrolled(engine)
    token, _ = app.sessions.create(users.require_user(engine, "tanaka"), ["password"],
                                   "192.0.2.1", "ua")
    good = {"device_id": device_id, "reason": "malware", "event_id": "e-9"}
    body = json.dumps(good).encode()
    timestamp = str(int(NOW.timestamp()))
    signature = sign(SECRET.encode(), timestamp, body)
    cases: list[tuple[Response, int, str]] = [
        (app.post(good, secret="x" * 40), 401, "signature-invalid"),  # wrong secret
        (app.call(body, [("x-sekisho-timestamp", timestamp),
                         ("x-sekisho-signature", "sha256=" + "0" * 64)]), 401,
         "signature-invalid"),
        (app.call(body, [("x-sekisho-timestamp", timestamp),
                         ("x-sekisho-signature", signature[:-1])]), 401, "signature-invalid"),
        (app.call(body, [("x-sekisho-timestamp", timestamp)]), 401, "signature-missing"),
        (app.call(body, [("x-sekisho-signature", signature)]), 401, "signature-missing"),
        (app.call(body, []), 401, "signature-missing"),
        (app.call(body, [("x-sekisho-timestamp", "-1"), ("x-sekisho-signature", signature)]),
         401, "timestamp-invalid"),
        # The timestamp is signed: moving it without the key breaks the signature.
        (app.call(body, [("x-sekisho-timestamp", str(int(NOW.timestamp()) + 1)),
                         ("x-sekisho-signature", signature)]), 401, "signature-invalid"),
        (app.post(good, at=NOW - timedelta(seconds=301)), 401, "timestamp-stale"),
        (app.post(good, at=NOW + timedelta(seconds=301)), 401, "timestamp-stale"),
        (app.post(good, tamper=body.replace(b"malware", b"malwarf")), 401, "signature-invalid"),
        (app.post(good, tamper=json.dumps({**good, "device_id": "dev-other"}).encode()), 401,
         "signature-invalid"),
        (app.post({"device_id": device_id, "reason": "x"}), 400, "request-invalid"),
        (app.post({"device_id": "../etc", "reason": "x", "event_id": "e"}), 400,
         "request-invalid"),
        (app.post({"device_id": device_id, "reason": "x" * 101, "event_id": "e"}), 400,
         "request-invalid"),
        (app.post({"device_id": "dev-nobody", "reason": "x", "event_id": "e-404"}), 404,
         "device-not-found"),
    ]
    for response, status, code in cases:
        _refused(response, status, code)
    big = b'{"device_id": "' + b"a" * 9000 + b'"}'
    _refused(app.call(big, [("x-sekisho-timestamp", timestamp),
                                 ("x-sekisho-signature", sign(SECRET.encode(), timestamp,
                                                              big))]), 413, "body-too-large")
    _refused(app.call(b"", [], method="GET"), 405, "method-not-allowed")
    assert devices.require_device(engine, device_id).status == "active"
    assert app.sessions.lookup_sync(token) is not None
    # An unknown device does not burn the event id: the sender may retry after enrolment.
    assert not edr.processed(engine, "e-404") and not edr.processed(engine, "e-9")
    # Every refusal after the method and size checks is audited (413 and 405 are not).
    assert app.audit_types() == ["device.edr_refused"] * len(cases)
    # Just inside the window on both sides is accepted.
    ok = app.post(good, at=NOW - timedelta(seconds=299))
    assert ok.status == 200 and devices.require_device(engine, device_id).status == "suspended"


ATTACKER = "203.0.113.66"


def test_failed_calls_are_throttled_per_address_with_the_address_limit(
        engine: Engine) -> None:
    # The account limit (2) is lower than the address limit (4): the webhook's key is an
    # address, so it must lock after 4 failures, not after 2.
    app = EdrApp(engine, throttle=ThrottleSettings(
        account_max_failures=2, ip_max_failures=4, lockout=600, base_delay=0.0,
        max_delay=0.0))
    device_id = _enrolled(engine)
    good = {"device_id": device_id, "reason": "malware", "event_id": "e-1"}
    failures = [
        lambda: app.post(good, secret="x" * 40, ip=ATTACKER),  # bad signature
        lambda: app.post(good, at=NOW - timedelta(seconds=400), ip=ATTACKER),  # stale
        lambda: app.call(json.dumps(good).encode(), [], ip=ATTACKER),  # no signature
        lambda: app.post(good, secret="y" * 40, ip=ATTACKER),
    ]
    codes = [_body(attempt())["error"] for attempt in failures]
    assert codes == ["signature-invalid", "timestamp-stale", "signature-missing",
                     "signature-invalid"]
    # Locked: any further failed call from that address is refused without being checked.
    locked = app.post(good, secret="z" * 40, ip=ATTACKER)
    _refused(locked, 429, "throttled")
    assert int(dict(locked.headers)["Retry-After"]) == 600
    _refused(app.post(good, at=NOW - timedelta(seconds=400), ip=ATTACKER), 429, "throttled")
    types = app.audit_types()
    assert types.count("signin.lockout") == 1
    lockout = next(json.loads(r.body) for r in audit_log.iter_records(engine)
                   if r.event_type == "signin.lockout")
    assert (lockout["key"], lockout["failures"]) == (f"edr-ip:{ATTACKER}", 4)
    assert types.count("device.edr_refused") == 6  # 4 refusals + 2 throttled
    # Another address is not affected.
    _refused(app.post(good, secret="x" * 40), 401, "signature-invalid")
    # A correctly signed alert still acts from the locked address: a bystander sharing the
    # EDR's address (its cloud egress, a NAT) cannot lock real alerts out.
    assert _body(app.post(good, ip=ATTACKER))["status"] == "suspended"
    assert devices.require_device(engine, device_id).status == "suspended"
    # The lock runs out after `lockout`.
    app.clock.now += timedelta(seconds=601)
    _refused(app.post(good, secret="x" * 40, ip=ATTACKER), 401, "signature-invalid")


def test_replays_count_as_failures_and_back_off(engine: Engine) -> None:
    app = EdrApp(engine, throttle=ThrottleSettings(
        account_max_failures=50, ip_max_failures=3, lockout=600, base_delay=1.0,
        max_delay=60.0))
    device_id = _enrolled(engine)
    event = {"device_id": device_id, "reason": "malware", "event_id": "e-1"}
    assert _body(app.post(event, ip=ATTACKER))["status"] == "suspended"
    # A captured call sent again within the time window: nothing done, counted.
    assert _body(app.post(event, ip=ATTACKER))["status"] == "already-processed"
    # Back-off: the next failure within base_delay (1 s) is refused.
    _refused(app.post(event, ip=ATTACKER), 429, "throttled")
    _refused(app.post(event, secret="x" * 40, ip=ATTACKER), 429, "throttled")
    app.clock.now += timedelta(seconds=1)
    assert _body(app.post(event, ip=ATTACKER))["status"] == "already-processed"
    app.clock.now += timedelta(seconds=2)
    _refused(app.post(event, secret="x" * 40, ip=ATTACKER), 401, "signature-invalid")
    app.clock.now += timedelta(seconds=4)
    _refused(app.post(event, ip=ATTACKER), 429, "throttled")  # locked after 3
    assert app.audit_types().count("signin.lockout") == 1
    # Signed requests that the EDR got wrong (body, unknown device) are audited, not counted:
    # they come from the key holder.
    other = EdrApp(engine, throttle=ThrottleSettings(
        account_max_failures=50, ip_max_failures=2, lockout=600, base_delay=0.0,
        max_delay=0.0))
    for _ in range(3):
        _refused(other.post({"device_id": "dev-nobody", "reason": "x", "event_id": "e-9"}),
                 404, "device-not-found")
        _refused(other.post({"device_id": device_id, "reason": "x"}), 400, "request-invalid")
    assert app.audit_types().count("signin.lockout") == 1


def test_the_endpoint_is_absent_without_configuration(engine: Engine) -> None:
    app = EdrApp(engine, secret=None)
    device_id = _enrolled(engine)
    response = app.post({"device_id": device_id, "reason": "x", "event_id": "e-1"})
    _refused(response, 404, "not-found")
    assert devices.require_device(engine, device_id).status == "active"
    assert app.audit_types() == []


@pytest.mark.parametrize(("timestamp", "signature", "code"), [
    (None, "sha256=00", "signature-missing"),
    ("12a", "sha256=00", "timestamp-invalid"),
    ("1" * 13, "sha256=00", "timestamp-invalid"),
    ("１２３", "sha256=00", "timestamp-invalid"),  # full-width digits are not unix seconds
    ("100", "sha256=zz", "signature-invalid"),
    ("100", "sha256=ｚ", "signature-invalid"),  # non-ASCII never reaches compare_digest as str
])
def test_verify_refuses_malformed_headers(timestamp: str | None, signature: str,
                                          code: str) -> None:
    with pytest.raises(EdrRefused) as refused:
        verify(b"secret", timestamp, signature, b"{}", now=100.0)
    assert refused.value.code == code


def test_verify_accepts_a_fresh_signature_in_any_case() -> None:
    signature = sign(b"secret", "1000", b"{}")
    verify(b"secret", "1000", signature.upper().replace("SHA256=", "sha256="), b"{}",
           now=1000.0)
    verify(b"secret", "1000", signature, b"{}", now=1300.0)
    with pytest.raises(EdrRefused):
        verify(b"secret", "1000", signature, b"{}", now=1300.5)


def test_hooks_config_reads_a_secret_reference_and_refuses_short_keys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = "tls: {enabled: false}\nsession: {cookie_name: sekisho}\n"
    monkeypatch.setenv("SEKISHO_EDR_SECRET", SECRET)
    config = parse_config(base + "hooks: {edr: {secret: env:SEKISHO_EDR_SECRET}}\n",
                              source="t.yaml", base_dir=tmp_path)
    assert config.hooks.edr_secret is not None
    assert config.hooks.edr_secret.reveal() == SECRET and SECRET not in repr(config)
    assert parse_config(base, source="t.yaml", base_dir=tmp_path).hooks.edr_secret is None
    monkeypatch.setenv("SEKISHO_EDR_SECRET", "short")
    with pytest.raises(ConfigError) as short:
        parse_config(base + "hooks: {edr: {secret: env:SEKISHO_EDR_SECRET}}\n",
                         source="t.yaml", base_dir=tmp_path)
    assert "hooks.edr.secret" in str(short.value) and "short" not in str(short.value)
    with pytest.raises(ConfigError):
        parse_config(base + "hooks: {edr: {}}\n", source="t.yaml", base_dir=tmp_path)


def test_migration_0007_matches_the_model(engine: Engine) -> None:
    import importlib.util
    from importlib.machinery import SourceFileLoader

    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from sqlalchemy import Table, inspect

    import sekisho.storage
    from sekisho.storage.models import EdrEvent

    path = (Path(sekisho.storage.__file__).parent / "migrations" / "versions"
            / "0007_edr_events.py")
    loader = SourceFileLoader("sekisho_migration_0007", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    assert (module.revision, module.down_revision) == ("0007", "0006")
    for step in ("downgrade", "upgrade"):
        with engine.begin() as connection, Operations.context(
                MigrationContext.configure(connection)):
            getattr(module, step)()
    table = EdrEvent.__table__
    assert isinstance(table, Table)
    columns = {c["name"]: c["nullable"] for c in inspect(engine).get_columns(table.name)}
    assert columns == {c.name: c.nullable for c in table.columns}
    assert inspect(engine).get_pk_constraint(table.name)["constrained_columns"] == ["event_id"]
