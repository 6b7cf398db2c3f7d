"""Helpers shared by the sub-commands: the --config option and opening storage."""

from __future__ import annotations

import argparse
import os

DEFAULT_CONFIG_ENV = "SEKISHO_CONFIG"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config",
        default=os.environ.get(DEFAULT_CONFIG_ENV),
        help="設定ファイル / configuration file (default: $SEKISHO_CONFIG, else the demo config)",
    )
