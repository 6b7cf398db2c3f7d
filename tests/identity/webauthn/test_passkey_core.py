"""Passkey ceremonies against real storage, with a software authenticator (no mocks)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from passkey_softkey import SoftKey

from sekisho.config.loader import load_config
from sekisho.config.model import (
    Config,
    ListenAddress,
    PortalSettings,
    Route,
    ServerSettings,
    WebAuthnSettings,
)
from sekisho.config.problems import InvalidConfig
from sekisho.identity.passkeys import Passkeys, RelyingParty, binding_of, relying_party
from sekisho.storage import users
from sekisho.storage import webauthn as store

HOST = "app.city.lg.jp"
ORIGIN = f"https://{HOST}"
RP = RelyingParty(HOST, "Sekisho", (ORIGIN,))
FLOW, OTHER = binding_of("flow", "a"), binding_of("flow", "b")
SESSION = binding_of("session", "s1")


@pytest.fixture
def setup(engine, clock):
    alice = users.create_user(engine, "alice").id
    bob = users.create_user(engine, "bob").id
    return Passkeys(engine, b"k" * 32, clock), alice, bob


def _register(passkeys, user_id, key=None, *, uv=False, name="laptop"):
    key = key or SoftKey(ORIGIN)
    options = passkeys.registration_options(RP, user_id=user_id, username="u", display_name="",
                                            binding=SESSION, uv_required=uv)
    outcome = passkeys.verify_registration(RP, user_id=user_id, binding=SESSION,
                                           credential_json=json.dumps(key.create(options)),
                                           uv_required=uv, name=name)
    return key, outcome


def _assert(passkeys, key, user_id, *, binding=FLOW, uv=False, expect=None, **get):
    options = passkeys.authentication_options(RP, user_id=user_id, purpose="mfa",
                                              binding=binding, uv_required=uv)
    answer = json.dumps(key.get(options, **get))
    return answer, passkeys.verify_assertion(RP, credential_json=answer, purpose="mfa",
                                             binding=binding, uv_required=uv,
                                             user_id=expect if expect is not None else user_id)


def test_register_then_authenticate(setup):
    passkeys, alice, _ = setup
    key, registered = _register(passkeys, alice)
    assert registered.ok and registered.credential.name == "laptop"
    assert registered.credential.transports == ("internal",)
    assert passkeys.enrolled(passkeys._engine, alice)
    options = json.loads(passkeys.authentication_options(
        RP, user_id=alice, purpose="mfa", binding=FLOW, uv_required=False))
    assert [c["id"] for c in options["allowCredentials"]] == [registered.credential.credential_id]
    _, outcome = _assert(passkeys, key, alice)
    assert outcome.ok and outcome.user_verified and outcome.received_count == 1
    assert store.find_credential(passkeys._engine, outcome.credential.credential_id).sign_count == 1


def test_challenge_is_single_use_bound_and_short_lived(setup, clock):
    passkeys, alice, _ = setup
    key, _ = _register(passkeys, alice)
    answer, first = _assert(passkeys, key, alice)
    assert first.ok
    replay = passkeys.verify_assertion(RP, credential_json=answer, purpose="mfa", binding=FLOW,
                                       uv_required=False, user_id=alice)
    assert replay.reason == "challenge-invalid"  # replayed assertion: the challenge is gone
    options = passkeys.authentication_options(RP, user_id=alice, purpose="mfa", binding=FLOW,
                                              uv_required=False)
    stolen = json.dumps(key.get(options))
    assert passkeys.verify_assertion(RP, credential_json=stolen, purpose="mfa", binding=OTHER,
                                     uv_required=False, user_id=alice).reason == \
        "challenge-invalid"  # carried to another flow / browser
    assert passkeys.verify_assertion(RP, credential_json=stolen, purpose="passwordless",
                                     binding=FLOW, uv_required=False, user_id=alice).reason == \
        "challenge-invalid"  # another purpose
    clock.advance(181)
    assert passkeys.verify_assertion(RP, credential_json=stolen, purpose="mfa", binding=FLOW,
                                     uv_required=False, user_id=alice).reason == \
        "challenge-invalid"  # expired


def test_phishing_origin_and_wrong_rp_are_refused(setup):
    passkeys, alice, _ = setup
    key, _ = _register(passkeys, alice)
    _, phished = _assert(passkeys, key, alice, origin="https://app.city.lg.jp.evil.example")
    assert phished.reason == "invalid-assertion"
    _, other_rp = _assert(passkeys, key, alice, rp_id="evil.example")
    assert other_rp.reason == "invalid-assertion"
    _, bad = key, passkeys.verify_registration(RP, user_id=alice, binding=SESSION,
                                               credential_json="{not json", uv_required=False,
                                               name="x")
    assert bad.reason == "malformed"


def test_sign_count_regression_is_refused_and_not_recorded(setup):
    passkeys, alice, _ = setup
    key, _ = _register(passkeys, alice)
    assert _assert(passkeys, key, alice, counter=5)[1].ok
    _, cloned = _assert(passkeys, key, alice, counter=5)
    assert cloned.reason == "sign-count" and cloned.received_count == 5
    _, lower = _assert(passkeys, key, alice, counter=2)
    assert lower.reason == "sign-count"
    assert store.find_credential(passkeys._engine, cloned.credential.credential_id).sign_count == 5
    assert _assert(passkeys, key, alice, counter=6)[1].ok


def test_counterless_authenticators_stay_usable(setup):
    passkeys, alice, _ = setup
    key, _ = _register(passkeys, alice)
    assert _assert(passkeys, key, alice, counter=0)[1].ok
    assert _assert(passkeys, key, alice, counter=0)[1].ok


def test_another_users_passkey_and_wrong_user_handle(setup):
    passkeys, alice, bob = setup
    key, _ = _register(passkeys, alice)
    _register(passkeys, bob)
    options = passkeys.authentication_options(RP, user_id=bob, purpose="mfa", binding=FLOW,
                                              uv_required=False)
    answer = json.dumps(key.get(options))
    assert passkeys.verify_assertion(RP, credential_json=answer, purpose="mfa", binding=FLOW,
                                     uv_required=False, user_id=bob).reason == \
        "unknown-credential"
    _, swapped = _assert(passkeys, key, alice, user_handle=passkeys.user_handle(bob))
    assert swapped.reason == "invalid-assertion"


def test_user_verification_required(setup):
    passkeys, alice, _ = setup
    no_uv = SoftKey(ORIGIN, uv=False)
    _, refused = _register(passkeys, alice, no_uv, uv=True)
    assert refused.reason == "invalid-registration"
    _, registered = _register(passkeys, alice, no_uv, uv=False)
    assert registered.ok
    _, outcome = _assert(passkeys, no_uv, alice, uv=True)
    assert outcome.reason == "invalid-assertion"
    _, outcome = _assert(passkeys, no_uv, alice, uv=False)
    assert outcome.ok and not outcome.user_verified


def test_duplicate_registration(setup):
    passkeys, alice, bob = setup
    key, _ = _register(passkeys, alice)
    _, again = _register(passkeys, bob, key)
    assert again.reason == "duplicate"


def test_passwordless_needs_a_user_handle(setup):
    passkeys, alice, _ = setup
    key, _ = _register(passkeys, alice)
    browser = binding_of("browser", "x")
    options = passkeys.authentication_options(RP, user_id=None, purpose="passwordless",
                                              binding=browser, uv_required=True)
    assert json.loads(options)["allowCredentials"] == []
    answer = key.get(options)
    answer["response"]["userHandle"] = None
    outcome = passkeys.verify_assertion(RP, credential_json=json.dumps(answer),
                                        purpose="passwordless", binding=browser,
                                        uv_required=True)
    assert outcome.reason == "invalid-assertion"
    options = passkeys.authentication_options(RP, user_id=None, purpose="passwordless",
                                              binding=browser, uv_required=True)
    outcome = passkeys.verify_assertion(RP, credential_json=json.dumps(key.get(options)),
                                        purpose="passwordless", binding=browser,
                                        uv_required=True)
    assert outcome.ok and outcome.credential.user_id == alice


def _config(**webauthn):
    return Config(source="t", routes=(
        Route(id="a", host=HOST, path_prefix="/", to="http://127.0.0.1:9"),
        Route(id="b", host="wiki.city.lg.jp", path_prefix="/", to="http://127.0.0.1:9")),
        server=ServerSettings(listen=(ListenAddress("0.0.0.0", 8443),)),
        webauthn=WebAuthnSettings(**webauthn))


def test_relying_party_defaults_to_the_visited_route_host():
    rp = relying_party(_config(), HOST)
    assert rp == RelyingParty(HOST, "Sekisho", (ORIGIN, ORIGIN + ":8443"))
    assert relying_party(_config(), "127.0.0.1") is None  # not a route: no passkeys
    assert relying_party(_config(), "evil.example") is None


def test_relying_party_from_config():
    shared = relying_party(_config(rp_id="city.lg.jp"), "wiki.city.lg.jp")
    assert shared is not None and shared.id == "city.lg.jp"
    assert "https://wiki.city.lg.jp" in shared.origins and ORIGIN in shared.origins
    listed = relying_party(_config(rp_id="city.lg.jp", origins=("https://sso.city.lg.jp",)),
                           HOST)
    assert listed is not None and listed.origins == ("https://sso.city.lg.jp",)
    assert relying_party(_config(rp_id="city.lg.jp"), "evil.example") is None
    assert relying_party(replace(_config(), routes=()), HOST) is None


PORTAL = "portal.city.lg.jp"


def _with_portal(config, host=PORTAL):
    return replace(config, portal=PortalSettings(host=host))


def test_relying_party_on_the_portal_host():
    # No route serves the portal host, yet staff sign in there (portal.host).
    own = relying_party(_with_portal(_config()), PORTAL)
    assert own == RelyingParty(PORTAL, "Sekisho", (f"https://{PORTAL}", f"https://{PORTAL}:8443"))
    assert relying_party(_config(), PORTAL) is None  # not configured: nobody's host
    # A shared RP ID derives its origins from the route hosts and the portal host ...
    shared = relying_party(_with_portal(_config(rp_id="city.lg.jp")), PORTAL)
    assert shared is not None and f"https://{PORTAL}" in shared.origins
    assert ORIGIN in shared.origins
    # ... but a portal host outside the RP ID is no origin of it (the browser would refuse).
    outside = relying_party(_with_portal(_config(rp_id="city.lg.jp"), "portal.example.jp"),
                            HOST)
    assert outside is not None and "https://portal.example.jp" not in outside.origins
    # Origins the administrator listed are the whole list: the portal host is not added.
    listed = relying_party(_with_portal(_config(rp_id="city.lg.jp",
                                                origins=("https://sso.city.lg.jp",))), PORTAL)
    assert listed is not None and listed.origins == ("https://sso.city.lg.jp",)
    # The other hosts are still refused on a gateway with a portal host.
    assert relying_party(_with_portal(_config()), "evil.example") is None


def test_a_passkey_ceremony_on_the_portal_host(setup):
    passkeys, alice, _ = setup
    rp = relying_party(_with_portal(_config()), PORTAL)
    assert rp is not None
    key = SoftKey(f"https://{PORTAL}")
    options = passkeys.registration_options(rp, user_id=alice, username="u", display_name="",
                                            binding=SESSION, uv_required=False)
    registered = passkeys.verify_registration(
        rp, user_id=alice, binding=SESSION, credential_json=json.dumps(key.create(options)),
        uv_required=False, name="portal")
    assert registered.ok, registered.reason
    # A phishing page elsewhere cannot use the portal host's RP.
    phished = SoftKey("https://portal.city.lg.jp.evil.example")
    options = passkeys.registration_options(rp, user_id=alice, username="u", display_name="",
                                            binding=SESSION, uv_required=False)
    refused = passkeys.verify_registration(
        rp, user_id=alice, binding=SESSION, credential_json=json.dumps(phished.create(options)),
        uv_required=False, name="phished")
    assert not refused.ok


TLS = "tls:\n  enabled: false\n"


def test_config_section(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(TLS + "webauthn:\n  rp_id: City.LG.jp\n  origins: ['https://app.city.lg.jp']\n"
                    "  user_verification: required\n  passwordless: true\n", encoding="utf-8")
    settings = load_config(path).webauthn
    assert settings.rp_id == "city.lg.jp" and settings.origins == ("https://app.city.lg.jp",)
    assert settings.user_verification == "required" and settings.passwordless
    assert settings.require_uv_groups == ("admins",)
    path.write_text(TLS + "webauthn:\n  rp_id: city.lg.jp\n  origins: ['https://evil.example']\n",
                    encoding="utf-8")
    with pytest.raises(InvalidConfig) as refused:
        load_config(path)
    assert "rp_id" in str(refused.value)
    path.write_text(TLS + "webauthn:\n  rp_id: app.city.lg.jp\n"
                    "  origins: ['http://app.city.lg.jp']\n", encoding="utf-8")
    with pytest.raises(InvalidConfig):
        load_config(path)


def test_reset_factors_removes_passkeys(database_url, engine):
    passkeys = Passkeys(engine, b"k" * 32, lambda: datetime.now(UTC))
    alice = users.create_user(engine, "alice").id
    _register(passkeys, alice)
    _register(passkeys, alice)
    done = subprocess.run(
        [sys.executable, "-m", "sekisho", "user", "reset-factors", "alice", "--database-url",
         database_url], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "2" in done.stdout and not store.list_credentials(engine, alice)
