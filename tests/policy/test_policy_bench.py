"""The PDP benchmark runs, and Sekisho and Cedar agree on every decision of its workload."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_pdp.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("sekisho_bench_pdp", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_pdp_small_run_agrees_with_cedar() -> None:
    pytest.importorskip("cedarpy")
    results = _load().main(["--seconds", "0.05", "--requests", "1500", "--quiet"])
    assert results["routes"] == 1000
    assert results["rules"] == 1150
    assert results["agreement"] == 1.0
    assert 0.45 <= results["allowed_share"] <= 0.55
    assert results["sekisho"]["decisions_per_s"] > 0
    assert results["cedarpy"]["decisions_per_s"] > 0
