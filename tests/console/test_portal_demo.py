"""`make run`: the demo gives staff one address, and `/` there is the portal, not an app."""

from __future__ import annotations

from pathlib import Path

from sekisho.config.demo import demo_config
from sekisho.demo.apps import APPS
from sekisho.demo.setup import banner
from sekisho.runtime import build_runtime


def test_the_demo_has_a_portal_host_without_a_route_at_its_root(tmp_path: Path) -> None:
    ports = {app.key: 18000 + index for index, app in enumerate(APPS, start=1)}
    config = demo_config(tmp_path / "demo", ports)
    assert config.portal.host == "portal.localhost"
    assert config.portal.contact
    runtime = build_runtime(config)
    assert runtime.routes.match("portal.localhost", "/") is None  # `/` opens the portal
    text = banner(config)
    assert "https://portal.localhost:8443/" in text
    assert text.index("portal.localhost") < text.index("wiki.localhost")  # printed first
