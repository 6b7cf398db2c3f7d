"""`auth_age: SECONDS | "15m"` — the last proof of identity is at most this old.

The proof is the later of the sign-in and the last second-factor proof (step-up), so a
route can demand a fresh proof without ending the session: the gateway sends the user to
step up and back. Any method counts here; to ask for one method proven recently (a passkey
within 15 minutes, not a TOTP), write `mfa: {methods: [...], within: 15m}`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, duration_seconds
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts


def _compile(argument: Any, path: Path) -> Predicate:
    limit = timedelta(seconds=duration_seconds(argument, path))

    def auth_age(facts: Facts) -> bool:
        proved = facts.auth_time
        return facts.authenticated is True and proved is not None and \
            facts.now - proved <= limit

    return auth_age


CRITERION = Criterion(
    name="auth_age",
    passed_reason="auth-fresh",
    failed_reason="auth-too-old",
    summary_ja="最後の本人確認 (サインインまたは 2 段階目) から指定の時間内なら一致します。",
    summary_en="Matches when the last proof of identity (sign-in or second factor) is "
    "recent enough.",
    compile=_compile,
)
