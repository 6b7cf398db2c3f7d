"""The settings reference, read from `schema.json`: the one place each setting is defined.

`schema.json` holds every setting's name, type, default and description (ja / en), and marks
secret fields with `"x-sekisho-secret": true`. This module walks it so that the secret
resolver, the docs test and `sekisho config schema` all read the same definition.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

ANY = "*"  # a path item matching any list index or map key


@cache
def load_schema() -> Mapping[str, Any]:
    """The published JSON Schema (draft 2020-12) of the configuration file."""
    text = resources.files("sekisho.config").joinpath("schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_text() -> str:
    return resources.files("sekisho.config").joinpath("schema.json").read_text("utf-8")


@dataclass(frozen=True, slots=True)
class Setting:
    """One documented setting; `path` uses `ANY` for list items and map keys."""

    path: tuple[str, ...]
    type: str
    default: Any
    description: str
    secret: bool

    @property
    def name(self) -> str:
        """`routes[].timeouts.read`, `policies.<name>`: the spelling used in the docs."""
        return ".".join(self.path)


def _resolve(schema: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target: Mapping[str, Any] = schema["$defs"][ref.removeprefix("#/$defs/")]
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _type_name(node: Mapping[str, Any]) -> str:
    if "x-sekisho-type" in node:
        return str(node["x-sekisho-type"])
    if "enum" in node:
        return " | ".join(str(v) for v in node["enum"])
    if "anyOf" in node:
        return " | ".join(_type_name(sub) for sub in node["anyOf"])
    return str(node.get("type", "any"))


def iter_settings(schema: Mapping[str, Any] | None = None) -> Iterator[Setting]:
    """Every property of the schema, depth first, in file order."""
    root = schema if schema is not None else load_schema()
    yield from _walk(root, root, ())


def _walk(
    root: Mapping[str, Any], node: Mapping[str, Any], prefix: tuple[str, ...]
) -> Iterator[Setting]:
    for key, raw in node.get("properties", {}).items():
        child = _resolve(root, raw)
        path = (*prefix, key)
        kind = _type_name(child)
        items = child.get("items")
        if isinstance(items, Mapping):
            items = _resolve(root, items)
            if items.get("type") == "object":
                kind = "list of mappings"
            else:
                kind = f"list of {_type_name(items)}"
        yield Setting(
            path,
            kind,
            child.get("default"),
            str(child.get("description", "")),
            bool(child.get("x-sekisho-secret", False)),
        )
        if child.get("type") == "object":
            yield from _walk(root, child, path)
            extra = child.get("additionalProperties")
            if isinstance(extra, Mapping):
                entry = _resolve(root, extra)
                yield Setting(
                    (*path, "<name>"),
                    _type_name(entry),
                    None,
                    str(entry.get("description", "")),
                    False,
                )
                yield from _walk(root, entry, (*path, "<name>"))
        if isinstance(items, Mapping) and items.get("type") == "object":
            yield from _walk(root, items, (*path[:-1], f"{key}[]"))


@cache
def secret_paths() -> tuple[tuple[str, ...], ...]:
    """Paths of secret fields in the data, with `ANY` for list indices and map keys."""
    paths = []
    for setting in iter_settings():
        if setting.secret:
            path: list[str] = []
            for item in setting.path:
                if item == "<name>":
                    path.append(ANY)
                elif item.endswith("[]"):
                    path += [item.removesuffix("[]"), ANY]
                else:
                    path.append(item)
            paths.append(tuple(path))
    return tuple(paths)
