"""The compiled hot modules (`scripts/compile`, `sekisho._build`): CI runs what ships, and a
build older than its sources is refused rather than run."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from sekisho import _build

SUFFIX = EXTENSION_SUFFIXES[0]


def test_the_hot_modules_run_compiled_where_a_build_is_required_or_present() -> None:
    built = (_build.PACKAGE / _build.MANIFEST).exists()
    if not built and os.environ.get("SEKISHO_REQUIRE_COMPILED") != "1":
        pytest.skip("no compiled build here (no C compiler, or SEKISHO_NO_COMPILE=1)")
    assert built, "SEKISHO_REQUIRE_COMPILED=1 but scripts/compile built nothing"
    for module in _build.MODULES:
        loaded = importlib.import_module("sekisho." + module)
        assert loaded.__file__ is not None and loaded.__file__.endswith(SUFFIX), module


def _package(tmp_path: Path) -> Path:
    """A copy of the package's entry point and of one listed module's source."""
    package = tmp_path / "sekisho"
    (package / "gateway").mkdir(parents=True)
    for name in ("__init__.py", "_build.py"):
        shutil.copy(_build.PACKAGE / name, package / name)
    (package / "gateway" / "__init__.py").write_text("")
    (package / "gateway" / "headers.py").write_text("VALUE = 1\n")
    return package


def _manifest(package: Path, sources: dict[str, str]) -> None:
    (package / _build.MANIFEST).write_text(json.dumps(sources))


def test_a_compiled_file_is_vouched_for_only_by_the_digest_of_its_source(tmp_path: Path) -> None:
    package = _package(tmp_path)
    source = package / "gateway" / "headers.py"
    assert _build.stale(package) == []  # nothing compiled: the sources run
    (package / "gateway" / ("headers" + SUFFIX)).write_bytes(b"")
    assert _build.stale(package) == ["gateway.headers"]  # compiled, no manifest
    _manifest(package, {"gateway.headers": _build.digest(source)})
    assert _build.stale(package) == []
    source.write_text("VALUE = 2\n")  # edited after the build
    assert _build.stale(package) == ["gateway.headers"]
    (package / _build.MANIFEST).write_text("{not json")
    assert _build.stale(package) == ["gateway.headers"]
    (package / _build.MANIFEST).write_text("[]")
    assert _build.stale(package) == ["gateway.headers"]


def test_importing_sekisho_refuses_a_stale_build(tmp_path: Path) -> None:
    package = _package(tmp_path)
    source = package / "gateway" / "headers.py"
    (package / "gateway" / ("headers" + SUFFIX)).write_bytes(b"")  # never loaded: refused first
    _manifest(package, {"gateway.headers": _build.digest(source)})
    command = [sys.executable, "-c", "import sekisho; print('imported')"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    ok = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path,
                        check=False)
    assert ok.stdout.strip() == "imported", ok.stderr
    source.write_text("VALUE = 2\n")
    refused = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path,
                             check=False)
    assert refused.returncode != 0 and "imported" not in refused.stdout
    assert "sekisho.gateway.headers" in refused.stderr and "make compile" in refused.stderr
