"""`sekisho serve` (under construction in this session)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("serve", help="(under construction)")
    parser.set_defaults(handler=lambda _args: 1)
