"""Claims → Sekisho user: e-mail rules, group mapping, MFA assertion, identity binding; the
sign-in page buttons and per-route IdP choice; the configuration of identity providers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from sekisho.config import parse_config
from sekisho.config.model import Config, IdentityProvider, Route
from sekisho.config.problems import InvalidConfig
from sekisho.identity.csrf import CsrfProtector
from sekisho.identity.oidc import direct_signin_location, signin_buttons
from sekisho.identity.oidc.claims import check_email, map_claims, resolve_user
from sekisho.identity.oidc.errors import OidcError
from sekisho.identity.oidc.idtoken import IdTokenClaims
from sekisho.identity.pages import PageKit
from sekisho.storage import users
from sekisho.web import Request

IDP = IdentityProvider(id="city", issuer="https://idp.example", client_id="c", jit=True)
NOW = datetime(2026, 4, 1, tzinfo=UTC)


def _token(sub: str = "s-1", **claims: Any) -> IdTokenClaims:
    base = {"sub": sub, "email": "tanaka@city.example.jp", "email_verified": True}
    return IdTokenClaims(sub=sub, claims={**base, **claims})


@pytest.mark.parametrize(("value", "expected"), [
    ("Tanaka@City.Example.JP", "Tanaka@city.example.jp"),
    ("ｔａｎａｋａ@city.example.jp", "tanaka@city.example.jp"),  # full-width, as an IME types
    ("a@b@city.example.jp", "email-invalid"),
    ("no-at-sign", "email-invalid"),
    ("a@localhost", "email-invalid"),
    ("a..b@city.example.jp", "email-invalid"),
    ("a b@city.example.jp", "email-invalid"),
    ("", "email-missing"),
    (None, "email-missing"),
    (["a@city.example.jp"], "email-missing"),
])
def test_email_rules(value, expected):
    if "@" in expected:
        assert check_email(value) == expected
    else:
        with pytest.raises(OidcError) as caught:
            check_email(value)
        assert caught.value.code == expected


@pytest.mark.parametrize(("claims", "reason"), [
    ({"email_verified": False}, "email-unverified"),
    ({"email_verified": "false"}, "email-unverified"),
    ({"email_verified": None}, "email-unverified"),
])
def test_unverified_email_is_refused(claims, reason):
    with pytest.raises(OidcError) as caught:
        map_claims(IDP, _token(**claims))
    assert caught.value.code == reason


def test_entra_style_verified_claim_and_domain_restriction():
    entra = dataclasses.replace(IDP, email_verified_claim="xms_edov",
                                email_domains=("city.example.jp",))
    assert map_claims(entra, _token(email_verified=None, xms_edov=True)).email
    with pytest.raises(OidcError) as caught:
        map_claims(entra, _token(email="x@evil.example", xms_edov=True))
    assert caught.value.code == "email-domain"
    with pytest.raises(OidcError):  # a sub-domain is another domain
        map_claims(entra, _token(email="x@sub.city.example.jp", xms_edov=True))


def test_groups_mapping_defaults_and_mfa_assertion():
    mapped = map_claims(dataclasses.replace(IDP, groups=("Staff",)),
                        _token(groups=["Finance", "bad name!", 7], amr=["pwd"]))
    assert mapped.groups == frozenset({"finance", "staff"})
    assert mapped.idp_mfa is False
    entra = dataclasses.replace(IDP, group_map={"0f1e-guid": "finance"}, group_claim="roles",
                                mfa_acr=("urn:city:mfa",))
    mapped = map_claims(entra, _token(roles=["0f1e-guid", "unmapped"], acr="urn:city:mfa"))
    assert mapped.groups == frozenset({"finance"})
    assert mapped.idp_mfa is True
    assert map_claims(IDP, _token(amr=["pwd", "hwk"])).idp_mfa is True
    assert map_claims(IDP, _token(amr="mfa")).idp_mfa is True


def test_binding_to_sub_and_refusal_of_another_sub_for_the_same_account(
        oidc_engine: Engine) -> None:
    user, events = resolve_user(oidc_engine, IDP, map_claims(IDP, _token("s-1")), NOW)
    assert user.username == "tanaka@city.example.jp"
    assert [e.event_type for e in events] == ["user.changed"]
    # The e-mail changes at the IdP: the account follows the sub.
    moved = map_claims(IDP, _token("s-1", email="hanako@city.example.jp"))
    assert resolve_user(oidc_engine, IDP, moved, NOW)[0].id == user.id
    # A re-created IdP account (new sub) with the old e-mail must not inherit the account.
    with pytest.raises(OidcError) as caught:
        resolve_user(oidc_engine, IDP, map_claims(IDP, _token("s-2")), NOW)
    assert caught.value.code == "identity-conflict"


def test_existing_local_account_is_matched_by_email_and_disabled_is_refused(
        oidc_engine: Engine) -> None:
    local = users.create_user(oidc_engine, "suzuki", email="Suzuki@city.example.jp")
    no_jit = dataclasses.replace(IDP, jit=False)
    found, events = resolve_user(oidc_engine, no_jit,
                                 map_claims(no_jit, _token(email="suzuki@city.example.jp")),
                                 NOW)
    assert found.id == local.id and events == []
    users.set_disabled(oidc_engine, "suzuki", True)
    with pytest.raises(OidcError) as caught:
        resolve_user(oidc_engine, no_jit,
                     map_claims(no_jit, _token(email="suzuki@city.example.jp")), NOW)
    assert caught.value.code == "user-disabled"
    with pytest.raises(OidcError) as caught:
        resolve_user(oidc_engine, no_jit, map_claims(no_jit, _token(
            "s-9", email="nobody@city.example.jp")), NOW)
    assert caught.value.code == "user-unknown"


def _config(route_idp: str = "") -> Config:
    return Config(source="<t>", identity_providers=(
        IDP, dataclasses.replace(IDP, id="entra", title="Microsoft Entra ID")),
        routes=(Route(id="app", host="app.city.example", path_prefix="/", to="http://u",
                      policy="p"),
                Route(id="mn", host="app.city.example", path_prefix="/mynumber",
                      to="http://u", policy="p", idp=route_idp)))


def test_route_idp_goes_straight_to_its_idp_and_buttons_list_every_idp():
    config = _config("entra")
    assert direct_signin_location(config, "https://app.city.example/mynumber/x") == \
        "/.sekisho/oidc/start?idp=entra&rd=https%3A%2F%2Fapp.city.example%2Fmynumber%2Fx"
    assert direct_signin_location(config, "https://app.city.example/other") is None
    assert direct_signin_location(config, "https://app.city.example/mynumberx") is None
    assert direct_signin_location(_config(""), "https://app.city.example/mynumber") is None
    buttons = signin_buttons(config, "/x")
    assert [(b.id, b.title) for b in buttons] == [("city", "city"),
                                                  ("entra", "Microsoft Entra ID")]
    kit = PageKit(current_config=lambda: config, csrf=CsrfProtector(b"k" * 32))
    request = Request("GET", "/.sekisho/signin", "/.sekisho/signin", "", [], "127.0.0.1",
                      "https", "app.city.example")
    page = kit.render(request, "signin.html", "Sign in", csrf="t", rd="/x", username="",
                      signed_in_as="", idp_buttons=buttons).body.decode()
    assert "Microsoft Entra ID でサインイン" in page
    assert 'href="/.sekisho/oidc/start?idp=entra&amp;rd=%2Fx"' in page
    plain = kit.render(request, "signin.html", "Sign in", csrf="t", rd="", username="",
                       signed_in_as="").body.decode()
    assert "oidc/start" not in plain


YAML = """
tls: {enabled: false}
identity_providers:
  - id: entra
    title: Microsoft Entra ID
    issuer: https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0
    client_id: 11111111-2222-3333-4444-555555555555
    client_secret: env:SEKISHO_TEST_ENTRA_SECRET
    email_verified_claim: xms_edov
    group_map: {"6f0e0000-0000-0000-0000-000000000001": staff}
    require_mfa: true
policies: {p: {allow: {and: [{always: true}]}}}
routes:
  - {id: app, from: "http://app.city.example/", to: "http://127.0.0.1:9", segment: internet,
     policy: p, idp: entra}
"""


def test_yaml_configuration_with_a_secret_reference(monkeypatch):
    monkeypatch.setenv("SEKISHO_TEST_ENTRA_SECRET", "s3cret-value")
    config = parse_config(YAML)
    idp = config.identity_providers[0]
    assert idp.client_secret is not None and idp.client_secret.reveal() == "s3cret-value"
    assert "s3cret-value" not in repr(idp)
    assert idp.require_mfa and idp.group_map == {"6f0e0000-0000-0000-0000-000000000001": "staff"}
    assert config.routes[0].idp == "entra"


@pytest.mark.parametrize(("change", "field"), [
    ("issuer: http://idp.city.example", "issuer"),
    ("issuer: http://127.0.0.1:8080", "issuer"),  # loopback, but no explicit allowance
    ("algorithms: [HS256]", "algorithms"),
    ("algorithms: [none]", "algorithms"),
    ("scopes: [email]", "scopes"),
    ("client_auth: client_secret_basic\n    client_secret: null", "client_secret"),
])
def test_unsafe_identity_provider_settings_are_refused(monkeypatch, change, field):
    monkeypatch.setenv("SEKISHO_TEST_ENTRA_SECRET", "x")
    text = YAML.replace("    require_mfa: true", "    " + change)
    if change.startswith("issuer"):
        text = text.replace("    issuer: https://login.microsoftonline.com/00000000-0000-0000-"
                            "0000-000000000000/v2.0\n", "")
    if "client_secret: null" in change:
        text = text.replace("    client_secret: env:SEKISHO_TEST_ENTRA_SECRET\n", "")
    with pytest.raises(InvalidConfig) as caught:
        parse_config(text)
    assert field in str(caught.value)


def test_loopback_http_issuer_needs_the_explicit_allowance_and_route_idp_must_exist():
    text = YAML.replace("    require_mfa: true", "    allow_insecure_http_for_loopback: true")
    text = text.replace("issuer: https://login.microsoftonline.com/00000000-0000-0000-0000-"
                        "000000000000/v2.0", "issuer: http://127.0.0.1:8080")
    text = text.replace("client_secret: env:SEKISHO_TEST_ENTRA_SECRET", "client_auth: none")
    assert parse_config(text).identity_providers[0].issuer == "http://127.0.0.1:8080"
    with pytest.raises(InvalidConfig) as caught:
        parse_config(text.replace("idp: entra}", "idp: google}"))
    assert "google" in str(caught.value)
