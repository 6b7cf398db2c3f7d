"""`authenticated: true` — the request comes with a valid signed-in session.

Only `true` is accepted: "signed out" is written `not: [{authenticated: true}]`, so the
reason codes keep one meaning each (`user-authenticated` is always about a signed-in user).
"""

from __future__ import annotations

from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, timeless, true_only
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts

_check = true_only("authenticated")


def _is_authenticated(facts: Facts) -> bool:
    return facts.authenticated is True


def _compile(argument: Any, path: Path) -> Predicate:
    _check(argument, path)
    return _is_authenticated


CRITERION = Criterion(
    name="authenticated",
    passed_reason="user-authenticated",
    failed_reason="user-unauthenticated",
    summary_ja="サインイン済みのユーザーに一致します。",
    summary_en="Matches a signed-in user.",
    compile=_compile,
    reads_clock=timeless,
)
