"""The published schema: valid, described, closed, in step with the model and the docs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from sekisho.config.model import (
    AssertionSettings,
    AuditSettings,
    Limits,
    ServerSettings,
    SessionSettings,
    ThrottleSettings,
    Timeouts,
    TLSSettings,
)
from sekisho.config.reference import iter_settings, load_schema
from sekisho.config.values import parse_duration

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration.md"


def _objects(node: Any, where: str = "#") -> Iterator[tuple[str, Mapping[str, Any]]]:
    if isinstance(node, Mapping):
        if node.get("type") == "object":
            yield where, node
        for key, value in node.items():
            yield from _objects(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _objects(value, f"{where}/{index}")


def test_schema_is_valid_draft_2020_12() -> None:
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_every_object_is_closed() -> None:
    """additionalProperties: false everywhere, except maps of named policies and the policy
    documents themselves (validated deeply by the policy engine)."""
    open_objects = []
    for where, node in _objects(load_schema()):
        extra = node.get("additionalProperties")
        if extra is False or isinstance(extra, Mapping):
            continue
        open_objects.append(where)
    assert open_objects == [
        "#/properties/policies/additionalProperties",
        "#/$defs/route/properties/policy/anyOf/1",
    ]


def test_every_setting_has_a_bilingual_description() -> None:
    for setting in iter_settings():
        # Japanese first, then "/ " and the English sentence.
        assert re.search(r"^[^/]*[\u3040-\u30ff\u4e00-\u9fff].*/ [A-Z]", setting.description), (
            setting.name
        )


MODEL_DEFAULTS: list[tuple[str, object]] = [
    *[(f"server.{f}", getattr(ServerSettings(), f)) for f in ("workers", "data_dir")],
    ("server.admin_listen", str(ServerSettings().admin_listen)),
    ("server.listen", [str(a) for a in ServerSettings().listen]),
    *[(f"tls.{f}", getattr(TLSSettings(), f)) for f in ("enabled", "self_signed")],
    *[
        (f"session.{f}", getattr(SessionSettings(), f))
        for f in ("cookie_name", "idle_timeout", "absolute_lifetime", "cache_ttl")
    ],
    *[
        (f"throttle.{f}", getattr(ThrottleSettings(), f))
        for f in ("account_max_failures", "ip_max_failures", "lockout", "base_delay", "max_delay")
    ],
    *[
        (f"limits.{f}", getattr(Limits(), f))
        for f in ("max_header_count", "max_header_bytes", "max_url_bytes", "max_form_bytes")
    ],
    *[(f"timeouts.{f}", getattr(Timeouts(), f)) for f in ("connect", "read", "idle", "header")],
    *[(f"audit.{f}", getattr(AuditSettings(), f)) for f in ("flush_interval", "batch_max")],
    *[(f"assertion.{f}", getattr(AssertionSettings(), f)) for f in ("issuer", "lifetime")],
]


@pytest.mark.parametrize(
    ("name", "model_default"), MODEL_DEFAULTS, ids=[n for n, _ in MODEL_DEFAULTS]
)
def test_schema_defaults_match_the_model(name: str, model_default: object) -> None:
    settings = {s.name: s for s in iter_settings()}
    default = settings[name].default
    if settings[name].type == "duration":
        default = parse_duration(default)
    assert default == model_default


def _documented() -> set[str]:
    text = DOC.read_text("utf-8")
    rows = set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE))
    sections = set(re.findall(r"^### `([^`]+)`$", text, flags=re.MULTILINE))
    return rows | sections


def test_every_schema_setting_is_documented() -> None:
    missing = {s.name for s in iter_settings()} - _documented()
    assert not missing, f"settings missing from docs/configuration.md: {sorted(missing)}"


def test_every_documented_setting_exists() -> None:
    unknown = _documented() - {s.name for s in iter_settings()}
    assert not unknown, f"docs/configuration.md documents unknown settings: {sorted(unknown)}"


def test_documented_defaults_match_the_schema() -> None:
    text = DOC.read_text("utf-8")
    for setting in iter_settings():
        row = re.search(
            rf"^\| `{re.escape(setting.name)}` \| [^|]*(?:\\\|[^|]*)* \| ([^|]+) \|",
            text,
            flags=re.MULTILINE,
        )
        if row is None or setting.default is None:
            continue
        assert row.group(1) == f"`{json.dumps(setting.default, ensure_ascii=False)}`", setting.name
