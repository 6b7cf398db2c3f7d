"""The embedded demo configuration used by `sekisho serve --demo` (and `make run`).

It is generated as YAML text, validated, written to `data_dir/sekisho.demo.yaml` (with its
policy tests in `sekisho.demo.tests.yaml`, the format of `sekisho policy test`) and loaded
from that file, so the demo runs exactly as an installation does: SIGHUP and the admin
console's configuration editor reload it, and a later start keeps an edited file
(`demo.setup`). Hosts live under `*.localhost`, which browsers resolve to loopback without
touching /etc/hosts.

The demo shows the β′ guardrails truthfully on one machine: loopback is the office (a local
browser is "inside"; `policy explain --ip 203.0.113.5` shows the remote case) and 127.0.0.1 is
the one designated マイナンバー terminal, so the juki route needs what the guardrail asks for
everywhere — an enrolled `managed` device (client certificate from the demo CA, a fresh
posture report) and a passkey proven within 15 minutes.

The LGWAN side is a closed network even in the demo: its app (`kintai`) and the VNC desktop
are reached only through the demo connector (`connector:demo-lgwan/…`, a separate
`sekisho connector run` process that dials out to `connector.listen`), never by a route that
targets their addresses (demo.connector).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sekisho.config.loader import load_config, parse_config
from sekisho.config.model import Config

DEMO_FILE = "sekisho.demo.yaml"
DEMO_TESTS_FILE = "sekisho.demo.tests.yaml"  # <stem>.tests.yaml: run by the config editor
DEMO_SOURCE = "<demo>"
DEMO_SITE = "demo-lgwan"  # the demo connector's site
INTERNAL_ROUTE = "kintai"  # the route to the app behind the connector
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")

# route id -> (title, segment, policy, websocket). Unknown ids get a plain staff route.
KNOWN_APPS: dict[str, tuple[str, str, str, bool]] = {
    "news": ("お知らせ / News", "internet", "staff", False),
    "wiki": ("庁内Wiki / Intranet wiki", "internet", "staff", True),
    "docs": ("文書管理（デモ）/ Document management (demo)", "lgwan", "staff", False),
    "admin-tools": ("管理ツール / Admin tools", "internet", "admins", False),
    "juki": ("住民記録（デモ）/ Resident records (demo)", "mynumber", "juki-staff", False),
    INTERNAL_ROUTE: ("庶務事務・勤怠（コネクタ経由）/ Attendance (through the connector)", "lgwan",
                     "staff", False),
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
    desktop_port: int | None = None,
    connector_port: int | None = None,
    internal_port: int | None = None,
) -> str:
    """The demo configuration as YAML text; `desktop_port`: the demo VNC desktop's port, for
    a screen-transfer route (demo.desktop), or None when no VNC server is installed;
    `connector_port`: the loopback port of `connector.listen`, and `internal_port`: the
    port of the app that only the demo connector reaches (both or neither)."""
    if (connector_port is None) != (internal_port is None):
        raise ValueError("the demo connector needs both connector_port and internal_port")
    data = data_dir.resolve()
    database = data / "sekisho.db"
    lines = [
        "# Sekisho デモ設定（自動生成）/ Sekisho demo configuration (generated)",
        "# 最初の sekisho serve --demo が作成し、以後の起動では編集が保たれます",
        "# （元に戻すには sekisho serve --demo --demo-reset）",
        "# written by the first `sekisho serve --demo`; later starts keep your edits",
        "# (`sekisho serve --demo --demo-reset` restores it)",
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
        "routes:" if upstream_ports or desktop_port or internal_port else "routes: []",
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
    if connector_port is not None and internal_port is not None:
        lines += _internal_route(internal_port)
    if desktop_port is not None:
        lines += _desktop_route(desktop_port, via_connector=connector_port is not None)
    if connector_port is not None:
        lines += _connector_section(connector_port)
    return "\n".join(lines) + "\n"


def _check_port(what: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"bad demo {what} port {port!r}")


def _internal_route(port: int) -> list[str]:
    """The LGWAN app in the demo's closed network, reached only through the connector."""
    _check_port("internal app", port)
    title = KNOWN_APPS[INTERNAL_ROUTE][0]
    return [
        "  # 閉域網の中のアプリ: 宛先は connector:<サイト>/<ホスト>:<ポート>。関所から内側へは",
        "  # 接続せず、閉域網の中のコネクタ (別プロセス) が外向きに張ったトンネルだけを通る",
        "  # (docs/connector.md)。庁外からは β′ のガードレールで拒否 (LGWAN は画面転送のみ)",
        "  # an app inside the closed network: the gateway never dials in; requests ride the",
        "  # tunnel the connector (a separate process) dialled out (docs/connector.md). From",
        "  # outside the office the β′ guardrail denies it (LGWAN: screen transfer only)",
        f"  - id: {INTERNAL_ROUTE}",
        f"    title: {_q(title)}",
        f"    from: {_q(f'https://{INTERNAL_ROUTE}.localhost/')}",
        f"    to: {_q(f'connector:{DEMO_SITE}/127.0.0.1:{port}')}",
        "    segment: lgwan",
        "    policy: staff",
        "    websocket: false",
    ]


def _connector_section(port: int) -> list[str]:
    _check_port("connector", port)
    return [
        "# コネクタの待ち受け (デモでは loopback のみ)。コネクタは閉域網の中から外向きにここへ",
        "# 接続する / the connector listener (loopback in the demo): connectors dial out to it",
        "connector:",
        f"  listen: {_q(f'127.0.0.1:{port}')}",
    ]


def _desktop_route(port: int, *, via_connector: bool = False) -> list[str]:
    """The screen-transfer route to the demo desktop (docs/screen.md); through the demo
    connector when it runs, as an LGWAN desktop is reached in a city."""
    _check_port("desktop", port)
    target = (f"connector:{DEMO_SITE}/127.0.0.1:{port}" if via_connector
              else f"vnc://127.0.0.1:{port}")
    title = "LGWAN 端末（画面転送デモ）/ LGWAN desktop (screen transfer demo)"
    return [
        "  # 画面転送: LGWAN 接続系の端末の画面だけを送る。β′ ではクリップボード・ファイル転送・",
        "  # 印刷は有効にできず、関所が VNC のメッセージを検査して遮断する (docs/screen.md)",
        "  # screen transfer: only the picture of an LGWAN desktop crosses; under β′ clipboard,",
        "  # file transfer and printing cannot be turned on, and the gateway filters VNC itself",
        "  - id: desktop",
        f"    title: {_q(title)}",
        f"    from: {_q('https://desktop.localhost/')}",
        f"    to: {_q(target)}",
        "    segment: lgwan",
        "    mode: screen",
        "    screen: {idle_timeout: 900}",
        "    policy: staff",
    ]


# route id -> (name, user, groups, source ip, expected decision, extra fields): what the demo
# promises, checked by the configuration editor before any edit is saved.
_DEMO_TESTS: tuple[tuple[str, str, str, str, str, str, str], ...] = (
    ("wiki", "職員は庁内から Wiki を開ける / staff open the wiki from the office", "tanaka",
     "[staff]", "127.0.0.1", "allow", ""),
    ("admin-tools", "職員は管理ツールを開けない / staff cannot open the admin tools", "tanaka",
     "[staff]", "127.0.0.1", "deny", ""),
    ("docs", "自宅の私物端末から LGWAN は開けない / no LGWAN from a home BYOD device", "tanaka",
     "[staff]", "203.0.113.5", "deny", "  mfa: [totp]\n  device_profile: byod\n"),
    (INTERNAL_ROUTE, "職員は庁内からコネクタ経由のアプリを開ける / staff open the app behind the "
     "connector from the office", "tanaka", "[staff]", "127.0.0.1", "allow", ""),
    (INTERNAL_ROUTE, "庁外からはコネクタ経由でも LGWAN の Web は開けない / no LGWAN web app from "
     "outside, connector or not", "tanaka", "[staff]", "203.0.113.5", "deny",
     "  mfa: [totp]\n  device_profile: managed\n"),
)


def demo_tests_text(route_ids: list[str]) -> str:
    """The demo's policy tests (`sekisho policy test` format) for the routes it has."""
    cases = [f"- name: {_q(name)}\n  url: {_q(f'https://{route}.localhost/')}\n"
             f"  user: {user}\n  groups: {groups}\n  ip: {ip}\n{extra}  expect: {expect}\n"
             for route, name, user, groups, ip, expect, extra in _DEMO_TESTS
             if route in route_ids]
    header = ("# デモ設定のポリシーテスト。管理コンソールで設定を保存する前に実行されます\n"
              "# the demo configuration's policy tests, run before the console saves an edit\n")
    return header + "".join(cases) if cases else ""


def write_demo_files(
    data_dir: Path,
    upstream_ports: dict[str, int],
    *,
    listen_port: int = 8443,
    admin_port: int = 9100,
    desktop_port: int | None = None,
    connector_port: int | None = None,
    internal_port: int | None = None,
) -> Path:
    """Validate, then write the demo configuration and its policy tests; return the file."""
    text = demo_text(data_dir, upstream_ports, listen_port=listen_port, admin_port=admin_port,
                     desktop_port=desktop_port, connector_port=connector_port,
                     internal_port=internal_port)
    parse_config(text, DEMO_SOURCE, base_dir=data_dir.resolve())  # never write a broken demo
    data_dir.mkdir(parents=True, exist_ok=True)
    tests = demo_tests_text([*upstream_ports, *([INTERNAL_ROUTE] if internal_port else [])])
    if tests:
        (data_dir / DEMO_TESTS_FILE).write_text(tests, encoding="utf-8")
    else:
        (data_dir / DEMO_TESTS_FILE).unlink(missing_ok=True)
    path = data_dir / DEMO_FILE
    path.write_text(text, encoding="utf-8")
    return path


def demo_config(
    data_dir: Path,
    upstream_ports: dict[str, int],
    *,
    listen_port: int = 8443,
    admin_port: int = 9100,
    desktop_port: int | None = None,
    connector_port: int | None = None,
    internal_port: int | None = None,
) -> Config:
    """Write the demo configuration (fresh) and load it from its file; `upstream_ports`:
    route id -> port."""
    return load_config(write_demo_files(data_dir, upstream_ports, listen_port=listen_port,
                                        admin_port=admin_port, desktop_port=desktop_port,
                                        connector_port=connector_port,
                                        internal_port=internal_port))
