"""The `admin:` section: defaults, canonical role groups, every problem at its line, and the
admin policy compiled once per snapshot under the internet guardrail."""

from __future__ import annotations

import pytest

from sekisho.config import parse_config
from sekisho.config.admin import ADMIN_ROUTE, default_policy
from sekisho.config.model import AdminSettings
from sekisho.config.problems import InvalidConfig
from sekisho.policy import Facts, evaluate
from sekisho.runtime import build_runtime

POLICIES = ("tls:\n  enabled: false\n"
            "policies:\n  staff: {allow: {and: [{authenticated: true}]}}\n")


def _problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(InvalidConfig) as caught:
        parse_config(text)
    return [(p.line, ".".join(str(x) for x in p.path), p.en) for p in caught.value.problems]


def test_defaults() -> None:
    admin = parse_config(POLICIES).admin
    assert admin == AdminSettings()
    assert admin.role_of(frozenset({"admins", "auditors"})) == "superadmin"
    assert admin.role_of(frozenset({"auditors"})) == "auditor"
    assert admin.role_of(frozenset({"staff"})) is None
    assert admin.token_max_days == 365 and admin.policy == ""


def test_role_groups_are_canonical_like_stored_group_names() -> None:
    admin = parse_config(POLICIES + "admin:\n  roles:\n    superadmin: [Jouhou-Seisaku, ＩＴ]\n"
                         "    auditor: []\n  token_max_days: 30\n").admin
    assert admin.groups_for("superadmin") == ("jouhou-seisaku", "it")
    assert admin.groups_for("helpdesk") == ("helpdesk",)  # not given: the default
    assert admin.groups_for("auditor") == ()
    assert admin.token_max_days == 30


@pytest.mark.parametrize(("text", "line", "field", "fragment"), [
    ("admin:\n  roles:\n    root: [admins]\n", 3, "admin.roles.root", "root"),
    ("admin:\n  roles:\n    helpdesk: [ok, 'bad name']\n", 3, "admin.roles.helpdesk.1",
     "invalid group name"),
    ("admin:\n  policy: missing\n", 2, "admin.policy", "not defined"),
    ("admin:\n  token_max_days: 0\n", 2, "admin.token_max_days", ""),
    ("admin:\n  token_max_days: 3651\n", 2, "admin.token_max_days", ""),
])
def test_problems_name_their_line_and_field(text: str, line: int, field: str,
                                            fragment: str) -> None:
    found = _problems(POLICIES + text)
    lines = 4  # the lines before the admin section
    assert any(p_line == line + lines and p_field == field and fragment in en
               for p_line, p_field, en in found), found


def _facts(groups: frozenset[str], methods: frozenset[str], age: float, ip: str) -> Facts:
    import ipaddress
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 4, 1, 1, 0, tzinfo=UTC)
    proven = now - timedelta(seconds=age)
    return Facts(authenticated=True, user="sato", email="", groups=groups, auth_methods=methods,
                 auth_time=proven, proofs=dict.fromkeys(methods, proven), now=now,
                 source_ip=ipaddress.ip_address(ip), route=ADMIN_ROUTE.id,
                 segment=ADMIN_ROUTE.segment, method="GET", path="/.sekisho/admin/",
                 host="admin.localhost")


def test_the_default_policy_wants_an_admin_group_a_passkey_and_15_minutes() -> None:
    runtime = build_runtime(parse_config(POLICIES))
    policy = runtime.admin_policy
    assert policy is not None and policy.guardrail is not None  # under the internet rail
    passkey = frozenset({"pwd", "webauthn"})
    admins = frozenset({"admins"})
    assert evaluate(_facts(admins, passkey, 60, "203.0.113.9"), policy).allow
    assert not evaluate(_facts(admins, frozenset({"pwd", "totp"}), 60, "10.0.0.1"),
                        policy).allow
    assert not evaluate(_facts(admins, passkey, 16 * 60, "10.0.0.1"), policy).allow
    assert not evaluate(_facts(frozenset({"staff"}), passkey, 60, "10.0.0.1"), policy).allow


def test_a_named_policy_is_still_under_the_internet_guardrail() -> None:
    text = POLICIES + "networks:\n  office: [10.0.0.0/8]\nadmin:\n  policy: staff\n"
    policy = build_runtime(parse_config(text)).admin_policy
    assert policy is not None
    password = frozenset({"pwd"})
    assert evaluate(_facts(frozenset(), password, 60, "10.1.2.3"), policy).allow
    remote = evaluate(_facts(frozenset(), password, 60, "203.0.113.9"), policy)
    assert not remote.allow and "mfa-required" in remote.reasons


def test_no_admin_group_at_all_lets_nobody_in() -> None:
    empty = AdminSettings(roles=(("superadmin", ()), ("helpdesk", ()), ("auditor", ())))
    assert default_policy(empty) == {"allow": {"and": [{"never": True}]}}
