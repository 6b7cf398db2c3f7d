"""The `devices:` section: posture max age and profiles, in the file's order."""

from __future__ import annotations

import textwrap

import pytest

from sekisho.config import parse_config
from sekisho.config.model import DeviceSettings, PostureProfile
from sekisho.errors import ConfigError

BASE = """\
tls: {enabled: false}
routes: []
"""


def _load(extra: str) -> DeviceSettings:
    return parse_config(BASE + textwrap.dedent(extra), "test.yaml").devices


def test_defaults() -> None:
    settings = _load("")
    assert settings == DeviceSettings() and settings.posture_max_age == 900
    assert settings.profiles == ()


def test_profiles_keep_their_order() -> None:
    settings = _load("""\
        devices:
          posture_max_age: 10m
          profiles:
            managed: {os_updated_within: 30d, disk_encryption: true, firewall: true,
                      screen_lock: true, edr: true}
            byod: {os_updated_within: 60d, screen_lock: true}
        """)
    assert settings.posture_max_age == 600
    assert settings.profiles == (
        PostureProfile("managed", 30 * 86400, True, True, True, True),
        PostureProfile("byod", 60 * 86400, screen_lock=True))


@pytest.mark.parametrize(("extra", "field"), [
    ("devices: {profiles: {quarantine: {screen_lock: true}}}", "quarantine"),
    ("devices: {profiles: {managed: {antivirus: true}}}", "antivirus"),
    ("devices: {profiles: {managed: {firewall: yes-please}}}", "firewall"),
    ("devices: {profiles: {managed: {os_updated_within: soon}}}", "os_updated_within"),
    ("devices: {posture_max_age: 2d}", "posture_max_age"),
    ("devices: {posture_max_age: 0}", "posture_max_age"),
])
def test_bad_settings_are_named(extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _load(extra + "\n")
    assert field in str(refused.value)
