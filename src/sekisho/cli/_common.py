"""Helpers shared by the sub-commands: the --config option and opening storage."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Engine

DEFAULT_CONFIG_ENV = "SEKISHO_CONFIG"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config",
        default=os.environ.get(DEFAULT_CONFIG_ENV),
        help="設定ファイル / configuration file (default: $SEKISHO_CONFIG, else the demo config)",
    )


DATABASE_URL_ENV = "SEKISHO_DATABASE_URL"
DEMO_DATABASE_URL = "sqlite:///./var/sekisho.db"


def add_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=None,
        help="データベースURL / storage URL (default: $SEKISHO_DATABASE_URL, else the config "
             "file's storage.url)",
    )


def database_url(args: argparse.Namespace) -> str:
    """The storage URL: --database-url, else $SEKISHO_DATABASE_URL, else the config file's,
    else the demo default."""
    url = getattr(args, "database_url", None) or os.environ.get(DATABASE_URL_ENV)
    if url:
        return str(url)
    path = getattr(args, "config", None)
    if not path:
        return DEMO_DATABASE_URL
    try:
        from sekisho.config import loader
    except ImportError:
        return DEMO_DATABASE_URL
    config = loader.load_config(path)
    return config.storage_url.reveal()


def open_engine(args: argparse.Namespace) -> Engine:
    """An engine on the configured database, refusing an un-migrated schema."""
    from sekisho.storage.database import create_database_engine, require_current_schema

    engine = create_database_engine(database_url(args))
    try:
        require_current_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine
