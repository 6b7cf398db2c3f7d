"""`http_method: METHOD | [METHODS]` — the request's HTTP method, case-insensitive."""

from __future__ import annotations

import re
from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, expect, string_list, timeless
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts

_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,31}")


def _method(value: str, path: Path) -> str:
    if not _TOKEN.fullmatch(value):
        raise expect(
            path,
            f"expected an HTTP method such as GET or POST, got {value!r}",
            f"GET や POST などの HTTP メソッドを指定してください。指定値: {value!r}",
        )
    return value.upper()


def _compile(argument: Any, path: Path) -> Predicate:
    methods = frozenset(string_list(argument, path, "an HTTP method", "HTTP メソッド", _method))

    def http_method(facts: Facts) -> bool:
        return facts.method.upper() in methods

    return http_method


CRITERION = Criterion(
    name="http_method",
    passed_reason="http-method-allowed",
    failed_reason="http-method-denied",
    summary_ja="HTTP メソッドが一覧のいずれかと一致します（大文字・小文字を区別しない）。",
    summary_en="Matches when the HTTP method is one of those listed (case-insensitive).",
    compile=_compile,
    reads_clock=timeless,
)
