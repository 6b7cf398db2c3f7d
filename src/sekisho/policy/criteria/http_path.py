"""`http_path: {prefix: P} | {exact: P} | [ ... ]` — the normalised request path.

Prefixes match on segment boundaries: `/admin` covers `/admin` and `/admin/…` but not
`/administrator`, the classic prefix-confusion bypass of string `startswith`. Listed paths
must themselves be normalised (no `.`/`..` segments, `//`, `\\`, `?`, `#` or control
characters): the gateway matches on the normalised path, so such a rule could never match
and would only hide a mistake.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sekisho.policy.criteria._base import (
    Criterion,
    Predicate,
    expect,
    is_list,
    timeless,
    type_name,
)
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts

_KINDS = ("prefix", "exact")
_EXPECTED_EN = "expected {prefix: /path} or {exact: /path}, or a non-empty list of them"
_EXPECTED_JA = "{prefix: /パス} か {exact: /パス}、またはその空でないリストを指定してください"


def _check_path(value: Any, path: Path) -> str:
    bad = (
        not isinstance(value, str)
        or not value.startswith("/")
        or "//" in value
        or any(ch in value for ch in "?#\\")
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)
        or any(segment in (".", "..") for segment in value.split("/"))
    )
    if bad:
        raise expect(
            path,
            f"expected a normalised path starting with '/' (no '.' or '..' segments, '//', "
            f"'\\', '?', '#' or control characters), got {value!r}",
            f"'/' で始まる正規化済みのパスを指定してください（'.' や '..' のセグメント、'//'、"
            f"'\\'、'?'、'#'、制御文字は使えません）。指定値: {value!r}",
        )
    return str(value)


def _compile(argument: Any, path: Path) -> Predicate:
    if isinstance(argument, Mapping):
        items: list[tuple[Any, Path]] = [(argument, path)]
    elif is_list(argument) and argument:
        items = [(item, (*path, index)) for index, item in enumerate(argument)]
    else:
        raise expect(path, f"{_EXPECTED_EN}, got {type_name(argument)}", _EXPECTED_JA)
    exact: set[str] = set()
    prefixes: set[str] = set()
    for item, item_path in items:
        if not isinstance(item, Mapping) or len(item) != 1 or next(iter(item)) not in _KINDS:
            raise expect(item_path, f"{_EXPECTED_EN}, got {item!r}", _EXPECTED_JA)
        ((kind, value),) = item.items()
        value = _check_path(value, (*item_path, kind))
        exact.add(value)  # a prefix covers the path itself, too
        if kind == "prefix":
            prefixes.add(value.rstrip("/") + "/")
    exact |= {p.rstrip("/") for p in prefixes if p != "/"}
    exact_set = frozenset(exact)
    starts = tuple(sorted(prefixes))

    def http_path(facts: Facts) -> bool:
        request_path = facts.path
        return request_path in exact_set or request_path.startswith(starts)

    return http_path


CRITERION = Criterion(
    name="http_path",
    passed_reason="http-path-allowed",
    failed_reason="http-path-denied",
    summary_ja="正規化済みのパスが前方一致（セグメント単位）または完全一致すれば一致します。",
    summary_en="Matches the normalised path by segment-wise prefix or exactly.",
    compile=_compile,
    reads_clock=timeless,
)
