"""`to: tcp://<host>:<port>`: the destination of a `mode: tcp` route reached directly.

Only a host and a port: no user, path, query or fragment, so nothing in the target can be
read two ways (the gateway dials exactly what the administrator wrote). A `tcp://` target
belongs to `mode: tcp` routes only, and a `mode: tcp` route takes only `tcp://` or
`connector:` targets: a TCP splice to an HTTP upstream would bypass header hygiene and the
assertion, and an HTTP route proxying to a raw TCP service would be a confusion either way.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from sekisho.config.values import Invalid

SCHEME = "tcp://"
_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                   r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
_TARGET = re.compile(r"^tcp://(\[[0-9a-f:.]+\]|[^\[\]:/@?#]+):([0-9]{1,5})$")


@dataclass(frozen=True, slots=True)
class TcpTarget:
    host: str  # lower-case name or address (IPv6 without brackets)
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}{host}:{self.port}"


def is_tcp_target(value: str) -> bool:
    return value.lower().startswith(SCHEME)


def parse_tcp_target(value: str) -> TcpTarget:
    """`tcp://host:port` checked; raises `Invalid` (ja/en) naming what is wrong."""
    match = _TARGET.match(value.strip().lower())
    if match is None:
        raise Invalid("tcp://<ホスト>:<ポート> の形で書いてください"
                      "（パスやユーザー名は書けません）",
                      "must be tcp://<host>:<port> (no path, user or query)")
    host, port = match[1], int(match[2])
    if not 0 < port < 65536:
        raise Invalid("ポート番号は 1〜65535 です", "the port must be 1-65535")
    if host.startswith("["):
        try:
            host = str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise Invalid("IPv6 アドレスとして読めません", "is not a valid IPv6 address") from None
    elif not _HOST.match(host):
        raise Invalid("ホスト名として読めません", "is not a valid host name")
    return TcpTarget(host, port)
