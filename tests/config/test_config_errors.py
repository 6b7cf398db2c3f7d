"""A table of broken files: each problem is reported with its file, line and field path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sekisho.config import load_config, parse_config
from sekisho.config.problems import InvalidConfig
from sekisho.errors import ConfigError

ROUTE = """\
routes:
  - id: wiki
    from: https://wiki.example.jp/
    to: http://127.0.0.1:8080
    segment: internet
    policy: staff
"""
POLICY = "policies:\n  staff: {allow: {and: [{authenticated: true}]}}\n"

# (case id, YAML text, line, field path, a fragment of the English message)
CASES = [
    ("yaml-syntax", 'server:\n  listen: ["a:1"\n', 3, "", "YAML syntax error"),
    ("tab-indent", "server:\n\tworkers: 2\n", 2, "", "tab characters"),
    (
        "duplicate-key",
        "language: ja\ntimezone: Asia/Tokyo\nlanguage: en\n",
        3,
        "language",
        "duplicate key 'language' (first defined on line 1)",
    ),
    (
        "duplicate-nested-key",
        "server:\n  workers: 1\n  workers: 2\n",
        3,
        "server.workers",
        "duplicate key",
    ),
    ("non-string-key", "server:\n  1: x\n", 2, "server", "must be a string"),
    ("yaml-11-boolean-key", "on: true\n", 1, "", "must be a string"),
    ("alias", "a: &x {b: 1}\nc: *x\n", 1, "", "anchors (&) and aliases (*)"),
    ("two-documents", "language: ja\n---\nlanguage: en\n", 2, "", "only one YAML document"),
    ("custom-tag", "language: !env LANG\n", 1, "language", "YAML tag !env"),
    ("unknown-top-key", "langauge: ja\n", 1, "langauge", "did you mean 'language'"),
    (
        "unknown-nested-key",
        "session:\n  idle_timout: 30m\n",
        2,
        "session.idle_timout",
        "did you mean 'idle_timeout'",
    ),
    (
        "unknown-route-key",
        ROUTE + "    websockets: true\n" + POLICY,
        7,
        "routes[0].websockets",
        "did you mean 'websocket'",
    ),
    (
        "unknown-route-timeout-key",
        ROUTE + "    timeouts: {idle: 5s}\n" + POLICY,
        7,
        "routes[0].timeouts.idle",
        "unknown setting 'idle'",
    ),
    ("wrong-type-int", "server:\n  workers: two\n", 2, "server.workers", "must be an integer"),
    ("wrong-type-list", "trusted_proxies: 10.0.0.0/8\n", 1, "trusted_proxies", "must be a list"),
    (
        "zero-workers",
        "server:\n  workers: 0\n",
        2,
        "server.workers",
        "must be an integer ≥ 1 (got 0)",
    ),
    (
        "negative-duration",
        "session:\n  idle_timeout: -5\n",
        2,
        "session.idle_timeout",
        "must be a duration",
    ),
    (
        "bad-duration-string",
        "timeouts:\n  read: 5 minutes\n",
        2,
        "timeouts.read",
        "must be a duration",
    ),
    ("zero-duration-string", "timeouts:\n  read: 0s\n", 2, "timeouts.read", "longer than zero"),
    ("bad-cidr", "trusted_proxies:\n  - 10.0.0.0/33\n", 2, "trusted_proxies[0]", "must be a CIDR"),
    (
        "cidr-host-bits",
        "trusted_proxies:\n  - 10.0.0.0/8\n  - 10.0.0.5/24\n",
        3,
        "trusted_proxies[1]",
        "has host bits set; write the network address 10.0.0.0/24",
    ),
    (
        "cidr-everyone",
        'trusted_proxies: ["::/0"]\n',
        1,
        "trusted_proxies[0]",
        "cannot trust every address",
    ),
    (
        "bad-listen",
        'server:\n  listen:\n    - "127.0.0.1:8443"\n    - "localhost:99999"\n',
        4,
        "server.listen[1]",
        "port must be 0–65535",
    ),
    (
        "bad-listen-host",
        'server:\n  listen: ["example.jp:443"]\n',
        2,
        "server.listen[0]",
        "must be an IP address",
    ),
    (
        "unquoted-ipv6-listen",
        "server:\n  listen:\n    - [::]:8443\n",
        3,
        "",
        "quote IPv6 addresses",
    ),
    (
        "listen-not-a-string",
        'server:\n  listen:\n    - ["::", 8443]\n',
        3,
        "server.listen[0]",
        "quoted in YAML",
    ),
    (
        "admin-on-public",
        'server:\n  listen: ["0.0.0.0:8443"]\n  admin_listen: "127.0.0.1:8443"\n',
        3,
        "server.admin_listen",
        "must not share a socket",
    ),
    (
        "missing-route-field",
        "routes:\n  - id: wiki\n    from: https://w.example.jp/\n"
        "    segment: internet\n    policy: staff\n" + POLICY,
        2,
        "routes[0].to",
        "required setting is missing",
    ),
    (
        "bad-segment",
        ROUTE.replace("internet", "dmz") + POLICY,
        5,
        "routes[0].segment",
        "must be one of: internet, lgwan, mynumber (got 'dmz')",
    ),
    (
        "unknown-policy-name",
        ROUTE.replace("policy: staff", "policy: stafff") + POLICY,
        6,
        "routes[0].policy",
        "unknown policy 'stafff'",
    ),
    (
        "duplicate-route-id",
        ROUTE + ROUTE.removeprefix("routes:\n").replace("wiki.", "w2.") + POLICY,
        7,
        "routes[1].id",
        "duplicate route id 'wiki' (first on line 2)",
    ),
    (
        "duplicate-host-path",
        ROUTE + ROUTE.removeprefix("routes:\n").replace("id: wiki", "id: w2") + POLICY,
        8,
        "routes[1].from",
        "same host and path prefix as route 'wiki' (line 2)",
    ),
    (
        "from-with-query",
        ROUTE.replace("wiki.example.jp/", "wiki.example.jp/?a=1") + POLICY,
        3,
        "routes[0].from",
        "must not have a query",
    ),
    (
        "from-with-port",
        ROUTE.replace("wiki.example.jp/", "wiki.example.jp:8443/") + POLICY,
        3,
        "routes[0].from",
        "must not have a port",
    ),
    (
        "from-dot-segments",
        ROUTE.replace("wiki.example.jp/", "wiki.example.jp/a/../b") + POLICY,
        3,
        "routes[0].from",
        "must be normalised",
    ),
    (
        "from-encoded-slash",
        ROUTE.replace("wiki.example.jp/", "wiki.example.jp/a%2Fb") + POLICY,
        3,
        "routes[0].from",
        "no %",
    ),
    (
        "to-bad-scheme",
        ROUTE.replace("http://127.0.0.1:8080", "ftp://127.0.0.1") + POLICY,
        4,
        "routes[0].to",
        "must be an http:// or https:// URL",
    ),
    (
        "to-credentials",
        ROUTE.replace("http://127.0.0.1", "http://u:p@127.0.0.1") + POLICY,
        4,
        "routes[0].to",
        "must not contain user:password@",
    ),
    (
        "bad-route-id",
        ROUTE.replace("id: wiki", "id: Wiki!") + POLICY,
        2,
        "routes[0].id",
        "must be an identifier",
    ),
    (
        "idle-over-absolute",
        "session:\n  idle_timeout: 13h\n  absolute_lifetime: 12h\n",
        2,
        "session.idle_timeout",
        "must not be longer than session.absolute_lifetime",
    ),
    (
        "cookie-without-host-prefix",
        "tls: {self_signed: true}\nsession:\n  cookie_name: sid\n",
        3,
        "session.cookie_name",
        "must start with __Host-",
    ),
    (
        "cache-ttl-too-long",
        "session:\n  cache_ttl: 5m\n",
        2,
        "session.cache_ttl",
        "must be at most 60s",
    ),
    (
        "flush-interval-too-long",
        "audit:\n  flush_interval: 2s\n",
        2,
        "audit.flush_interval",
        "must be at most 1s",
    ),
    (
        "assertion-lifetime",
        "assertion:\n  lifetime: 5m\n",
        2,
        "assertion.lifetime",
        "must be at most 60s",
    ),
    (
        "base-over-max-delay",
        "throttle:\n  base_delay: 2m\n  max_delay: 1m\n",
        2,
        "throttle.base_delay",
        "must not be longer than throttle.max_delay",
    ),
    ("bad-language", "language: fr\n", 1, "language", "must be one of: ja, en (got 'fr')"),
    ("bad-timezone", "timezone: Mars/Olympus\n", 1, "timezone", "IANA time zone"),
    (
        "bad-policy-name",
        'policies:\n  "staff all": {allow: {always: true}}\n',
        2,
        "policies['staff all']",
        "policy name",
    ),
    (
        "tls-missing-key",
        "tls:\n  cert_file: /etc/hostname\n",
        1,
        "tls",
        "needs both cert_file and key_file",
    ),
    (
        "tls-file-missing",
        "tls:\n  cert_file: /nonexistent/tls.crt\n  key_file: /etc/hostname\n",
        2,
        "tls.cert_file",
        "does not exist",
    ),
    (
        "tls-disabled-with-cert",
        "tls:\n  enabled: false\n  self_signed: true\n",
        2,
        "tls.enabled",
        "TLS is disabled",
    ),
    (
        "tls-disabled-with-client-certificates",
        "tls:\n  enabled: false\n  client_certificates: optional\n",
        3,
        "tls.client_certificates",
        "client certificates need TLS",
    ),
    (
        "tls-client-ca-dir-without-ca",
        "tls:\n  self_signed: true\n  client_certificates: optional\n"
        "  client_ca_dir: /nonexistent/ca\n",
        4,
        "tls.client_ca_dir",
        "root.pem is missing",
    ),
    (
        "tls-client-certificates-unknown-mode",
        "tls:\n  self_signed: true\n  client_certificates: required\n",
        3,
        "tls.client_certificates",
        "",
    ),
    (
        "storage-bad-scheme",
        'storage:\n  url: "mysql://db/x"\n',
        2,
        "storage.url",
        "must be a sqlite:/// or postgresql:// URL",
    ),
    (
        "secret-env-missing",
        "storage:\n  url: env:SEKISHO_TEST_SURELY_UNSET_VARIABLE\n",
        2,
        "storage.url",
        "environment variable SEKISHO_TEST_SURELY_UNSET_VARIABLE is not set",
    ),
    (
        "secret-file-missing",
        "storage:\n  url: file:/nonexistent/db-url\n",
        2,
        "storage.url",
        "cannot read file /nonexistent/db-url",
    ),
    ("not-a-mapping", "- a\n- b\n", 1, "", "must be a mapping"),
    ("empty-file", "# nothing\n", 1, "", "the configuration is empty"),
]


@pytest.mark.parametrize(
    ("text", "line", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_broken_file_names_line_and_field(text: str, line: int, path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_with_tls(text), "sekisho.yaml")
    rendered = str(caught.value)
    prefix = f"sekisho.yaml:{line}: {path}:" if path else f"sekisho.yaml:{line}: "
    matching = [row for row in rendered.splitlines() if row.startswith(prefix)]
    assert matching, rendered
    assert any(fragment in row for row in matching), rendered
    # Japanese first, English after.
    assert all(" / " in row for row in matching)


def _with_tls(text: str) -> str:
    """Append `tls: {enabled: false}` when the case does not set TLS (lines stay the same)."""
    if text.startswith("tls") or "\ntls" in text or text.startswith("- ") or text.startswith("#"):
        return text
    if "cookie_name" in text:
        return text
    return text + "tls: {enabled: false}\n"


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 20


def test_all_problems_are_reported_at_once_sorted_by_line() -> None:
    text = textwrap.dedent("""\
        tls: {enabled: false}
        server:
          workers: 0
        session:
          idle_timeout: 5 minutes
        language: fr
        routes:
          - id: a
            from: https://a.example.jp/?x
            to: gopher://x
            segment: dmz
            policy: nobody
        """)
    with pytest.raises(InvalidConfig) as caught:
        parse_config(text, "f.yaml")
    lines = [p.line for p in caught.value.problems]
    assert lines == sorted(lines)
    assert lines == [3, 5, 6, 9, 10, 11, 12]
    assert caught.value.code == "config-invalid"


def test_policy_errors_point_at_the_exact_node() -> None:
    """Needs `sekisho.policy.compile_policy` (the policy engine)."""
    text = textwrap.dedent("""\
        tls: {enabled: false}
        policies:
          staff:
            allow:
              and:
                - authenticated: true
                - gruop: [staff]
        routes:
          - id: a
            from: https://a.example.jp/
            to: http://127.0.0.1:1
            segment: internet
            policy:
              allow:
                or:
                  - source_ip: ["10.0.0.300/8"]
        """)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "sekisho.yaml")
    rendered = str(caught.value)
    assert "sekisho.yaml:7: policies.staff.allow.and[1].gruop: " in rendered
    assert "unknown criterion 'gruop'" in rendered
    assert "sekisho.yaml:16: routes[0].policy.allow.or[0].source_ip[0]: " in rendered


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 30)
    ]
    with pytest.raises(ConfigError, match="aliases"):
        parse_config("\n".join(lines), "bomb.yaml")


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(ConfigError, match="nesting is too deep"):
        parse_config("policies: " + "[" * 200 + "]" * 200, "deep.yaml")


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "latin1.yaml"
    broken.write_bytes(b"language: ja\ntimezone: \xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml:2: .*not valid UTF-8"):
        load_config(broken)


def test_nul_byte_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"x.yaml:2: .*NUL"):
        parse_config("language: ja\ntimezone: a\x00b\n", "x.yaml")
