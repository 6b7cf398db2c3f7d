"""`mfa: true | METHOD | [METHODS] | {methods: …, within: DURATION}` — a second-factor proof.

`true` accepts any second factor; a list names the acceptable ones (e.g. `webauthn_uv` for
a passkey with user verification). A password alone never matches, whatever the list says.

The mapping form asks when: one of `methods` (default: any second factor) was itself proven
at most `within` ago. `auth_age` cannot say that: it measures the latest proof of any kind,
so a passkey used hours ago and a TOTP a minute ago would pass `mfa: [webauthn_uv]` AND
`auth_age: 15m` — a phished TOTP standing in for the passkey. The mapping form reads each
method's own proof time (`Facts.proofs`) and reports `mfa-required` when none of the methods
was ever proven and `auth-too-old` when the latest was too long ago, so the gateway still
offers the step-up that cures it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sekisho.policy.criteria._base import (
    Check,
    Compiled,
    Criterion,
    duration_seconds,
    expect,
    string_list,
)
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts

# Second-factor methods a session can carry (identity's vocabulary). "pwd" and "oidc" are
# primary proofs and deliberately absent.
SECOND_FACTORS = frozenset({"totp", "recovery", "webauthn", "webauthn_uv", "idp_mfa"})
TIMED_KEYS = ("methods", "within")


def _method(value: str, path: Path) -> str:
    if value not in SECOND_FACTORS:
        raise expect(
            path,
            f"unknown second factor {value!r} (expected one of: "
            f"{', '.join(sorted(SECOND_FACTORS))})",
            f"不明な 2 段階目の方式 {value!r} です（{', '.join(sorted(SECOND_FACTORS))} の"
            "いずれか）",
        )
    return value


def _methods(argument: Any, path: Path) -> frozenset[str]:
    if argument is True:
        return SECOND_FACTORS
    return frozenset(string_list(
        argument, path, "true or a second-factor method", "true または 2 段階目の方式", _method))


def _compile(argument: Any, path: Path) -> Compiled:
    if isinstance(argument, Mapping):
        return _timed(argument, path)
    disjoint = _methods(argument, path).isdisjoint

    def mfa(facts: Facts) -> bool:
        return facts.authenticated is True and not disjoint(facts.auth_methods)

    return mfa


def _timed(argument: Mapping[Any, Any], path: Path) -> tuple[Check, ...]:
    """`{methods, within}`: proven at all (mfa-required), then recently (auth-too-old)."""
    unknown = [key for key in argument if key not in TIMED_KEYS]
    if unknown:
        raise expect(
            (*path, str(unknown[0])),
            f"unknown key {unknown[0]!r} (expected 'methods' and 'within')",
            f"不明なキー {unknown[0]!r} です（'methods' と 'within' を指定します）",
        )
    if "within" not in argument:
        raise expect(
            path,
            "expected 'within' (e.g. {methods: [webauthn_uv], within: 15m}); without a time, "
            "write the list form (mfa: [webauthn_uv])",
            "'within' を指定してください（例 {methods: [webauthn_uv], within: 15m}）。時間を"
            "問わないときはリストの形（mfa: [webauthn_uv]）で書きます",
        )
    accepted = tuple(sorted(_methods(argument.get("methods", True), (*path, "methods"))))
    limit = timedelta(seconds=duration_seconds(argument["within"], (*path, "within")))

    def proven(facts: Facts) -> bool:
        proofs = facts.proofs
        return facts.authenticated is True and any(method in proofs for method in accepted)

    def fresh(facts: Facts) -> bool:
        if facts.authenticated is not True:
            return False
        proofs, now = facts.proofs, facts.now
        for method in accepted:
            when = proofs.get(method)
            if when is not None and now - when <= limit:
                return True
        return False

    return (Check(proven, "mfa-satisfied", "mfa-required"),
            Check(fresh, "auth-fresh", "auth-too-old"))


CRITERION = Criterion(
    name="mfa",
    passed_reason="mfa-satisfied",
    failed_reason="mfa-required",
    summary_ja="セッションが指定の 2 段階目の認証 (TOTP・パスキーなど) を済ませていれば"
    "一致します。{methods, within} の形では、その方式自体の本人確認が指定の時間内であることも"
    "求めます。",
    summary_en="Matches when the session holds one of the listed second factors "
    "(TOTP, passkey …); in the {methods, within} form, one of them proven within that time.",
    compile=_compile,
    reads_clock=lambda argument: isinstance(argument, Mapping),  # only the timed form
    extra_reasons=("auth-fresh", "auth-too-old"),
)
