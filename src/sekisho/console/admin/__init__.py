"""The admin console and admin API: operations declared once (`ops`), served as JSON under
/.sekisho/api/ (`api`, described by `openapi`) and as pages under /.sekisho/admin/ (`pages`).
"""

from __future__ import annotations

import importlib

# The modules that declare operations (each calls `ops.register` at import).
OPERATION_MODULES = ("tokens", "users", "devices", "sessions", "audit", "dashboard",
                     "config_edit", "connectors")


def load_operations() -> None:
    """Import every operation module once, so `ops.REGISTRY` is complete."""
    for name in OPERATION_MODULES:
        importlib.import_module(f"{__name__}.{name}")
