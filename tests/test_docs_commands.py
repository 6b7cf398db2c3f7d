"""Every CLI command is documented in docs/operations.md, and every documented one exists."""

from __future__ import annotations

import argparse
import os
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


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    """`sekisho … | head`: the reader leaves early; no traceback reaches the terminal."""
    import subprocess
    import sys

    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the command writes a byte
    try:
        done = subprocess.run([sys.executable, "-m", "sekisho", "config", "schema"],
                              stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60,
                              check=False)
    finally:
        os.close(writer)
    assert "Traceback" not in done.stderr and done.returncode == 141, done.stderr
