"""The `connector:` section and the route target `connector:<site>/<host>:<port>`.

A connector target names a *site* (the closed network a set of connectors serves) and the
destination one of its connectors dials inside that network. The destination is checked as
strictly as the tunnel protocol checks OPEN (`connector.frames.valid_destination`): host
name, IPv4 or [IPv6], and a port, with no user-info, path or whitespace, so a route cannot
spell a destination that the agent's allow-list and the audit log would read differently.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from sekisho.config.build import Builder
from sekisho.config.model import ConnectorSettings
from sekisho.config.values import Invalid, parse_listen

PREFIX = "connector:"
_SITE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                   r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")


@dataclass(frozen=True, slots=True)
class ConnectorTarget:
    site: str
    host: str  # lower-case name or IP address (IPv6 without brackets)
    port: int

    @property
    def destination(self) -> str:
        """`host:port` as the tunnel's OPEN frame carries it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def is_connector_target(value: str) -> bool:
    return value.startswith(PREFIX)


def parse_connector_target(value: str) -> ConnectorTarget:
    """`connector:lgwan-dc/10.20.0.5:8080` -> ConnectorTarget("lgwan-dc", "10.20.0.5", 8080)."""
    expected_ja = "connector:<サイト>/<ホスト>:<ポート> の形式が必要です"
    expected_en = f"must be connector:<site>/<host>:<port> (got {value!r})"
    if not value.startswith(PREFIX) or any(ch.isspace() or ord(ch) < 0x20 for ch in value):
        raise Invalid(expected_ja, expected_en)
    site, slash, rest = value[len(PREFIX):].partition("/")
    if not slash or not _SITE.match(site):
        raise Invalid(
            "サイト名は英小文字・数字・- の 63 文字以内です（例: connector:lgwan-dc/10.0.0.5:80）",
            f"the site must be lower-case letters, digits and '-', at most 63 "
            f"(e.g. connector:lgwan-dc/10.0.0.5:80; got {value!r})")
    host, colon, port_text = rest.rpartition(":")
    if not colon or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise Invalid("ポート番号 (1〜65535) が必要です", f"must end with a port 1–65535 "
                                                     f"(got {value!r})")
    if host.startswith("[") and host.endswith("]"):
        try:
            host = str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise Invalid("[ ] の中は IPv6 アドレスが必要です", expected_en) from None
    else:
        host = host.lower()
        if not _HOST.match(host):
            raise Invalid("ホスト名か IP アドレスが必要です（パスや user@ は書けません）",
                          f"the host must be a name or an IP address, with no path or "
                          f"user@ (got {value!r})")
    return ConnectorTarget(site, host, int(port_text))


def build_connector(builder: Builder) -> ConnectorSettings:
    section = builder.section("connector")
    default = ConnectorSettings()
    listen = None
    raw = section.get("listen")
    if isinstance(raw, str) and raw:
        try:
            listen = parse_listen(raw)
        except Invalid as exc:
            builder.problem(("connector", "listen"), exc.ja, exc.en)
    values = {}
    for name in ("token_max_days", "certificate_days"):
        value = section.get(name, getattr(default, name))
        values[name] = value if isinstance(value, int) and not isinstance(value, bool) \
            else getattr(default, name)
    return ConnectorSettings(listen=listen, **values)
