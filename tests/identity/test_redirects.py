"""Open redirect: every attack string falls back to the default; good targets survive.

The same table runs through `SignInFlows.safe_target` (where the browser goes after
sign-in), whose allowed hosts are the route hosts plus the portal host (`portal.host`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from sekisho.config.model import Config, PortalSettings, Route
from sekisho.identity.flow import SignInFlows
from sekisho.identity.redirects import safe_redirect
from sekisho.identity.sessions import SessionManager
from sekisho.services import AuditSink
from sekisho.storage.database import create_database_engine

HOSTS = {"good.example.jp", "app.city.lg.jp"}
DEFAULT = "/"

ATTACKS = [
    "//evil.example",
    "///evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "\\/evil.example",
    "https:evil.example",
    "https:/evil.example",
    "https:///evil.example",
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "https://evil.example/",
    "https://evil.example@good.example.jp/",
    "https://good.example.jp@evil.example/",
    "https://good.example.jp:443@evil.example/",
    "https://user:pw@good.example.jp/",
    "https://good.example.jp.evil.example/",
    "https://evil.example#@good.example.jp",
    "https://evil.example?@good.example.jp",
    "https://good.example.jp\\@evil.example",
    "http://good.example.jp/",  # TLS gateway: no downgrade
    "HTTPS://evil.example/",
    "%2F%2Fevil.example",
    "/%2F/evil.example",
    "/%2f%2fevil.example",
    "/%5Cevil.example",
    "/%5cevil.example",
    "/%252F%252Fevil.example",  # double-encoded
    " /path",
    "/path ",
    "\t/path",
    "/path\n",
    "/\t/evil.example",
    "/%09/evil.example",
    "/%0a/evil.example",
    "/%0d%0aSet-Cookie:x=y",
    "/%00",
    "https://gооd.example.jp/",  # Cyrillic о (IDN homograph)
    "https://xn--gd-ptb.example.jp/",
    "https://good.example.jp./",  # trailing dot: another host to the browser's cookie jar
    "https://%67ood.example.jp/",
    "https://[::1]/",
    "https://good.example.jp:99999/",
    "https://good.example.jp:-1/",
    "relative/path",
    "evil.example",
    "",
    "/" + "a" * 5000,
    "https://good.example.jp/a\\b",
    "/a\"onmouseover=\"x",
    "/日本語",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_falls_back(attack):
    assert safe_redirect(attack, HOSTS, DEFAULT) == DEFAULT


def test_none_falls_back():
    assert safe_redirect(None, HOSTS, DEFAULT) == DEFAULT


@pytest.mark.parametrize(("raw", "expected"), [
    ("/", "/"),
    ("/apps/mail?folder=inbox#top", "/apps/mail?folder=inbox#top"),
    ("/files/%E8%B3%87%E6%96%99.pdf", "/files/%E8%B3%87%E6%96%99.pdf"),
    ("https://good.example.jp/", "https://good.example.jp/"),
    ("https://good.example.jp", "https://good.example.jp/"),
    ("https://GOOD.Example.JP/x?y=1", "https://good.example.jp/x?y=1"),
    ("https://app.city.lg.jp:8443/a/b", "https://app.city.lg.jp:8443/a/b"),
])
def test_good_targets(raw, expected):
    assert safe_redirect(raw, HOSTS, DEFAULT) == expected


def test_http_only_when_the_gateway_runs_without_tls():
    assert safe_redirect("http://good.example.jp/x", HOSTS, DEFAULT, scheme="http") \
        == "http://good.example.jp/x"
    assert safe_redirect("https://good.example.jp/x", HOSTS, DEFAULT, scheme="http") == DEFAULT


def _flows(tmp_path: Path, audit: AuditSink, portal_host: str = "good.example.jp"
           ) -> SignInFlows:
    """Sign-in flows of a gateway with one route (app.city.lg.jp) and a portal host."""
    config = Config(source="t", portal=PortalSettings(host=portal_host), routes=(
        Route(id="app", host="app.city.lg.jp", path_prefix="/", to="http://127.0.0.1:9"),))
    engine = create_database_engine(f"sqlite:///{tmp_path}/unused.db")  # never queried
    return SignInFlows(engine=engine, sessions=SessionManager(engine, config.session),
                       audit=audit, current_config=lambda: config, clock=lambda: datetime.now(UTC))


@pytest.mark.parametrize("attack", ATTACKS)
def test_sign_in_never_returns_to_an_attack_target(attack, tmp_path, audit):
    # good.example.jp is the portal host here, no route's: every trick against it still fails.
    assert _flows(tmp_path, audit).safe_target(attack) == DEFAULT


def test_sign_in_returns_to_the_portal_host(tmp_path, audit):
    flows = _flows(tmp_path, audit)
    assert flows.safe_target("https://good.example.jp/.sekisho/portal/?segment=lgwan") \
        == "https://good.example.jp/.sekisho/portal/?segment=lgwan"
    assert flows.safe_target("https://app.city.lg.jp/wiki") == "https://app.city.lg.jp/wiki"
    assert flows.safe_target("/.sekisho/portal/") == "/.sekisho/portal/"
    # Without a portal host, that host is nobody's: back to "/".
    without = _flows(tmp_path, audit, portal_host="")
    assert without.safe_target("https://good.example.jp/") == DEFAULT
    assert without.safe_target("https://app.city.lg.jp/x") == "https://app.city.lg.jp/x"
