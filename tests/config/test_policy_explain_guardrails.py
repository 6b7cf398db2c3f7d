"""`sekisho policy explain|test` with segment guardrails and devices: snapshots and the registry.

The explain output is compared whole with the snapshots in `snapshots/` (Japanese and
English); run with SEKISHO_UPDATE_SNAPSHOTS=1 to rewrite them after a deliberate change.
`--device ID` reads the real device registry (SQLite, migrated by the real CLI) through the
gateway's own rule; `--device-profile P` needs no database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sekisho.devices.posture import canonical, format_time
from sekisho.storage import devices, users
from sekisho.storage import posture as posture_store
from sekisho.storage.database import create_database_engine

REPO = Path(__file__).resolve().parents[2]
SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
SEKISHO = REPO / ".venv" / "bin" / "sekisho"
COMMAND = [str(SEKISHO)] if SEKISHO.exists() else [sys.executable, "-m", "sekisho"]
AT = "2026-12-01T09:00+09:00"

CONFIG = """\
storage: {{url: "sqlite:///{db}"}}
tls: {{self_signed: true}}
networks:
  office: ["10.20.0.0/16"]
  mynumber_terminals: ["10.99.1.0/24"]
devices:
  profiles:
    managed: {{disk_encryption: true, screen_lock: true}}
    byod: {{screen_lock: true}}
policies:
  staff:
    allow:
      and:
        - authenticated: true
        - group: [staff]
routes:
  - {{id: wiki, from: "https://wiki.city.example.jp/", to: "http://10.1.2.3:8080",
     segment: internet, policy: staff}}
  - {{id: docs, from: "https://docs.city.example.jp/", to: "http://10.1.2.4:8080",
     segment: lgwan, policy: staff}}
  - {{id: juki, title: 住民記録, from: "https://juki.city.example.jp/",
     to: "http://10.1.2.5:8080", segment: mynumber, policy: staff}}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "sekisho.yaml"
    path.write_text(CONFIG.format(db=tmp_path / "sekisho.db"), encoding="utf-8")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "SEKISHO_DATABASE_URL"}
    result = subprocess.run([*COMMAND, *args], capture_output=True, text=True,
                            env=environment, timeout=60, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("SEKISHO_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"differs from {path}"


@pytest.mark.parametrize("language", ["ja", "en"])
def test_byod_from_home_snapshot(config: Path, language: str) -> None:
    """Why a BYOD browser at home reaches the internet app but not the LGWAN one."""
    home = ["--user", "tanaka", "--group", "staff", "--ip", "203.0.113.5", "--mfa", "totp",
            "--device-profile", "byod", "--at", AT, "--lang", language]
    wiki = run("policy", "explain", "--config", str(config), "--url",
               "https://wiki.city.example.jp/", *home)
    docs = run("policy", "explain", "--config", str(config), "--url",
               "https://docs.city.example.jp/", *home)
    assert (wiki.returncode, docs.returncode) == (0, 1)
    _snapshot(f"explain-byod.{language}.txt", wiki.stdout + "\n" + docs.stdout)


@pytest.mark.parametrize("language", ["ja", "en"])
def test_mynumber_step_up_snapshot(config: Path, language: str) -> None:
    """From a designated terminal on a managed device with a password only: step up."""
    result = run("policy", "explain", "--config", str(config), "--url",
                 "https://juki.city.example.jp/records", "--user", "tanaka", "--group", "staff",
                 "--ip", "10.99.1.7", "--device-profile", "managed", "--at", AT,
                 "--lang", language)
    assert result.returncode == 1
    _snapshot(f"explain-mynumber.{language}.txt", result.stdout)


def test_json_carries_the_guardrail_and_the_device(config: Path) -> None:
    result = run("policy", "explain", "--config", str(config), "--url",
                 "https://juki.city.example.jp/", "--user", "tanaka", "--group", "staff",
                 "--ip", "10.99.1.7", "--device-profile", "managed", "--mfa", "webauthn_uv",
                 "--at", AT, "--json")
    assert result.returncode == 0, result.stdout
    data = json.loads(result.stdout)
    assert data["allow"] is True and data["mode"] == "http"
    assert data["device"] == {"id": "hypothetical", "enrolled": True, "user": "tanaka",
                              "profile": "managed", "status": "active"}
    assert data["guardrail"]["policy"] == "beta-prime/mynumber/http"
    assert data["guardrail"]["allow"] is True


def _enrol(engine_url: str, *, report: dict[str, object] | None) -> str:
    """A device of tanaka's in the registry (and, optionally, its latest posture report)."""
    engine = create_database_engine(engine_url)
    try:
        user = users.create_user(engine, "tanaka")
        now = datetime.now(UTC)
        devices.insert_code(engine, code_hash="c" * 64, user_id=user.id, created_by="admin",
                            now=now, expires_at=now + timedelta(hours=1))
        assert devices.consume_code_and_add_device(
            engine, code_hash="c" * 64, now=now, device_id="dev-0001", inventory_id="PC-0042",
            user_id=user.id, name="窓口PC", cert_serial="1f2e3d",
            cert_not_after=now + timedelta(days=365))
        if report is not None:
            posture_store.record(engine, device_id="dev-0001", nonce="ab" * 16,
                                 reported_at=now, received_at=now,
                                 nonce_expires=now + timedelta(hours=1),
                                 report=canonical(report).decode(), profile="managed")
    finally:
        engine.dispose()
    return "dev-0001"


def _report(**changes: object) -> dict[str, object]:
    now = datetime.now(UTC)
    report: dict[str, object] = {
        "schema": 1, "device_id": "dev-0001", "platform": "linux", "os_name": "Debian",
        "os_version": "12", "last_update": format_time(now - timedelta(days=3)),
        "disk_encryption": True, "firewall": True, "screen_lock": True, "edr": True,
        "edr_processes": [], "nonce": "ab" * 16, "time": format_time(now)}
    report.update(changes)
    return report


@pytest.mark.parametrize(("report", "shown", "allowed"), [
    (_report(), "dev-0001(enrolled,user=tanaka,profile=managed)", True),
    (_report(disk_encryption=False), "dev-0001(enrolled,user=tanaka,profile=byod)", False),
    (None, "dev-0001(enrolled,user=tanaka,profile=quarantine)", False),
])
def test_a_registry_device_is_judged_by_the_gateways_rule(
        config: Path, tmp_path: Path, report: dict[str, object] | None, shown: str,
        allowed: bool) -> None:
    assert run("db", "upgrade", "--config", str(config)).returncode == 0
    device = _enrol(f"sqlite:///{tmp_path / 'sekisho.db'}", report=report)
    result = run("policy", "explain", "--config", str(config), "--url",
                 "https://juki.city.example.jp/", "--user", "tanaka", "--group", "staff",
                 "--ip", "10.99.1.7", "--device", device, "--mfa", "webauthn_uv",
                 "--lang", "en")
    assert f"device={shown}" in result.stdout, result.stdout + result.stderr
    assert result.returncode == (0 if allowed else 1)
    if not allowed:
        assert "  - device-unauthorized: " in result.stdout
    # Another user on tanaka's device: the device does not vouch for sato.
    other = run("policy", "explain", "--config", str(config), "--url",
                "https://juki.city.example.jp/", "--user", "sato", "--group", "staff",
                "--ip", "10.99.1.7", "--device", device, "--mfa", "webauthn_uv")
    assert other.returncode == 1 and "device-unauthorized" in other.stdout


def test_a_suspended_or_unknown_device(config: Path, tmp_path: Path) -> None:
    assert run("db", "upgrade", "--config", str(config)).returncode == 0
    device = _enrol(f"sqlite:///{tmp_path / 'sekisho.db'}", report=_report())
    engine = create_database_engine(f"sqlite:///{tmp_path / 'sekisho.db'}")
    try:
        devices.set_status(engine, device, "suspended", now=datetime.now(UTC))
    finally:
        engine.dispose()
    args = ["policy", "explain", "--config", str(config), "--url",
            "https://juki.city.example.jp/", "--user", "tanaka", "--ip", "10.99.1.7",
            "--mfa", "webauthn_uv"]
    suspended = run(*args, "--device", device)
    assert suspended.returncode == 1
    assert "device=dev-0001(not-enrolled:suspended)" in suspended.stdout
    unknown = run(*args, "--device", "dev-nope")
    assert unknown.returncode == 2
    assert "--device: 端末 'dev-nope' は端末台帳にありません" in unknown.stderr


@pytest.mark.parametrize(("extra", "message"), [
    (["--device", "dev-1", "--device-profile", "byod"], "--device-profile: device と同時には"),
    (["--device-profile", "gold"], "--device-profile: devices.profiles にないプロファイルです"
                                   "（managed, byod, quarantine）"),
])
def test_bad_device_options_exit_2(config: Path, extra: list[str], message: str) -> None:
    result = run("policy", "explain", "--config", str(config), "--url",
                 "https://wiki.city.example.jp/", "--user", "tanaka", *extra)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr


def test_policy_test_cases_with_devices(config: Path, tmp_path: Path) -> None:
    assert run("db", "upgrade", "--config", str(config)).returncode == 0
    device = _enrol(f"sqlite:///{tmp_path / 'sekisho.db'}", report=_report())
    cases = tmp_path / "cases.yaml"
    cases.write_text(f"""\
- name: 窓口PC からパスキーで住民記録へ / the counter PC with a passkey
  url: https://juki.city.example.jp/
  user: tanaka
  groups: [staff]
  ip: 10.99.1.7
  mfa: [webauthn_uv]
  device: {device}
  expect: allow
- name: 私物端末では不可 / not from a BYOD device
  url: https://juki.city.example.jp/
  user: tanaka
  groups: [staff]
  ip: 10.99.1.7
  mfa: [webauthn_uv]
  device_profile: byod
  expect: deny
  reasons: [device-unauthorized]
- name: 自宅の私物端末から LGWAN は不可 / LGWAN not from home
  url: https://docs.city.example.jp/
  user: tanaka
  groups: [staff]
  ip: 203.0.113.5
  mfa: [totp]
  device_profile: byod
  expect: deny
  reasons: [source-ip-denied]
""", encoding="utf-8")
    result = run("policy", "test", "--config", str(config), str(cases))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "3 passed, 0 failed"
    broken = tmp_path / "broken.yaml"
    broken.write_text("- {name: a, url: 'https://wiki.city.example.jp/', user: t,\n"
                      "   device_profile: platinum, expect: deny}\n", encoding="utf-8")
    failed = run("policy", "test", "--config", str(config), str(broken))
    assert failed.returncode == 2
    assert ":2: [0] (a).device_profile: devices.profiles にないプロファイルです" in failed.stderr


def test_route_and_time_spell_the_same_request_as_url_and_at(config: Path) -> None:
    """`--route ID` is a GET to the route's host and path prefix; `--time` is `--at`."""
    home = ["--user", "tanaka", "--group", "staff", "--ip", "203.0.113.5", "--mfa", "totp",
            "--device-profile", "byod", "--lang", "en"]
    by_url = run("policy", "explain", "--config", str(config), "--url",
                 "https://docs.city.example.jp/", "--at", AT, *home)
    by_route = run("policy", "explain", "--config", str(config), "--route", "docs",
                   "--time", AT, *home)
    assert by_route.returncode == by_url.returncode == 1
    assert by_route.stdout == by_url.stdout
    unknown = run("policy", "explain", "--config", str(config), "--route", "nope")
    assert unknown.returncode == 2 and "no route 'nope'" in unknown.stderr
    assert "wiki, docs, juki" in unknown.stderr
    both = run("policy", "explain", "--config", str(config), "--route", "docs", "--url",
               "https://docs.city.example.jp/")
    assert both.returncode == 2 and "not allowed with" in both.stderr
