"""One configuration problem = file, line, field path, and what is expected (ja / en).

Every stage of loading (YAML, schema, secrets, semantic checks, policy compilation) reports
`Problem`s into one list; the loader sorts them by line and raises them together, so an
administrator fixes the whole file in one pass instead of one error per restart. Values are
shown only through `shown()`, which never prints a secret or a URL carrying credentials.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sekisho.errors import ConfigError

PathItem = str | int
FieldPath = tuple[PathItem, ...]

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# A URL with user:password@ in it: printing it would leak a credential (CWE-532).
_CREDENTIAL_URL = re.compile(r"://[^/\s]*@")
_SHOWN_MAX = 60


def format_path(path: FieldPath) -> str:
    """Render `("routes", 2, "from")` as `routes[2].from`; odd keys as `policies["a b"]`."""
    out = ""
    for item in path:
        if isinstance(item, int):
            out += f"[{item}]"
        elif _PLAIN_KEY.match(item):
            out += f".{item}" if out else item
        else:
            out += f"[{item!r}]"
    return out or "(top level)"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the file; `ja` and `en` say what is expected."""

    line: int
    path: FieldPath
    ja: str
    en: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line > 0 else source
        field = f" {format_path(self.path)}:" if self.path else ""
        return f"{where}:{field} {self.ja} / {self.en}"


class InvalidConfig(ConfigError):
    """A `ConfigError` that also carries the structured problems (for tools and tests)."""

    def __init__(self, source: str, problems: Iterable[Problem]) -> None:
        self.source = source
        self.problems = tuple(sorted(problems, key=lambda p: p.line))
        lines = [p.render(source) for p in self.problems]
        count = len(lines)
        header = (
            f"{source}: 設定に {count} 件の問題があります / "
            f"{count} problem{'s' if count != 1 else ''} in the configuration"
        )
        super().__init__("\n".join([header, *lines]))


class LineMap:
    """Field path -> 1-based line of that field in the file (the key's line for mappings)."""

    def __init__(self, lines: Mapping[FieldPath, int] | None = None) -> None:
        self._lines: dict[FieldPath, int] = dict(lines or {})

    def set(self, path: FieldPath, line: int) -> None:
        self._lines.setdefault(path, line)

    def line(self, path: FieldPath) -> int:
        """The line of `path`, or of its nearest ancestor present in the file (1 at worst)."""
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return self._lines.get((), 1)

    def __contains__(self, path: object) -> bool:
        return path in self._lines


def shown(value: object, *, secret: bool = False) -> str:
    """A short, safe rendering of a value for `(got …)`; secrets and credential URLs hidden."""
    if secret:
        return "値は表示しません / value not shown"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if _CREDENTIAL_URL.search(value):
            return "資格情報を含む URL のため表示しません / URL with credentials not shown"
        text = value if len(value) <= _SHOWN_MAX else value[: _SHOWN_MAX - 1] + "…"
        return repr(text)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
