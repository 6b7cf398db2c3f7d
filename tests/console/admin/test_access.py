"""Who may call the admin API or open the console: sessions through the admin policy (the
built-in one: an admin group, a passkey, 15 minutes; or `admin.policy` under the internet
guardrail), API tokens (one answer for every bad token, throttled per address), fail closed."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from admin_support import (
    OFFICE_IP,
    REMOTE_IP,
    Stack,
    body,
    close,
    make_stack,
    request,
    run,
)

from sekisho.console.admin import access
from sekisho.console.admin.ops import Actor, AdminContext, AdminError, Role
from sekisho.identity.sessions import SessionManager
from sekisho.storage import api_tokens
from sekisho.storage.database import create_database_engine
from sekisho.web import Response

CUSTOM = """\
admin:
  policy: admins-anywhere
  roles:
    superadmin: [Admins]
    helpdesk: [helpdesk]
    auditor: [auditors, staff]
"""
CUSTOM_POLICY = """\
  admins-anywhere:
    allow:
      and:
        - authenticated: true
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    found = make_stack(tmp_path)
    found.user("sato", "admins")
    found.user("yamada", "helpdesk")
    found.user("suzuki", "auditors")
    found.user("kato", "admins", "auditors")
    found.user("tanaka", "staff")
    try:
        yield found
    finally:
        close(found)


@pytest.fixture
def custom(tmp_path: Path) -> Iterator[Stack]:
    """`admin.policy` names a policy of the file: it lets any signed-in user through, so only
    the internet guardrail and the role map stand between a session and the console."""
    found = make_stack(tmp_path, extra=CUSTOM, policies=CUSTOM_POLICY)
    found.user("sato", "admins")
    found.user("tanaka", "staff")
    found.user("guest", "visitors")
    try:
        yield found
    finally:
        close(found)


def _actor(stack: Stack, name: str, path: str = "/.sekisho/api/me", **kwargs: object) -> (
        Actor | Response):
    token, _ = stack.session(name, **kwargs)  # type: ignore[arg-type]
    return run(access.session_actor(stack.ctx, request("GET", path, cookie=token)))


# -- sessions ---------------------------------------------------------------------------------

def test_without_a_session_a_page_goes_to_sign_in_and_the_api_answers_401(stack: Stack) -> None:
    page = run(access.session_actor(stack.ctx, request("GET", "/.sekisho/admin/users",
                                                       query="q=a")))
    assert isinstance(page, Response) and page.status == 303
    location = dict(page.headers)["Location"]
    assert parse_qs(urlsplit(location).query)["rd"] == ["/.sekisho/admin/users?q=a"]
    api = run(access.session_actor(stack.ctx, request("GET", "/.sekisho/api/me")))
    assert isinstance(api, Response) and api.status == 401
    assert body(api)["error"]["code"] == "unauthenticated"
    # A cookie naming no session is the same as none.
    bogus = run(access.session_actor(stack.ctx, request("GET", "/.sekisho/api/me",
                                                        cookie="x" * 43)))
    assert isinstance(bogus, Response) and bogus.status == 401


@pytest.mark.parametrize(("user", "role"), [
    ("sato", Role.SUPERADMIN), ("yamada", Role.HELPDESK), ("suzuki", Role.AUDITOR),
    ("kato", Role.SUPERADMIN),  # admins + auditors: the widest role wins
])
def test_a_fresh_passkey_in_an_admin_group_gets_its_role(stack: Stack, user: str,
                                                        role: Role) -> None:
    actor = _actor(stack, user)
    assert isinstance(actor, Actor)
    assert (actor.name, actor.role, actor.via, actor.source_ip) == (user, role, "session",
                                                                    OFFICE_IP)


@pytest.mark.parametrize(("methods", "age", "reason"), [
    (("pwd",), 0, "mfa-required"),  # a stolen password alone
    (("pwd", "totp"), 0, "mfa-required"),  # a TOTP code can be phished in real time
    (("pwd", "webauthn_uv"), 16 * 60, "auth-too-old"),  # proof older than 15 minutes
])
def test_without_a_fresh_passkey_an_admin_is_sent_to_step_up_with_a_passkey(
        stack: Stack, methods: tuple[str, ...], age: float, reason: str) -> None:
    token, _ = stack.session("sato", methods, age)
    page = run(access.session_actor(stack.ctx, request("GET", "/.sekisho/admin/", cookie=token)))
    assert isinstance(page, Response) and page.status == 302
    location = urlsplit(dict(page.headers)["Location"])
    assert location.path == "/.sekisho/stepup"
    assert parse_qs(location.query)["need"] == ["passkey"]
    assert parse_qs(location.query)["rd"] == ["https://wiki.localhost/.sekisho/admin/"]
    api = run(access.session_actor(stack.ctx, request("POST", "/.sekisho/api/users",
                                                      cookie=token)))
    assert isinstance(api, Response) and api.status == 401
    error = body(api)["error"]
    assert error["code"] == "step-up-required" and reason in error["details"]["reasons"]
    assert "need=passkey" in error["details"]["location"]


def test_staff_with_a_passkey_are_refused_with_reasons_not_sent_to_step_up(stack: Stack) -> None:
    token, _ = stack.session("tanaka")
    api = run(access.session_actor(stack.ctx, request("GET", "/.sekisho/api/me", cookie=token)))
    assert isinstance(api, Response) and api.status == 403
    error = body(api)["error"]
    assert error["code"] == "policy-denied"
    assert [r["code"] for r in error["details"]["reasons"]] == ["group-unauthorized"]
    page = run(access.session_actor(stack.ctx, request("GET", "/.sekisho/admin/", cookie=token,
                                                       headers=[("Accept-Language", "en")])))
    assert isinstance(page, Response) and page.status == 403
    assert b"group-unauthorized" in page.body and b'lang="en"' in page.body


def test_denials_are_audited_on_the_admin_route(stack: Stack) -> None:
    token, _ = stack.session("tanaka")
    run(access.session_actor(stack.ctx, request("GET", "/.sekisho/api/me", cookie=token)))
    decisions = [e for e in stack.events("access.decision") if e["route"] == "sekisho-admin"]
    assert [(e["user"], e["decision"], e["reasons"], e["status"]) for e in decisions] == [
        ("tanaka", "deny", ["group-unauthorized"], 403)]


def test_a_request_with_an_authorization_header_never_uses_the_cookie(stack: Stack) -> None:
    token, info = stack.session("sato")
    sent = request("GET", "/.sekisho/api/me", cookie=token,
                   headers=[("Authorization", "Bearer nonsense")])
    sent.session = info  # even when the gateway found the session
    answer = run(access.session_actor(stack.ctx, sent))
    assert isinstance(answer, Response) and answer.status == 401
    assert body(answer)["error"]["code"] == "unauthenticated"


def test_admin_policy_is_decided_under_the_internet_guardrail(custom: Stack) -> None:
    """`admins-anywhere` lets any signed-in user in; the β′ internet guardrail still wants a
    second factor from outside the office, so a remote password-only session steps up."""
    assert custom.holder.get().config.admin.policy == "admins-anywhere"
    token, _ = custom.session("sato", ("pwd",))
    office = run(access.session_actor(custom.ctx, request("GET", "/.sekisho/api/me",
                                                          cookie=token)))
    assert isinstance(office, Actor) and office.role is Role.SUPERADMIN  # `Admins` canonical
    remote = run(access.session_actor(custom.ctx, request(
        "GET", "/.sekisho/api/me", cookie=token, client_ip=REMOTE_IP)))
    assert isinstance(remote, Response) and remote.status == 401
    assert body(remote)["error"]["code"] == "step-up-required"
    assert "mfa-required" in body(remote)["error"]["details"]["reasons"]


def test_allowed_by_the_policy_but_holding_no_role_is_403(custom: Stack) -> None:
    token, _ = custom.session("guest", ("pwd",))
    answer = run(access.session_actor(custom.ctx, request("GET", "/.sekisho/api/me",
                                                          cookie=token)))
    assert isinstance(answer, Response) and answer.status == 403
    assert body(answer)["error"]["code"] == "role-none"
    staff = _actor(custom, "tanaka", methods=("pwd",))  # staff mapped to auditor here
    assert isinstance(staff, Actor) and staff.role is Role.AUDITOR


def test_session_storage_failure_is_503_never_an_allow(stack: Stack, tmp_path: Path) -> None:
    token, _ = stack.session("sato")
    broken = create_database_engine(f"sqlite:///{tmp_path}/not-migrated.db")
    try:
        ctx = AdminContext(dataclasses.replace(
            stack.identity, sessions=SessionManager(broken, stack.sessions.settings)))
        answer = run(access.session_actor(ctx, request("GET", "/.sekisho/api/me",
                                                       cookie=token)))
        assert isinstance(answer, Response) and answer.status == 503
        assert body(answer)["error"]["code"] == "storage-unavailable"
        page = run(access.session_actor(ctx, request("GET", "/.sekisho/admin/", cookie=token)))
        assert isinstance(page, Response) and page.status == 503
    finally:
        broken.dispose()


# -- tokens -----------------------------------------------------------------------------------

def _token(stack: Stack, role: str = "helpdesk", days: float = 30,
           name: str = "backup-job") -> tuple[api_tokens.TokenRecord, str]:
    now = stack.clock()
    return api_tokens.create(stack.engine, name=name, role=role, created_by="sato", now=now,
                             expires_at=now + timedelta(days=days))


def _bearer(stack: Stack, text: str, ip: str = OFFICE_IP) -> Actor | AdminError:
    stack.clock.advance(2)  # past the throttle's 1 s back-off after a failure
    sent = request("GET", "/.sekisho/api/me", headers=[("Authorization", f"Bearer {text}")],
                   client_ip=ip)
    return run(access.token_actor(stack.ctx, sent))


def test_a_valid_token_is_its_role_and_never_a_session(stack: Stack) -> None:
    record, text = _token(stack, "auditor")
    actor = _bearer(stack, text)
    assert isinstance(actor, Actor)
    assert (actor.name, actor.role, actor.via, actor.session) == (
        "token:backup-job", Role.AUDITOR, "token", record.id)


def test_every_bad_token_gets_the_same_answer(stack: Stack) -> None:
    """Unknown id, wrong secret, expired, revoked, malformed: one answer (no oracle)."""
    _, text = _token(stack)
    token_id = text.split("_")[1]
    _, expired_text = _token(stack, days=1, name="old")
    revoked, revoked_text = _token(stack, name="gone")
    api_tokens.revoke(stack.engine, revoked.id, stack.clock())
    stack.clock.advance(86400 + 1)
    wrong_secret = f"skt_{token_id}_{'A' * 43}"
    unknown = f"skt_{'0' * 16}_{text.split('_', 2)[2]}"
    bad = (wrong_secret, unknown, expired_text, revoked_text, "skt_short", "not-a-token", "")
    # One address each: the throttle (tested below) would otherwise answer the later ones.
    answers = [_bearer(stack, t, ip=f"10.0.0.{n}") for n, t in enumerate(bad)]
    assert all(isinstance(a, AdminError) for a in answers)
    assert {(a.status, str(a.as_json("ja"))) for a in answers  # type: ignore[union-attr]
            } == {(401, str(access.token_invalid().as_json("ja")))}
    assert isinstance(_bearer(stack, text), Actor)  # the live one still works
    sent = request("GET", "/.sekisho/api/me", headers=[("Authorization", "Basic abc")])
    assert isinstance(run(access.token_actor(stack.ctx, sent)), AdminError)


def test_failed_tokens_are_throttled_per_address(stack: Stack) -> None:
    _, text = _token(stack)
    for _ in range(5):  # throttle.ip_max_failures in the test file
        assert isinstance(_bearer(stack, "skt_" + "f" * 16 + "_" + "x" * 43), AdminError)
    locked = _bearer(stack, text)
    assert isinstance(locked, AdminError) and (locked.status, locked.code) == (429, "throttled")
    assert isinstance(_bearer(stack, text, ip="10.9.8.7"), Actor)  # another address is free
    stack.clock.advance(15 * 60)
    assert isinstance(_bearer(stack, text), Actor)  # the lock ran out
    assert any(e["key"] == "api-ip:127.0.0.1" for e in stack.events("signin.lockout"))


def test_last_used_is_written_at_most_once_a_minute(stack: Stack) -> None:
    record, text = _token(stack)
    assert api_tokens.get(stack.engine, record.id).last_used_at is None  # type: ignore[union-attr]
    _bearer(stack, text)
    first = api_tokens.get(stack.engine, record.id).last_used_at  # type: ignore[union-attr]
    assert first is not None
    _bearer(stack, text)
    assert api_tokens.get(stack.engine, record.id).last_used_at == first  # type: ignore[union-attr]
    stack.clock.advance(60)
    _bearer(stack, text)
    assert api_tokens.get(stack.engine, record.id).last_used_at > first  # type: ignore[union-attr,operator]


def test_token_storage_failure_is_503(stack: Stack, tmp_path: Path) -> None:
    _, text = _token(stack)
    broken = create_database_engine(f"sqlite:///{tmp_path}/not-migrated.db")
    try:
        ctx = AdminContext(dataclasses.replace(stack.identity, engine=broken))
        sent = request("GET", "/.sekisho/api/me", headers=[("Authorization", f"Bearer {text}")])
        answer = run(access.token_actor(ctx, sent))
        assert isinstance(answer, AdminError) and answer.status == 503
    finally:
        broken.dispose()
