"""The embedded demo configuration used by `sekisho serve --demo` (and `make run`).

It is generated as YAML text and loaded through `parse_config`, so the demo is validated
exactly like an administrator's file, and the text is written to `data_dir/sekisho.demo.yaml`
so the administrator can read, copy and edit it. Hosts live under `*.localhost`, which
browsers resolve to loopback without touching /etc/hosts.

The demo shows the β′ guardrails truthfully on one machine: loopback is the office (a local
browser is "inside"; `policy explain --ip 203.0.113.5` shows the remote case) and 127.0.0.1 is
the one designated マイナンバー terminal, so the juki route needs what the guardrail asks for
everywhere — an enrolled `managed` device (client certificate from the demo CA, a fresh
posture report) and a passkey proven within 15 minutes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sekisho.config.loader import parse_config
from sekisho.config.model import Config

DEMO_FILE = "sekisho.demo.yaml"
DEMO_SOURCE = "<demo>"
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")

# route id -> (title, segment, policy, websocket). Unknown ids get a plain staff route.
KNOWN_APPS: dict[str, tuple[str, str, str, bool]] = {
    "news": ("お知らせ / News", "internet", "staff", False),
    "wiki": ("庁内Wiki / Intranet wiki", "internet", "staff", True),
    "docs": ("文書管理（デモ）/ Document management (demo)", "lgwan", "staff", False),
    "admin-tools": ("管理ツール / Admin tools", "internet", "admins", False),
    "juki": ("住民記録（デモ）/ Resident records (demo)", "mynumber", "juki-staff", False),
}


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML flow scalars)."""
    return json.dumps(value, ensure_ascii=False)


def demo_text(
    data_dir: Path,
    upstream_ports: dict[str, int],
    *,
    listen_port: int = 8443,
    admin_port: int = 9100,
) -> str:
    """The demo configuration as YAML text."""
    data = data_dir.resolve()
    database = data / "sekisho.db"
    lines = [
        "# Sekisho デモ設定（自動生成）/ Sekisho demo configuration (generated)",
        "# sekisho serve --demo が起動のたびに作り直します",
        "# rewritten by every `sekisho serve --demo`",
        "server:",
        f"  listen: [{_q(f'127.0.0.1:{listen_port}')}]",
        f"  admin_listen: {_q(f'127.0.0.1:{admin_port}')}",
        "  workers: 1",
        f"  data_dir: {_q(str(data))}",
        "tls:",
        "  self_signed: true   # デモ専用 / demo only",
        "  # 端末証明書 (デモの CA: <data_dir>/ca) / device certificates from the demo CA",
        "  client_certificates: optional",
        "storage:",
        f"  url: {_q(f'sqlite:///{database}')}",
        "session:",
        '  cookie_name: "__Host-sekisho"',
        "  idle_timeout: 30m",
        "  absolute_lifetime: 12h",
        "# 三層分離のモデルとガードレール (docs/segments.md)",
        "# the three-layer model and its guardrails (docs/segments.md)",
        "profile: beta-prime",
        "networks:",
        "  # デモでは loopback を庁内とみなす (mfa.office_networks と同じもの。管理者は常に MFA)",
        "  # the demo treats loopback as the office (the same setting as mfa.office_networks;",
        "  # administrators always need MFA)",
        '  office: ["127.0.0.0/8", "::1/128"]',
        "  # この PC を唯一のマイナンバー利用事務系の指定端末とする",
        "  # this machine is the one designated My Number terminal",
        '  mynumber_terminals: ["127.0.0.1/32"]',
        "devices:",
        "  profiles:",
        "    # デモ用: 要件なし (新しい署名付きの状態報告があれば managed)。本番の例は",
        "    # docs/devices.md / demo: no requirements (a fresh signed posture report makes a",
        "    # device managed); see docs/devices.md for production profiles",
        "    managed: {}",
        "    byod: {}",
        "assertion:",
        f"  issuer: {_q(f'https://portal.localhost:{listen_port}')}",
        "language: ja",
        "timezone: Asia/Tokyo",
        "# 職員ポータル: https://portal.localhost:<port>/ でアプリ一覧 (docs/portal.md)",
        "# the staff portal: the app launcher at https://portal.localhost:<port>/",
        "portal:",
        "  host: portal.localhost",
        f"  contact: {_q('情報政策課 (デモ) / IT department (demo)')}",
        "policies:",
        "  staff:",
        "    allow:",
        "      and:",
        "        - authenticated: true",
        "        - group: [staff]",
        "  admins:",
        "    allow:",
        "      and:",
        "        - authenticated: true",
        "        - group: [admins]",
        "  # マイナンバー利用事務系: 職員のみ。指定端末・managed の端末・15 分以内のパスキーは",
        "  # ガードレールが求める (ルートのポリシーは狭めるだけ)。",
        "  # mynumber segment: staff only; the guardrail adds the designated terminal, a",
        "  # managed device and a passkey within 15 minutes (a route policy only narrows).",
        "  juki-staff:",
        "    allow:",
        "      and:",
        "        - group: [staff]",
        "webauthn:",
        "  passwordless: true",
        "# OIDC の例 (Entra ID)。使うときはコメントを外し、値を設定してください。",
        "# An OIDC example (Entra ID): uncomment and fill in to sign in with the city's IdP.",
        "# identity_providers:",
        "#   - id: entra",
        "#     title: 庁内アカウント (Microsoft Entra ID)",
        "#     issuer: https://login.microsoftonline.com/<tenant-id>/v2.0",
        "#     client_id: <application-id>",
        "#     client_secret: env:SEKISHO_ENTRA_SECRET",
        "#     group_claim: groups",
        "#     email_domains: [city.example.jp]",
        "#     jit: true",
        "#     require_mfa: true",
        "routes:" if upstream_ports else "routes: []",
    ]
    for route_id, port in upstream_ports.items():
        if not _ID.match(route_id) or not 1 <= port <= 65535:
            raise ValueError(f"bad demo app {route_id!r} on port {port!r}")
        title, segment, policy, websocket = KNOWN_APPS.get(
            route_id, (route_id, "internet", "staff", False)
        )
        lines += [
            f"  - id: {route_id}",
            f"    title: {_q(title)}",
            f"    from: {_q(f'https://{route_id}.localhost/')}",
            f"    to: {_q(f'http://127.0.0.1:{port}')}",
            f"    segment: {segment}",
            f"    policy: {policy}",
            f"    websocket: {'true' if websocket else 'false'}",
        ]
    return "\n".join(lines) + "\n"


def demo_config(
    data_dir: Path,
    upstream_ports: dict[str, int],
    *,
    listen_port: int = 8443,
    admin_port: int = 9100,
) -> Config:
    """Build, validate and write the demo configuration; `upstream_ports`: route id -> port."""
    text = demo_text(data_dir, upstream_ports, listen_port=listen_port, admin_port=admin_port)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / DEMO_FILE).write_text(text, encoding="utf-8")
    return parse_config(text, DEMO_SOURCE, base_dir=data_dir.resolve())
