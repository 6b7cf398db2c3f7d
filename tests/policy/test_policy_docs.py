"""The policy package's contracts with the rest of the project: docs, reasons, purity."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import sekisho.policy
from sekisho.policy import CRITERIA, REASONS, explain_reason

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "policy.md"
PACKAGE = Path(sekisho.policy.__file__).parent


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_is_documented_with_an_example(name: str) -> None:
    text = _doc()
    section = text.split(f"#### `{name}`\n", 1)
    assert len(section) == 2, f"docs/policy.md has no '#### `{name}`' section"
    body = section[1].split("\n#### ", 1)[0]
    assert f"- {name}:" in body, f"the section for {name} has no YAML example"
    assert f"| `{name}` |" in text, f"the English criteria table lacks {name}"


def test_documented_criteria_exist() -> None:
    documented = set(re.findall(r"^#### `([a-z_]+)`$", _doc(), flags=re.MULTILINE))
    assert documented == set(CRITERIA)


@pytest.mark.parametrize("code", sorted(REASONS))
def test_every_reason_is_documented_with_its_text(code: str) -> None:
    ja, en = REASONS[code]
    assert f"| `{code}` | {ja} | {en} |" in _doc()


def test_documented_reasons_exist() -> None:
    rows = re.findall(r"^\| `([a-z-]+)` \| [^|]+ \| [^|]+ \|$", _doc(), flags=re.MULTILINE)
    assert rows and set(rows) == set(REASONS)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_reason_is_in_the_closed_list(name: str) -> None:
    criterion = CRITERIA[name]
    assert criterion.passed_reason in REASONS
    assert criterion.failed_reason in REASONS


def test_every_reason_is_used() -> None:
    used = {c.passed_reason for c in CRITERIA.values()} | {
        c.failed_reason for c in CRITERIA.values()
    }
    # The last two are the gateway's own fail-closed reasons, not any criterion's.
    assert set(REASONS) == used | {"default-deny", "policy-error", "storage-unavailable",
                                   "audit-unavailable"}


@pytest.mark.parametrize("code", sorted(REASONS))
def test_reason_texts(code: str) -> None:
    ja, en = REASONS[code]
    assert explain_reason(code) == ja
    assert explain_reason(code, "ja") == ja
    assert explain_reason(code, "en") == en
    assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", ja), "Japanese text expected"
    assert en.isascii()


def test_explain_reason_rejects_unknown_input() -> None:
    with pytest.raises(KeyError):
        explain_reason("group-maybe")
    with pytest.raises(ValueError, match="language"):
        explain_reason("always", "fr")


def test_one_module_per_criterion() -> None:
    modules = {p.stem for p in (PACKAGE / "criteria").glob("*.py") if not p.stem.startswith("_")}
    assert modules == set(CRITERIA)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports"
            names.append(node.module or "")
    return names


STDLIB_ALLOWED = {
    "__future__",
    "bisect",
    "collections",
    "dataclasses",
    "datetime",
    "ipaddress",
    "re",
    "types",
    "typing",
    "zoneinfo",  # the time criterion; loads the zone at compile time only
}


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_policy_is_pure(path: Path) -> None:
    """Only the standard library (no I/O modules) and sekisho.policy itself."""
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "sekisho":
            assert name.startswith("sekisho.policy"), f"{path} imports {name}"
        else:
            assert top in STDLIB_ALLOWED, f"{path} imports {name}"
