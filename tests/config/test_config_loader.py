"""Valid files load into the expected snapshot; the example and the demo validate."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from sekisho.config import config_digest, demo_config, load_config, parse_config
from sekisho.config.model import ListenAddress, ScreenOptions, Timeouts
from sekisho.config.values import parse_duration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sekisho.example.yaml"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        ("200ms", 0.2),
        ("30s", 30.0),
        ("15m", 900.0),
        ("12h", 43200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
    ],
)
def test_durations(value: int | str, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


def test_example_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEKISHO_DATABASE_URL", "postgresql://sekisho@db.example.jp/sekisho")
    config = load_config(EXAMPLE)
    assert config.source == str(EXAMPLE)
    assert config.server.listen == (ListenAddress("0.0.0.0", 8443), ListenAddress("::", 8443))
    assert str(config.server.listen[1]) == "[::]:8443"
    assert config.server.workers == 2
    assert config.trusted_proxies == (ipaddress.ip_network("10.0.0.0/24"),)
    assert config.storage_url.reveal().startswith("postgresql://")
    assert config.storage_url.reference == "env:SEKISHO_DATABASE_URL"
    assert config.session.idle_timeout == 1800.0
    assert config.audit.flush_interval == pytest.approx(0.2)
    assert config.assertion.issuer == "https://gw.city.example.jp"
    assert [r.id for r in config.routes] == ["wiki", "docs", "desktop", "admin-tools", "reports"]
    wiki, docs, desktop, tools, reports = config.routes
    assert (desktop.segment, desktop.mode, desktop.screen) == ("lgwan", "screen", ScreenOptions())
    assert config.profile == "beta-prime"
    assert config.networks.office == (ipaddress.ip_network("10.0.0.0/8"),)
    assert config.mfa.office_networks == config.networks.office  # one office, two names
    assert config.warnings == ()
    assert (wiki.host, wiki.path_prefix, wiki.to, wiki.segment) == (
        "wiki.city.example.jp",
        "/",
        "http://10.1.2.3:8080",
        "internet",
    )
    assert wiki.websocket and wiki.title == "庁内Wiki"
    assert wiki.timeouts == Timeouts(connect=5.0, read=300.0, idle=75.0, header=15.0)
    assert docs.segment == "lgwan" and docs.timeouts is None
    assert (tools.path_prefix, tools.to, tools.policy) == (
        "/admin",
        "https://10.1.2.5:8443/admin",
        "admins",
    )
    assert reports.policy == "route:reports"
    assert set(config.policies) == {"staff", "admins", "route:reports"}
    assert config.digest == config_digest(EXAMPLE.read_bytes())


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "tls.crt").write_text("x")
    (tmp_path / "certs" / "tls.key").write_text("x")
    path = tmp_path / "sekisho.yaml"
    path.write_text(
        "tls: {cert_file: certs/tls.crt, key_file: certs/tls.key}\nserver: {data_dir: state}\n"
    )
    config = load_config(path)
    assert config.tls.cert_file == str(tmp_path / "certs" / "tls.crt")
    assert config.server.data_dir == str(tmp_path / "state")
    assert config.storage_url.reveal() == f"sqlite:///{tmp_path / 'state' / 'sekisho.db'}"
    assert config.routes == () and dict(config.policies) == {}
    assert config.session.cookie_name == "__Host-sekisho"
    assert config.timezone == "Asia/Tokyo" and config.default_language == "ja"


def test_route_normalisation() -> None:
    text = textwrap.dedent("""\
        tls: {enabled: false}
        session: {cookie_name: sekisho}
        policies: {open: {allow: {and: [{always: true}]}}}
        routes:
          - {id: a, from: "HTTPS://Wiki.Example.JP./app/", to: "http://10.0.0.1:8080/",
         segment: internet, policy: open}
          - {id: b, from: "https://市役所.example.jp", to: "http://10.0.0.2/base/",
         segment: internet, policy: open}
        """)
    a, b = parse_config(text).routes
    assert (a.host, a.path_prefix, a.to) == ("wiki.example.jp", "/app", "http://10.0.0.1:8080")
    assert b.host == "xn--7sto6a74d.example.jp" and b.path_prefix == "/"
    assert b.to == "http://10.0.0.2/base"


def test_snapshot_is_frozen() -> None:
    config = parse_config(
        "tls: {enabled: false}\npolicies: {p: {allow: {and: [{always: true}]}}}\n"
    )
    with pytest.raises(AttributeError):
        config.timezone = "UTC"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.policies["q"] = {}  # type: ignore[index]


def test_digest_is_sha256_of_the_text() -> None:
    assert config_digest("a") == "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
    assert config_digest(b"a") == config_digest("a")


def test_demo_config(tmp_path: Path) -> None:
    ports = {"portal": 18001, "wiki": 18002, "docs": 18003, "admin-tools": 18004}
    config = demo_config(tmp_path / "demo", ports)
    assert config.tls.self_signed and config.tls.enabled
    assert config.server.listen == (ListenAddress("127.0.0.1", 8443),)
    assert config.server.admin_listen == ListenAddress("127.0.0.1", 9100)
    assert config.storage_url.reveal() == f"sqlite:///{(tmp_path / 'demo').resolve()}/sekisho.db"
    hosts = {r.id: r.host for r in config.routes}
    assert hosts == {k: f"{k}.localhost" for k in ports}
    by_id = {r.id: r for r in config.routes}
    assert by_id["docs"].segment == "lgwan"
    assert by_id["admin-tools"].policy == "admins"
    assert by_id["wiki"].to == "http://127.0.0.1:18002"
    assert {"staff", "admins"} <= set(config.policies)
    written = tmp_path / "demo" / "sekisho.demo.yaml"
    # The file the admin reads is exactly what was validated.
    assert load_config(written).routes == config.routes


def test_demo_config_ephemeral_ports(tmp_path: Path) -> None:
    config = demo_config(tmp_path, {"wiki": 18002}, listen_port=0, admin_port=0)
    assert config.server.listen[0].port == 0 and config.server.admin_listen.port == 0


def test_holidays_are_local_dates_and_bad_ones_are_named() -> None:
    from datetime import date

    from sekisho.errors import ConfigError

    base = "tls: {enabled: false}\nsession: {cookie_name: sekisho}\n"
    config = parse_config(base + "holidays: [2027-01-01, \"2027-01-11\"]\n", "h.yaml")
    assert config.holidays == frozenset({date(2027, 1, 1), date(2027, 1, 11)})
    with pytest.raises(ConfigError) as caught:
        parse_config(base + "holidays:\n  - 2027-01-01\n  - 2027-02-30\n", "h.yaml")
    assert "h.yaml:5: holidays[1]" in caught.value.description
    assert "2027-02-30" in caught.value.description
