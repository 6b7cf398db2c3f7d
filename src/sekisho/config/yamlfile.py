"""Read the YAML text into plain data plus the line of every field, refusing risky YAML.

PyYAML's composer gives nodes with positions; we build the data from the nodes ourselves so
every value keeps its line and nothing beyond plain scalars, lists and mappings exists.
Refused: anchors and aliases (a "billion laughs" alias bomb expands a small file into
gigabytes), duplicate keys (the second silently wins in PyYAML, hiding a policy change),
non-string keys (`on:` is a boolean in YAML 1.1), custom tags, several documents in one file,
and non-finite numbers. Syntax errors carry PyYAML's problem text but never the source
line itself, which could hold a secret.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

from sekisho.config.problems import FieldPath, LineMap, Problem

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
_STR = "tag:yaml.org,2002:str"
_SCALAR_TAGS = {
    _STR,
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_IPV6_UNQUOTED = re.compile(r"(^|[\s,\[])\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]:[0-9]")


class YamlRefused(Exception):
    """The text cannot be read at all; `problem` says where and why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.en)
        self.problem = problem


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases before they are composed."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise YamlRefused(
                Problem(
                    event.start_mark.line + 1,
                    (),
                    "YAML のアンカー（&）とエイリアス（*）は使えません",
                    "YAML anchors (&) and aliases (*) are not allowed",
                )
            )
        return super().compose_node(parent, index)  # type: ignore[arg-type]


def decode(raw: bytes) -> str:
    """UTF-8 (with or without BOM) or refuse, naming the line of the first bad byte."""
    if len(raw) > MAX_BYTES:
        raise YamlRefused(
            Problem(
                0,
                (),
                f"ファイルが大きすぎます（上限 {MAX_BYTES} バイト）",
                f"file is too large (limit {MAX_BYTES} bytes)",
            )
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlRefused(
            Problem(line, (), "UTF-8 として読めない文字があります", "the file is not valid UTF-8")
        ) from None


def _syntax_problem(exc: yaml.YAMLError, text: str) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else 0
    column = f" (column {mark.column + 1})" if mark is not None else ""
    problem = str(getattr(exc, "problem", None) or "invalid YAML")
    if "'\\t'" in problem:
        return Problem(
            line,
            (),
            "タブ文字は字下げに使えません。空白を使ってください",
            f"tab characters cannot be used for indentation; use spaces{column}",
        )
    if "found another document" in problem or "single document" in problem:
        return Problem(
            line,
            (),
            "1 つのファイルには 1 つの文書だけを書けます（--- は不可）",
            "only one YAML document per file (no second ---)",
        )
    if "could not determine a constructor" in problem:
        return Problem(
            line, (), "YAML のタグ（!…）は使えません", f"YAML tags are not allowed: {problem}"
        )
    source_line = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else ""
    if _IPV6_UNQUOTED.search(source_line):  # `- [::]:8443` is a flow list in YAML
        return Problem(line, (), "IPv6 アドレスは \"[::]:8443\" のように引用符で囲んでください",
                       f"quote IPv6 addresses like \"[::]:8443\" ({problem}{column})")
    return Problem(line, (), "YAML の構文エラーです", f"YAML syntax error: {problem}{column}")


def read_yaml(text: str) -> tuple[Any, LineMap, list[Problem]]:
    """Parse `text`; returns (data, lines, structural problems). Raises `YamlRefused`."""
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise YamlRefused(
            Problem(line, (), "NUL 文字が含まれています", "the file contains a NUL character")
        )
    try:
        loader = _Loader(text)  # the reader refuses control characters here, at construction
    except yaml.YAMLError as exc:
        raise YamlRefused(_syntax_problem(exc, text)) from None
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise YamlRefused(_syntax_problem(exc, text)) from None
    except RecursionError:
        raise YamlRefused(Problem(0, (), "入れ子が深すぎます", "nesting is too deep")) from None
    finally:
        loader.dispose()
    lines = LineMap({(): 1})
    problems: list[Problem] = []
    if node is None:
        return None, lines, problems
    data = _Reader(lines, problems).build(node, (), 0)
    return data, lines, problems


class _Reader:
    """Builds plain data from composed nodes, recording lines and structural problems."""

    def __init__(self, lines: LineMap, problems: list[Problem]) -> None:
        self.lines = lines
        self.problems = problems
        self.constructor = _Loader("")

    def build(self, node: yaml.Node, path: FieldPath, depth: int) -> Any:
        line = node.start_mark.line + 1
        if depth > MAX_DEPTH:
            raise YamlRefused(Problem(line, path, "入れ子が深すぎます", "nesting is too deep"))
        if isinstance(node, yaml.MappingNode):
            if node.tag != "tag:yaml.org,2002:map":
                self.problems.append(_tag_problem(line, path, node.tag))
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key_line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
                    shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "…"
                    self.problems.append(
                        Problem(
                            key_line,
                            path,
                            f"キー {shown!r} は文字列である必要があります（引用符で囲む）",
                            f"key {shown!r} must be a string (quote it)",
                        )
                    )
                    continue
                key = str(key_node.value)
                if key in result:
                    first = self.lines.line((*path, key))
                    self.problems.append(
                        Problem(
                            key_line,
                            (*path, key),
                            f"キー '{key}' が重複しています（最初は {first} 行目）",
                            f"duplicate key '{key}' (first defined on line {first})",
                        )
                    )
                    continue
                self.lines.set((*path, key), key_line)
                result[key] = self.build(value_node, (*path, key), depth + 1)
            return result
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                self.problems.append(_tag_problem(line, path, node.tag))
            items = []
            for index, item in enumerate(node.value):
                self.lines.set((*path, index), item.start_mark.line + 1)
                items.append(self.build(item, (*path, index), depth + 1))
            return items
        assert isinstance(node, yaml.ScalarNode)
        if node.tag == _TIMESTAMP:
            return str(node.value)  # an unquoted date is just text here
        if node.tag not in _SCALAR_TAGS:
            self.problems.append(_tag_problem(line, path, node.tag))
            return str(node.value)
        value = self.constructor.construct_object(node)
        if isinstance(value, float) and not math.isfinite(value):
            self.problems.append(
                Problem(line, path, "有限の数値が必要です", "must be a finite number")
            )
        return value


def _tag_problem(line: int, path: FieldPath, tag: str) -> Problem:
    return Problem(line, path, f"YAML のタグ {tag} は使えません", f"YAML tag {tag} is not allowed")
