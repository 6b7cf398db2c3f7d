"""The pure rules around the tunnel: route targets `connector:<site>/<host>:<port>` (parsed,
and named by check-config when wrong), the agent's allow-list, and the gateway's origin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sekisho.config.connector import ConnectorTarget, parse_connector_target
from sekisho.config.loader import load_config
from sekisho.config.values import Invalid
from sekisho.connector.agent import AgentError, parse_allow, split_destination
from sekisho.errors import ConfigError
from sekisho.gateway.upstream import Origin, parse_origin


@pytest.mark.parametrize(("text", "expected"), [
    ("connector:lgwan-dc/10.20.0.5:8080", ConnectorTarget("lgwan-dc", "10.20.0.5", 8080)),
    ("connector:dc1/Intranet.City.Local:80", ConnectorTarget("dc1", "intranet.city.local", 80)),
    ("connector:dc1/[FD00::1]:22", ConnectorTarget("dc1", "fd00::1", 22)),
])
def test_valid_targets(text: str, expected: ConnectorTarget) -> None:
    assert parse_connector_target(text) == expected


@pytest.mark.parametrize("text", [
    "connector:lgwan-dc",                      # no destination
    "connector:/10.0.0.5:80",                  # no site
    "connector:LGWAN/10.0.0.5:80",             # upper-case site
    "connector:dc/10.0.0.5",                   # no port
    "connector:dc/10.0.0.5:0",                 # port out of range
    "connector:dc/10.0.0.5:70000",
    "connector:dc/user@host:80",               # user-info: would fool the allow-list
    "connector:dc/host/path:80",               # a path
    "connector:dc/host:80/path",
    "connector:dc/ho st:80",                   # whitespace
    "connector:dc/[not-v6]:80",
    "connector:dc/-bad-.example:80",
])
def test_invalid_targets(text: str) -> None:
    with pytest.raises(Invalid) as refused:
        parse_connector_target(text)
    assert refused.value.ja and refused.value.en


def test_origin_of_a_connector_route() -> None:
    assert parse_origin("connector:dc1/10.0.0.5:8080") == Origin("connector", "10.0.0.5", 8080,
                                                                 "", "dc1")
    assert parse_origin("connector:dc1/[fd00::1]:80").host_header == b"[fd00::1]"


BASE = """\
storage: {{url: "sqlite:///x.db"}}
tls: {{self_signed: true}}
policies:
  staff: {{allow: {{and: [{{authenticated: true}}]}}}}
routes:
  - id: intranet
    from: https://intranet.localhost/
    to: {to}
    segment: internet
    policy: staff
{extra}"""


def test_a_connector_route_loads_with_a_listener(tmp_path: Path) -> None:
    path = tmp_path / "sekisho.yaml"
    path.write_text(BASE.format(to="connector:dc1/10.0.0.5:80",
                                extra='connector:\n  listen: "0.0.0.0:8444"\n'))
    config = load_config(path)
    assert config.routes[0].to == "connector:dc1/10.0.0.5:80"
    assert (config.connector.listen.host, config.connector.listen.port) == ("0.0.0.0", 8444)


@pytest.mark.parametrize(("to", "extra", "message"), [
    ("connector:dc1/10.0.0.5:80", "", "connector.listen"),
    ("connector:dc1/10.0.0.5", 'connector:\n  listen: "0.0.0.0:8444"\n', "port"),
    ("connector:dc1/10.0.0.5:80", 'connector:\n  listen: "nowhere"\n', "connector.listen"),
])
def test_check_config_names_the_problem(tmp_path: Path, to: str, extra: str,
                                        message: str) -> None:
    path = tmp_path / "sekisho.yaml"
    path.write_text(BASE.format(to=to, extra=extra))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert message in str(refused.value)
    result = subprocess.run([sys.executable, "-m", "sekisho", "check-config", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and message in result.stdout + result.stderr


@pytest.mark.parametrize(("entry", "allowed", "refused"), [
    ("10.20.0.5:8080", ["10.20.0.5:8080"], ["10.20.0.5:8081", "10.20.0.6:8080"]),
    ("Intranet.City.Local:80", ["intranet.city.local:80"], ["intranet.city.local:81",
                                                            "evil.city.local:80"]),
    ("10.20.0.0/24:443", ["10.20.0.1:443", "10.20.0.254:443"],
     ["10.20.1.1:443", "10.20.0.1:80", "intranet.city.local:443"]),  # a name never by CIDR
    ("[fd00::1]:22", ["[fd00::1]:22"], ["[fd00::2]:22"]),
])
def test_allow_list(entry: str, allowed: list[str], refused: list[str]) -> None:
    rule = parse_allow(entry)
    for destination in allowed:
        assert rule.permits(*split_destination(destination)), destination
    for destination in refused:
        assert not rule.permits(*split_destination(destination)), destination


@pytest.mark.parametrize("entry", ["10.0.0.5", "host:", "10.0.0.0/33:80", "10.0.0.1/24:80",
                                   ":80", "host:99999"])
def test_bad_allow_entries_are_refused(entry: str) -> None:
    with pytest.raises(AgentError):
        parse_allow(entry)
