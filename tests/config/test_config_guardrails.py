"""`sekisho check-config` and the segment guardrails: every loosening fails, with file:line.

Each row of the table is a broken file that tries to open what its segment's guardrail keeps
closed; the real command must exit 1 naming the file, the line, the field, the route, the
rule and the guideline item. The same criteria written so that they only narrow pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sekisho.config import parse_config
from sekisho.config.problems import InvalidConfig
from sekisho.runtime import build_runtime

REPO = Path(__file__).resolve().parents[2]
SEKISHO = REPO / ".venv" / "bin" / "sekisho"
COMMAND = [str(SEKISHO)] if SEKISHO.exists() else [sys.executable, "-m", "sekisho"]
GUIDELINE = ("総務省「地方公共団体における情報セキュリティポリシーに関するガイドライン」"
             "(令和5年3月版 / 令和6年10月版)")

BASE = """\
storage: {url: "sqlite:///x.db"}
tls: {self_signed: true}
networks:
  office: ["10.20.0.0/16"]
  mynumber_terminals: ["10.99.1.0/24"]
devices:
  profiles:
    managed: {disk_encryption: true, screen_lock: true}
    byod: {screen_lock: true}
policies:
  staff:
    allow:
      and:
        - authenticated: true
        - group: [staff]
routes:
  - id: wiki
    from: https://wiki.city.example.jp/
    to: http://10.1.2.3:8080
    segment: internet
    policy: staff
"""


def route(route_id: str, segment: str, policy: str, extra: str = "") -> str:
    """One more route (line 22 onwards of the file); its inline policy starts on line 26."""
    return (f"  - id: {route_id}\n"
            f"    from: https://{route_id}.city.example.jp/\n"
            f"    to: http://10.1.2.4:8080\n"
            f"    segment: {segment}\n{extra}"
            f"    policy:\n{policy}")


def allow(*criteria: str) -> str:
    return "      allow:\n        and:\n" + "".join(f"          - {c}\n" for c in criteria)


# (rule, appended text, line, field) — BASE has 21 lines.
BROKEN = [
    ("mynumber-designated-terminals",
     route("juki", "mynumber", allow("group: [staff]", "source_ip: [10.99.1.0/24, 10.30.0.0/16]")),
     30, "routes[1].policy.allow.and[1].source_ip[1]"),
    ("mynumber-managed-device",
     route("juki", "mynumber", allow("device: {enrolled: true, profile: [managed, byod]}")),
     29, "routes[1].policy.allow.and[0].device.profile"),
    ("mynumber-passkey", route("juki", "mynumber", allow("group: [staff]", "mfa: [totp]")),
     30, "routes[1].policy.allow.and[1].mfa"),
    ("mynumber-fresh-proof",
     route("juki", "mynumber", allow("mfa: [webauthn_uv]", "auth_age: 8h")),
     30, "routes[1].policy.allow.and[1].auth_age"),
    ("mynumber-not-public", route("juki", "mynumber", allow("always: true")),
     29, "routes[1].policy.allow.and[0].always"),
    ("mynumber-no-redirection",
     route("juki", "mynumber", allow("group: [staff]"),
           "    mode: screen\n    screen: {printing: true}\n"),
     27, "routes[1].screen.printing"),
    ("lgwan-http-internal",
     route("docs", "lgwan", allow("group: [staff]", "source_ip: [10.20.0.0/16, 0.0.0.0/1]")),
     30, "routes[1].policy.allow.and[1].source_ip[1]"),
    ("lgwan-not-public",
     route("desktop", "lgwan", "      allow: {or: [{group: staff}, {always: true}]}\n",
           "    mode: screen\n"),
     28, "routes[1].policy.allow.or[1].always"),
    ("lgwan-no-redirection",
     route("desktop", "lgwan", allow("group: [staff]"),
           "    mode: screen\n    screen:\n      clipboard: true\n      drive: false\n"),
     28, "routes[1].screen.clipboard"),
]


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "sekisho.yaml"
    path.write_text(text, encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if k != "SEKISHO_DATABASE_URL"}
    return subprocess.run([*COMMAND, "check-config", str(path)], capture_output=True,
                          text=True, env=environment, timeout=60, check=False)


def test_the_base_file_passes_and_prints_the_effective_guardrails(tmp_path: Path) -> None:
    result = check(tmp_path, BASE)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("OK: 1 route, 1 policy")
    assert lines[1].startswith("プロファイル / profile: beta-prime (β′) — " + GUIDELINE)
    assert lines[2] == "ガードレール / guardrails (docs/segments.md):"
    assert [line.split(":")[0] for line in lines[3:]] == ["  internet", "  lgwan", "  mynumber"]
    assert "庁内 (10.20.0.0/16) の外からは 2 段階目の認証も（要件 3） / signed in; from outside " \
        "the office networks (10.20.0.0/16) a second factor too (requirement 3)" in lines[3]
    assert "指定端末 (10.99.1.0/24) から" in lines[5] and "webauthn_uv" in lines[5]
    assert result.stderr == ""


@pytest.mark.parametrize(("rule", "text", "line", "field"), BROKEN,
                         ids=[row[0] for row in BROKEN])
def test_each_loosening_fails_check_config(tmp_path: Path, rule: str, text: str, line: int,
                                          field: str) -> None:
    result = check(tmp_path, BASE + text)
    assert result.returncode == 1, result.stdout
    problems = result.stderr.splitlines()
    assert "1 problem" in problems[0], result.stderr
    where = f"{tmp_path / 'sekisho.yaml'}:{line}: {field}: "
    assert problems[1].startswith(where), (problems[1], where)
    route_id = text.split("id: ", 1)[1].split(maxsplit=1)[0]
    assert f"ルート '{route_id}' " in problems[1] and f"route '{route_id}' " in problems[1]
    assert f"ガードレール {rule} に反します" in problems[1]
    assert f"contradicts guardrail {rule}" in problems[1]
    assert GUIDELINE in problems[1] and "β′ モデル" in problems[1]
    assert " / " in problems[1] and "Traceback" not in result.stderr


def test_a_shared_policy_is_checked_for_each_route_that_uses_it(tmp_path: Path) -> None:
    text = BASE.replace("        - group: [staff]\n",
                        "        - group: [staff]\n        - source_ip: [192.0.2.0/24]\n")
    text += route("juki", "mynumber", "").replace("    policy:\n", "    policy: staff\n")
    result = check(tmp_path, text)
    assert result.returncode == 1
    problems = result.stderr.splitlines()[1:]
    assert len(problems) == 1  # the internet route may name any source; the mynumber one not
    assert ":16: policies.staff.allow.and[2].source_ip[0]: ルート 'juki' (mynumber)" in problems[0]


def test_narrowing_the_guardrail_passes(tmp_path: Path) -> None:
    text = BASE + route("juki", "mynumber", allow(
        "group: [staff]", "source_ip: [10.99.1.0/25]", "device: {profile: managed}",
        "mfa: [webauthn_uv]", "auth_age: 5m", "not: [{always: true}]"))
    text += route("docs", "lgwan", allow("source_ip: [10.20.1.0/24]")).replace(
        "      allow:", "      deny: {or: [{source_ip: 0.0.0.0/0}]}\n      allow:")
    text += route("desktop", "lgwan", allow("source_ip: [0.0.0.0/0]"), "    mode: screen\n")
    result = check(tmp_path, text)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 4 routes, 4 policies")  # inline ones count


def test_redirection_on_lgwan_screen_routes_is_allowed_under_alpha(tmp_path: Path) -> None:
    text = BASE + route("desktop", "lgwan", allow("group: [staff]"),
                        "    mode: screen\n    screen: {clipboard: true}\n")
    assert check(tmp_path, text).returncode == 1
    result = check(tmp_path, "profile: alpha\n" + text)
    assert result.returncode == 0, result.stderr
    runtime = build_runtime(parse_config("profile: alpha\n" + text))
    desktop = runtime.routes.match("desktop.city.example.jp", "/")
    assert desktop is not None
    rail = runtime.guardrail_for(desktop)
    assert rail is not None and rail.name == "alpha/lgwan/screen+redirection"


@pytest.mark.parametrize(("change", "line", "field", "words"), [
    ("mfa: {require_remote: false}\n", 22, "mfa.require_remote",
     "ガードレール remote-mfa に反します"),
    ("", 5, "networks.mynumber_terminals[1]", "ガードレール mynumber-terminals-narrow に反します"),
    ("mfa: {office_networks: [10.20.0.0/24]}\n", 4, "networks.office",
     "mfa.office_networks と異なります"),
    ("", 4, "networks.office[0]", "すべてのアドレスを 1 つのネットワークとはみなせません"),
    ("profile: gamma\n", 22, "profile", "次のいずれかが必要です: alpha, alpha-prime, beta, "
     "beta-prime"),
])
def test_other_guardrail_settings_fail_with_file_and_line(
        tmp_path: Path, change: str, line: int, field: str, words: str) -> None:
    text = BASE
    if field == "networks.mynumber_terminals[1]":
        text = text.replace('["10.99.1.0/24"]', '["10.99.1.0/24", "10.0.0.0/8"]')
    if field == "networks.office[0]":
        text = text.replace('office: ["10.20.0.0/16"]', 'office: ["0.0.0.0/0"]')
    result = check(tmp_path, text + change)
    assert result.returncode == 1, result.stdout
    assert f"{tmp_path / 'sekisho.yaml'}:{line}: {field}: " in result.stderr, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr


def test_screen_options_need_a_screen_route(tmp_path: Path) -> None:
    text = BASE + route("docs", "lgwan", allow("group: [staff]"), "    screen: {drive: false}\n")
    result = check(tmp_path, text)
    assert result.returncode == 1
    assert ":26: routes[1].screen: screen は mode: screen のルートにだけ書けます / applies to " \
        "mode: screen routes only" in result.stderr


def test_a_route_closed_for_want_of_a_network_is_a_warning(tmp_path: Path) -> None:
    text = BASE.replace('  mynumber_terminals: ["10.99.1.0/24"]\n', "")
    text = text.replace('  office: ["10.20.0.0/16"]\n', "  office: []\n")
    text += route("juki", "mynumber", allow("group: [staff]"))
    text += route("docs", "lgwan", allow("group: [staff]"))
    result = check(tmp_path, text)
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    path = tmp_path / "sekisho.yaml"
    assert warnings[0].startswith(f"{path}:24: routes[1].segment: 警告: ルート 'juki' は"
                                  "ガードレールにより閉じています（閉鎖: 指定端末")
    assert "/ warning: route 'juki' is closed by its guardrail (closed: no designated " \
        "terminals" in warnings[0]
    assert warnings[1].startswith(f"{path}:32: routes[2].segment: 警告: ルート 'docs' は")
    assert len(warnings) == 2


def test_a_mynumber_route_without_a_managed_profile_is_a_warning(tmp_path: Path) -> None:
    text = BASE.replace("    managed: {disk_encryption: true, screen_lock: true}\n", "")
    text += route("juki", "mynumber", allow("group: [staff]"))
    result = check(tmp_path, text)
    assert result.returncode == 0
    assert "警告: ルート 'juki' には devices.profiles の managed の端末が必要ですが" \
        in result.stderr


def test_the_office_is_one_setting_under_two_names() -> None:
    only_mfa = parse_config("tls: {enabled: false}\nmfa: {office_networks: [10.1.0.0/16]}\n")
    assert [str(n) for n in only_mfa.networks.office] == ["10.1.0.0/16"]
    only_networks = parse_config("tls: {enabled: false}\nnetworks: {office: [10.1.0.0/16]}\n")
    assert [str(n) for n in only_networks.mfa.office_networks] == ["10.1.0.0/16"]
    both = parse_config("tls: {enabled: false}\nnetworks: {office: [10.1.0.0/16]}\n"
                        "mfa: {office_networks: [10.1.0.0/16]}\n")
    assert both.networks.office == both.mfa.office_networks
    assert parse_config("tls: {enabled: false}\n").profile == "beta-prime"  # the default
    with pytest.raises(InvalidConfig):
        parse_config("tls: {enabled: false}\nnetworks: {office: [10.1.0.0/16]}\n"
                     "mfa: {office_networks: [10.2.0.0/16]}\n")


def test_runtime_puts_every_route_under_its_guardrail() -> None:
    text = BASE + route("juki", "mynumber", allow("group: [staff]"))
    runtime = build_runtime(parse_config(text))
    wiki = runtime.routes.match("wiki.city.example.jp", "/")
    juki = runtime.routes.match("juki.city.example.jp", "/")
    assert wiki is not None and juki is not None
    for found, name in ((wiki, "beta-prime/internet/http"), (juki, "beta-prime/mynumber/http")):
        policy = runtime.policy_for(found)
        assert policy is not None and policy.guardrail is not None
        assert policy.guardrail.name == name
    # One compiled guardrail per (segment, mode), shared by the routes that have it.
    assert sorted(runtime.guardrails) == ["beta-prime/internet/http", "beta-prime/mynumber/http"]
    # A route object from another snapshot (same id, other segment) gets no policy: the
    # gateway denies rather than decide it with this snapshot's policy.
    from dataclasses import replace

    assert runtime.policy_for(replace(juki, segment="internet")) is None
    assert runtime.policies["staff"].guardrail is None  # the named policy, as written
