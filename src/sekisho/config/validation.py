"""Check the data against `schema.json` and say, in plain words, what each field expects.

jsonschema's own messages echo whole values (a secret among them) and speak in schema terms;
this module renders each error from its keyword instead: Japanese sentence, then English,
with `(got …)` through `problems.shown()` so a secret field is never printed.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from sekisho.config.problems import FieldPath, LineMap, Problem, shown
from sekisho.config.reference import ANY, load_schema, secret_paths

_TYPE_WORDS = {
    "integer": ("整数", "an integer"),
    "number": ("数値", "a number"),
    "string": ("文字列", "a string"),
    "boolean": ("真偽値（true / false）", "true or false"),
    "object": ("マッピング（キー: 値）", "a mapping (key: value)"),
    "array": ("リスト", "a list"),
    "null": ("null", "null"),
}


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(load_schema())


def is_secret(path: FieldPath) -> bool:
    for pattern in secret_paths():
        if len(pattern) == len(path) and all(
            p in (ANY, item) for p, item in zip(pattern, path, strict=True)
        ):
            return True
    return False


def validate(data: Any, lines: LineMap) -> list[Problem]:
    """All schema problems in `data` (empty when valid)."""
    problems: list[Problem] = []
    for error in _validator().iter_errors(data):
        problems.extend(p for p in _render(error, lines) if p not in problems)
    return problems


def _expected(schema: Mapping[str, Any]) -> tuple[str, str] | None:
    words = schema.get("x-sekisho-expected")
    if isinstance(words, Mapping):
        return str(words["ja"]), str(words["en"])
    return None


def _render(error: ValidationError, lines: LineMap) -> Iterator[Problem]:
    path: FieldPath = tuple(error.absolute_path)
    keyword = error.validator
    value = error.validator_value
    instance = error.instance
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    got = f" (got {shown(instance, secret=is_secret(path))})"

    if "propertyNames" in error.relative_schema_path:
        name_path = (*path, str(instance))
        ja, en = _expected(schema) or (
            "名前の形式が正しくありません",
            "the name has the wrong format",
        )
        yield Problem(lines.line(name_path), name_path, ja, f"{en}{got}")
        return
    if keyword == "additionalProperties" and isinstance(instance, Mapping):
        known = list(schema.get("properties", {}))
        for key in instance:
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            hint_ja = f"（もしかして '{close[0]}'?）" if close else ""
            hint_en = (
                f"; did you mean '{close[0]}'?"
                if close
                else f" (expected one of: {', '.join(known)})"
            )
            key_path = (*path, str(key))
            yield Problem(
                lines.line(key_path),
                key_path,
                f"不明な設定項目 '{key}' です{hint_ja}",
                f"unknown setting '{key}'{hint_en}",
            )
        return
    if keyword == "required" and isinstance(instance, Mapping):
        for key in value:
            if key not in instance:
                yield Problem(
                    lines.line(path),
                    (*path, key),
                    "必須の項目がありません",
                    "this required setting is missing",
                )
        return

    expected = _expected(schema)
    if expected is not None and keyword in ("anyOf", "oneOf", "pattern", "type", "minLength"):
        ja, en = expected
        yield Problem(lines.line(path), path, ja, f"{en}{got}")
        return
    line = lines.line(path)
    if keyword == "type":
        kinds = [value] if isinstance(value, str) else list(value)
        ja = "または".join(_TYPE_WORDS[k][0] for k in kinds)
        en = " or ".join(_TYPE_WORDS[k][1] for k in kinds)
        yield Problem(line, path, f"{ja}が必要です", f"must be {en}{got}")
    elif keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        ja_op, en_op = {
            "minimum": ("以上", "≥"),
            "maximum": ("以下", "≤"),
            "exclusiveMinimum": ("より大きい", ">"),
            "exclusiveMaximum": ("より小さい", "<"),
        }[keyword]
        kind_ja, kind_en = _TYPE_WORDS["integer" if schema.get("type") == "integer" else "number"]
        yield Problem(
            line,
            path,
            f"{value} {ja_op}の{kind_ja}が必要です",
            f"must be {kind_en} {en_op} {value}{got}",
        )
    elif keyword == "enum":
        options = ", ".join(str(v) for v in value)
        yield Problem(
            line, path, f"次のいずれかが必要です: {options}", f"must be one of: {options}{got}"
        )
    elif keyword == "minLength":
        yield Problem(line, path, "空にはできません", "must not be empty")
    elif keyword == "maxLength":
        yield Problem(
            line, path, f"{value} 文字以内が必要です", f"must be at most {value} characters"
        )
    elif keyword == "minItems":
        yield Problem(
            line, path, f"{value} 個以上の要素が必要です", f"must have at least {value} item(s)"
        )
    elif keyword == "uniqueItems":
        yield Problem(line, path, "同じ値が重複しています", "must not contain the same value twice")
    else:
        yield Problem(line, path, "値が正しくありません", f"is not valid ({keyword}){got}")
