"""The `sekisho` command line: one sub-command group per module, registered here.

Each module in `COMMANDS` exposes `register(subparsers)`; handlers return an exit code.
Errors of the `SekishoError` family are printed as one clear line (no traceback) and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from sekisho import __version__
from sekisho.errors import SekishoError

COMMANDS = (
    "serve", "config", "db", "user", "group", "session", "audit", "keys", "ca",
    "device", "policy", "token", "connector", "tcp",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sekisho",
        description="Sekisho (関所) — zero-trust gateway for local governments",
    )
    parser.add_argument("--version", action="version", version=f"sekisho {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"sekisho.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except SekishoError as exc:
        print(f"sekisho: {exc.code}: {exc.description}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`sekisho audit export | head`): stop quietly, and keep the
        # interpreter from complaining again while it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it
