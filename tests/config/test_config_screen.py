"""`mode: screen` routes served by the gateway: `vnc://` targets, `screen.idle_timeout`, and
the β′ guardrail that keeps the clipboard off on lgwan (the gateway's RFB filter enforces
what this configuration says: tests/gateway/test_screen.py)."""

from __future__ import annotations

import pytest

from sekisho.config import parse_config
from sekisho.config.model import SCREEN_IDLE_DEFAULT
from sekisho.config.problems import InvalidConfig

BASE = """\
storage: {url: "sqlite:///x.db"}
tls: {self_signed: true}
policies:
  staff:
    allow:
      and:
        - authenticated: true
        - group: [staff]
routes:
"""


def screen_route(to: str, segment: str = "lgwan", extra: str = "", mode: str = "screen") -> str:
    return BASE + (f"  - id: desk\n    from: https://desk.city.example.jp/\n    to: {to}\n"
                   f"    segment: {segment}\n    mode: {mode}\n{extra}    policy: staff\n")


def test_vnc_target_with_defaults() -> None:
    [route] = parse_config(screen_route("vnc://10.0.0.5:5900")).routes
    assert (route.to, route.mode) == ("vnc://10.0.0.5:5900", "screen")
    assert not route.screen.clipboard and route.screen.idle_timeout == SCREEN_IDLE_DEFAULT


def test_idle_timeout_and_clipboard_outside_lgwan() -> None:
    [route] = parse_config(screen_route(
        "vnc://desk.internal:5901", "internet",
        "    screen: {clipboard: true, idle_timeout: 300}\n")).routes
    assert route.screen.clipboard and route.screen.idle_timeout == 300.0


def test_clipboard_on_lgwan_cannot_be_turned_on_under_beta_prime() -> None:
    with pytest.raises(InvalidConfig, match=r"routes\[0\]\.screen\.clipboard"):
        parse_config(screen_route("vnc://10.0.0.5:5900", extra="    screen: {clipboard: true}\n"))


@pytest.mark.parametrize(("to", "mode", "message"), [
    ("vnc://10.0.0.5:5900/path", "screen", "vnc://<host>:<port>"),
    ("vnc://user@10.0.0.5:5900", "screen", "vnc://<host>:<port>"),
    ("vnc://10.0.0.5:5900", "http", "vnc:// targets need mode: screen"),
])
def test_bad_vnc_targets(to: str, mode: str, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        parse_config(screen_route(to, "internet", mode=mode))


def test_idle_timeout_has_bounds() -> None:
    with pytest.raises(InvalidConfig, match="idle_timeout"):
        parse_config(screen_route("vnc://10.0.0.5:5900", extra="    screen: {idle_timeout: 1}\n"))
