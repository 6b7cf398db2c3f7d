"""The hot modules compiled to C by mypyc (`scripts/compile`), and the check that a build is
not older than its sources.

The request path is Python spread thinly over many small functions (about 3,000 bytecodes a
request); compiled, the same typed code runs about a third fewer instructions
(docs/benchmarks.md). The sources stay the truth: without a C compiler they run as they are.
An extension module is imported in preference to its `.py`, so one built from an older source
would run code that is no longer in the tree; `scripts/compile` records each source's
SHA-256 and importing Sekisho refuses a build that does not match (`stale`).
"""

from __future__ import annotations

import hashlib
import json
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

# Relative to the `sekisho` package. The request path of a worker and the audit writer.
MODULES = (
    "gateway.assertion", "gateway.connection", "gateway.decisions", "gateway.headers",
    "gateway.keys", "gateway.paths", "gateway.pep", "gateway.proxy", "gateway.server",
    "gateway.upstream",
    "audit.chain", "audit.columns", "audit.log", "audit.relay", "audit.rows",
    "identity.principal", "identity.sessions",
    "observability.metrics",
    "runtime",
)
MANIFEST = "_compiled.json"  # {module: sha256 of the source it was built from}
PACKAGE = Path(__file__).resolve().parent


def source(module: str, package: Path = PACKAGE) -> Path:
    return package.joinpath(*module.split(".")).with_suffix(".py")


def extensions(module: str, package: Path = PACKAGE) -> list[Path]:
    """The compiled files present for `module` (none when it runs as Python)."""
    path = source(module, package)
    return [found for suffix in EXTENSION_SUFFIXES
            if (found := path.with_name(path.stem + suffix)).exists()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stale(package: Path = PACKAGE) -> list[str]:
    """The modules whose compiled file was not built from the source beside it."""
    try:
        built = json.loads((package / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        built = {}
    except (OSError, ValueError):
        built = {}  # unreadable: nothing compiled is vouched for
    if not isinstance(built, dict):
        built = {}
    return [module for module in MODULES
            if extensions(module, package) and built.get(module) != digest(source(module, package))]


def check() -> None:
    if modules := stale():
        raise ImportError(
            "コンパイル済みのモジュールがソースと一致しません / compiled modules do not match "
            f"their sources: {', '.join('sekisho.' + m for m in modules)} — "
            "run `make compile` (or remove them: `python scripts/compile --clean`)")
