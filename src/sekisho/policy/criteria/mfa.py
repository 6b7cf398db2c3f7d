"""`mfa: true | METHOD | [METHODS]` — the session holds a second-factor proof.

`true` accepts any second factor; a list names the acceptable ones (e.g. `webauthn_uv` for
a passkey with user verification). A password alone never matches, whatever the list says.
"""

from __future__ import annotations

from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, expect, string_list
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts

# Second-factor methods a session can carry (identity's vocabulary). "pwd" and "oidc" are
# primary proofs and deliberately absent.
SECOND_FACTORS = frozenset({"totp", "recovery", "webauthn", "webauthn_uv", "idp_mfa"})


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


def _compile(argument: Any, path: Path) -> Predicate:
    if argument is True:
        accepted = SECOND_FACTORS
    else:
        accepted = frozenset(string_list(
            argument, path, "true or a second-factor method", "true または 2 段階目の方式",
            _method))
    disjoint = accepted.isdisjoint

    def mfa(facts: Facts) -> bool:
        return facts.authenticated is True and not disjoint(facts.auth_methods)

    return mfa


CRITERION = Criterion(
    name="mfa",
    passed_reason="mfa-satisfied",
    failed_reason="mfa-required",
    summary_ja="セッションが指定の 2 段階目の認証 (TOTP・パスキーなど) を済ませていれば"
    "一致します。",
    summary_en="Matches when the session holds one of the listed second factors "
    "(TOTP, passkey …).",
    compile=_compile,
)
