"""Every CLI command is documented in docs/operations.md, and every documented one exists."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from sekisho.cli import build_parser

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def _commands() -> set[str]:
    found: set[str] = set()

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions:
            found.add(prefix)
            return
        for name, sub in actions[0].choices.items():
            walk(sub, f"{prefix} {name}")

    walk(build_parser(), "sekisho")
    return found


def test_every_command_is_documented_and_every_documented_command_exists() -> None:
    table = set(re.findall(r"^\| `(sekisho [a-z -]+?)` \|", OPERATIONS.read_text(), re.M))
    assert table == _commands()
