"""`idp: ID | [IDS]` — the session was signed in through one of these identity providers.

`local` names Sekisho's own accounts (password or passkey sign-in without an IdP).
"""

from __future__ import annotations

from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, string_list, timeless
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts


def _compile(argument: Any, path: Path) -> Predicate:
    accepted = frozenset(string_list(argument, path, "an identity provider id", "IdP の ID"))

    def idp(facts: Facts) -> bool:
        return facts.authenticated is True and (facts.idp or "local") in accepted

    return idp


CRITERION = Criterion(
    name="idp",
    passed_reason="idp-authorized",
    failed_reason="idp-unauthorized",
    summary_ja="指定の IdP (`local` は Sekisho 自身のアカウント) でサインインしていれば"
    "一致します。",
    summary_en="Matches when the session was signed in through a listed identity provider "
    "(`local`: Sekisho's own accounts).",
    compile=_compile,
    reads_clock=timeless,
)
