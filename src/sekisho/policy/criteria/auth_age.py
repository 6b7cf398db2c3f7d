"""`auth_age: SECONDS | "15m"` — the last proof of identity is at most this old.

The proof is the later of the sign-in and the last second-factor proof (step-up), so a
route can demand a fresh proof without ending the session: the gateway sends the user to
step up and back.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, expect
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h)?\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, None: 1}


def _seconds(argument: Any, path: Path) -> int:
    if isinstance(argument, int) and not isinstance(argument, bool):
        seconds = argument
    elif isinstance(argument, str) and (match := _DURATION.match(argument)):
        seconds = int(match.group(1)) * _UNIT[match.group(2)]
    else:
        raise expect(
            path,
            f"expected a number of seconds or a duration like '15m', got {argument!r}",
            f"秒数、または '15m' のような時間を指定してください。指定値: {argument!r}",
        )
    if seconds <= 0:
        raise expect(path, f"expected a duration longer than zero, got {argument!r}",
                     f"0 より長い時間を指定してください。指定値: {argument!r}")
    return seconds


def _compile(argument: Any, path: Path) -> Predicate:
    limit = timedelta(seconds=_seconds(argument, path))

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
