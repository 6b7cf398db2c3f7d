"""Resolve secret references (`env:NAME`, `file:/path`) into `Secret` values at load time.

Which fields are secret is declared once, in `schema.json` (`"x-sekisho-secret": true`);
later settings (identity-provider client secrets, Redis passwords …) only add that mark.
A problem names the field and the reference, never the value: an error message or a log
line must not become the channel that discloses a database password (CWE-209, CWE-532).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sekisho.config.model import Secret
from sekisho.config.problems import FieldPath, LineMap, Problem
from sekisho.config.reference import ANY, secret_paths

MAX_SECRET_BYTES = 64 * 1024
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _matches(
    data: Any, pattern: tuple[str, ...], path: FieldPath
) -> Iterator[tuple[FieldPath, Any]]:
    if not pattern:
        yield path, data
        return
    head, rest = pattern[0], pattern[1:]
    if head == ANY:
        if isinstance(data, dict):
            for key, value in data.items():
                yield from _matches(value, rest, (*path, key))
        elif isinstance(data, list):
            for index, value in enumerate(data):
                yield from _matches(value, rest, (*path, index))
    elif isinstance(data, dict) and head in data:
        yield from _matches(data[head], rest, (*path, head))


def resolve_reference(reference: str, base_dir: Path) -> Secret:
    """`env:NAME` / `file:PATH` / a literal; raises ValueError(ja, en) without the value."""
    if reference.startswith("env:"):
        name = reference.removeprefix("env:")
        if not _ENV_NAME.match(name):
            raise ValueError(
                f"環境変数名 {name!r} が正しくありません",
                f"{name!r} is not a valid environment variable name",
            )
        value = os.environ.get(name)
        if value is None:
            raise ValueError(
                f"環境変数 {name} が設定されていません（{reference}）",
                f"environment variable {name} is not set ({reference})",
            )
    elif reference.startswith("file:"):
        target = Path(reference.removeprefix("file:")).expanduser()
        if not target.is_absolute():
            target = base_dir / target
        try:
            with target.open("rb") as handle:
                raw = handle.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise ValueError(
                f"ファイル {target} を読めません: {why}（{reference}）",
                f"cannot read file {target}: {why} ({reference})",
            ) from None
        if len(raw) > MAX_SECRET_BYTES:
            raise ValueError(
                f"ファイル {target} が大きすぎます（{reference}）",
                f"file {target} is too large for a secret ({reference})",
            )
        try:
            value = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ValueError(
                f"ファイル {target} が UTF-8 ではありません（{reference}）",
                f"file {target} is not UTF-8 ({reference})",
            ) from None
    else:
        return Secret(reference, "inline")
    if not value:
        raise ValueError(f"{reference} の値が空です", f"{reference} is empty")
    return Secret(value, reference)


def resolve_secrets(
    data: Any, lines: LineMap, base_dir: Path
) -> tuple[dict[FieldPath, Secret], list[Problem]]:
    """Every secret field present in `data`, resolved; problems name field and reference only."""
    resolved: dict[FieldPath, Secret] = {}
    problems: list[Problem] = []
    for pattern in secret_paths():
        for path, value in _matches(data, pattern, ()):
            if not isinstance(value, str):
                continue  # the schema already reported the type
            try:
                resolved[path] = resolve_reference(value, base_dir)
            except ValueError as exc:
                ja, en = exc.args
                problems.append(Problem(lines.line(path), path, ja, en))
    return resolved, problems
