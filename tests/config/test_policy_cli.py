"""The real `sekisho policy explain|test` commands: output, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SEKISHO = REPO / ".venv" / "bin" / "sekisho"
EXAMPLE = REPO / "examples" / "sekisho.example.yaml"
EXAMPLE_TESTS = REPO / "examples" / "policy-tests.yaml"
COMMAND = [str(SEKISHO)] if SEKISHO.exists() else [sys.executable, "-m", "sekisho"]

# The probe's default address (192.0.2.1) is in the office here, so the segment guardrail
# (β′, internet: signed in; MFA only from outside) lets signed-in requests through to the
# route policies these tests are about.
CONFIG = """\
storage: {url: "sqlite:///x.db"}
tls: {self_signed: true}
language: en
networks: {office: ["192.0.2.0/24"]}
policies:
  staff:
    allow:
      and:
        - authenticated: true
        - group: [staff]
    deny:
      or:
        - group: suspended
  closed:
    deny:
      or:
        - group: suspended
routes:
  - id: allowed
    from: https://apps.city.example.jp/allowed
    to: http://127.0.0.1:9
    segment: internet
    policy: staff
  - id: denied
    from: https://apps.city.example.jp/denied
    to: http://127.0.0.1:9
    segment: internet
    policy: closed
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, SEKISHO_DATABASE_URL="sqlite:///x.db")
    return subprocess.run([*COMMAND, "policy", *args], capture_output=True, text=True,
                          env=environment, timeout=60, check=False)


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "sekisho.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return str(path)


def explain(config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run("explain", "--config", config, *args)


def test_allowed_exits_0_and_shows_route_decision_and_trace(config: str) -> None:
    result = explain(config, "--url", "https://Apps.City.Example.JP:8443/allowed/x",
                     "--user", "tanaka", "--group", "staff")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Route: allowed  Segment: internet  Policy: staff" in out
    assert "Decision: allowed — the allow block matched" in out
    assert "  - user-authenticated: The user is signed in" in out
    assert "✓ group: [staff] → matched [group-authorized]" in out
    assert "✗ group: suspended → not matched [group-authorized]" in out


def test_deny_wins_trace(config: str) -> None:
    result = explain(config, "--url", "https://apps.city.example.jp/allowed", "--user", "tanaka",
                     "--group", "staff", "--group", "suspended", "--lang", "ja")
    assert result.returncode == 1, result.stderr
    assert "判定: 拒否 — deny ブロックに一致（deny が優先）" in result.stdout
    assert "group-unauthorized: 所属グループに許可がありません" in result.stdout
    assert "✓ and → 一致 [user-authenticated, group-authorized]（未評価" in result.stdout


def test_default_deny_trace(config: str) -> None:
    result = explain(config, "--url", "https://apps.city.example.jp/denied", "--user", "tanaka")
    assert result.returncode == 1
    assert "Decision: denied — the policy has no allow block (deny by default)" in result.stdout
    assert "default-deny: Denied because no rule allows it (deny by default)" in result.stdout


def test_unauthenticated_without_user(config: str) -> None:
    result = explain(config, "--url", "https://apps.city.example.jp/allowed", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["allow"] is False and data["reasons"] == ["user-unauthenticated"]
    assert data["route"] == "allowed" and data["policy"] == "staff"
    assert data["explained"] == [{"code": "user-unauthenticated",
                                  "text": "The user is not signed in"}]
    first = data["trace"]["allow"]["children"][0]
    assert first["kind"] == "authenticated" and first["matched"] is False


def test_path_is_normalised_like_the_gateway(config: str) -> None:
    """`/allowed/../denied` is the denied route, as the gateway sees it — not /allowed."""
    result = explain(config, "--url", "https://apps.city.example.jp/allowed/../denied",
                     "--user", "tanaka", "--group", "staff", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert (data["path"], data["route"], data["policy"]) == ("/denied", "denied", "closed")
    assert data["reasons"] == ["default-deny"]


def test_ambiguous_path_is_refused_before_policy(config: str) -> None:
    result = explain(config, "--url", "https://apps.city.example.jp/allowed/..%2fdenied",
                     "--user", "tanaka", "--group", "staff")
    assert result.returncode == 1
    assert "refused with 400: ambiguous path (encoded-slash)" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--url", "https://unknown.example.jp/"], "no route for host 'unknown.example.jp'"),
    (["--url", "https://apps.city.example.jp/other"], "no route matches the path '/other'"),
    (["--url", "ftp://apps.city.example.jp/"], "expected a URL like https://host/path"),
    (["--url", "https://apps.city.example.jp/allowed", "--group", "staff"], "--groups: "),
    (["--url", "https://apps.city.example.jp/allowed", "--user", "u", "--ip", "10.0.0.999"],
     "--ip: "),
    (["--url", "https://apps.city.example.jp/allowed", "--user", "u", "--at", "tomorrow"],
     "ISO 8601"),
    (["--url", "https://apps.city.example.jp/allowed", "--user", "u", "--mfa", "sms"],
     "unknown method 'sms'"),
])
def test_bad_input_exits_2_without_traceback(config: str, args: list[str], message: str) -> None:
    result = explain(config, *args)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_config_exits_2_without_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("routes: [1]\n", encoding="utf-8")
    result = explain(str(broken), "--url", "https://a.example.jp/")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "broken.yaml" in result.stderr


def test_time_mfa_and_auth_age_reach_the_facts(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.replace("        - group: [staff]\n", "        - group: [staff]\n"
                                   "        - mfa: true\n        - auth_age: 10m\n"
                                   "        - time: {weekdays: [mon, tue, wed, thu, fri]}\n"))
    base = ["--url", "https://apps.city.example.jp/allowed", "--user", "u", "--group", "staff"]
    weekday, sunday = "2026-12-01T09:00+09:00", "2026-12-06T09:00"
    assert explain(str(path), *base, "--mfa", "totp", "--at", weekday).returncode == 0
    no_mfa = explain(str(path), *base, "--at", weekday)
    assert no_mfa.returncode == 1 and "mfa-required" in no_mfa.stdout
    stale = explain(str(path), *base, "--mfa", "totp", "--at", weekday, "--auth-age", "3600")
    assert stale.returncode == 1 and "auth-too-old" in stale.stdout
    weekend = explain(str(path), *base, "--mfa", "totp", "--at", sunday)
    assert weekend.returncode == 1 and "time-denied" in weekend.stdout


def test_the_example_tests_pass_against_the_example_config() -> None:
    result = run("test", "--config", str(EXAMPLE), str(EXAMPLE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("✓ ") == 11
    assert result.stdout.splitlines()[-1] == "11 passed, 0 failed"


def test_a_failing_case_is_reported_with_its_name(config: str, tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "- name: staff reach the app\n  url: https://apps.city.example.jp/allowed\n"
        "  user: tanaka\n  groups: [staff]\n  expect: allow\n"
        "- name: visitors are allowed (wrong on purpose)\n"
        "  url: https://apps.city.example.jp/allowed\n  user: guest\n  groups: [visitors]\n"
        "  expect: allow\n"
        "- name: wrong reasons\n  url: https://apps.city.example.jp/allowed\n"
        "  expect: deny\n  reasons: [group-unauthorized]\n"
        "- name: unknown host\n  url: https://nowhere.example.jp/\n  expect: deny\n",
        encoding="utf-8")
    result = run("test", "--config", config, str(cases))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "✓ staff reach the app"
    assert lines[1].startswith("✗ visitors are allowed (wrong on purpose): ")
    assert "expected allow" in lines[1] and "got deny [group-unauthorized]" in lines[1]
    assert "    - group-unauthorized: The user's groups are not permitted" in lines
    assert any(line.startswith("✗ wrong reasons: ") and "[user-unauthenticated]" in line
               for line in lines)
    assert any(line.startswith("✗ unknown host: ") for line in lines)
    assert lines[-1] == "1 passed, 3 failed"


@pytest.mark.parametrize(("text", "message"), [
    ("- {name: a, url: 'https://apps.city.example.jp/', expect: maybe}\n",
     ":1: [0] (a).expect: allow または deny を指定してください / expected allow or deny"),
    ("- {name: a, url: 'https://apps.city.example.jp/', expect: allow}\n"
     "- {name: b, url: 'https://apps.city.example.jp/', expect: deny, ip: nope}\n",
     ":2: [1] (b).ip: "),
    ("- {url: 'https://apps.city.example.jp/', expect: deny}\n", "[0].name: "),
    ("- {name: c, url: 'https://apps.city.example.jp/', expect: deny, colour: red}\n",
     "[0] (c).colour: 不明なキーです"),
    ("- {name: d, url: 'https://apps.city.example.jp/', expect: deny, reasons: [nope]}\n",
     "[0] (d).reasons: "),
    ("- {name: e, url: 'https://apps.city.example.jp/', expect: deny, groups: [x]}\n",
     "[0] (e).groups: "),
    ("name: not a list\n", "expected a non-empty list of test cases"),
    ("- [unclosed\n", "YAML"),
])
def test_invalid_test_files_name_the_case_and_field(
    config: str, tmp_path: Path, text: str, message: str
) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(text, encoding="utf-8")
    result = run("test", "--config", config, str(cases))
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr
