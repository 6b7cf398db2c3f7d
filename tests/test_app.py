"""The composition root's own duties: configuration warnings reach the log on reload, the
self-signed certificate names every host the listener answers to (routes and the portal),
relaying workers yield the CPU to their audit master only as much as it needs, and the startup
heap is kept out of garbage collections."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509

from sekisho.app import (
    MASTER_KEEPS_UP,
    NICE_STEP_WEIGHT,
    RuntimeHolder,
    reload,
    self_signed_hosts,
    server_ssl_context,
    worker_nice,
)
from sekisho.config.loader import load_config
from sekisho.config.model import Config, PortalSettings, Route, ServerSettings, TLSSettings
from sekisho.observability.logs import JsonFormatter
from sekisho.runtime import build_runtime

CONFIG = """\
server:
  data_dir: "./data"
tls:
  self_signed: true
policies:
  staff:
    allow:
      and:
        - authenticated: true
        - group: [staff]
routes:
  - id: wiki
    from: https://wiki.city.example/
    to: http://127.0.0.1:9
    segment: internet
    policy: staff
"""
# No networks.mynumber_terminals: the guardrail keeps this route closed (a warning).
MYNUMBER_ROUTE = """\
  - id: juki
    from: https://juki.city.example/
    to: http://127.0.0.1:9
    segment: mynumber
    policy: staff
"""


def _warnings(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records
            if r.name == "sekisho.app" and r.levelno == logging.WARNING
            and "configuration warning" in r.getMessage()]


def test_a_reload_logs_the_new_configurations_warnings(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "sekisho.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    holder = RuntimeHolder(build_runtime(load_config(path), ""))
    caplog.set_level(logging.INFO, logger="sekisho.app")
    assert reload(str(path), holder, None)
    assert _warnings(caplog) == []  # nothing to warn about

    path.write_text(CONFIG + MYNUMBER_ROUTE, encoding="utf-8")
    assert reload(str(path), holder, None)
    [entry] = _warnings(caplog)
    assert entry["level"] == "warning" and entry["source"] == str(path)
    assert entry["message"] == "設定の警告 / configuration warning"
    warning = str(entry["warning"])
    assert warning.startswith(f"{path}:")
    assert "警告: ルート 'juki' はガードレールにより閉じています" in warning
    assert "warning: route 'juki' is closed by its guardrail" in warning

    # A forked installation's workers reload too, but only one process announces.
    caplog.clear()
    assert reload(str(path), holder, None, announce=False)
    assert _warnings(caplog) == []


def _config(data_dir: Path, portal_host: str = "") -> Config:
    return Config(source="test", server=ServerSettings(data_dir=str(data_dir)),
                  tls=TLSSettings(self_signed=True), portal=PortalSettings(host=portal_host),
                  routes=(Route(id="wiki", host="wiki.city.example", path_prefix="/",
                                to="http://127.0.0.1:9"),))


def _names(data_dir: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate((data_dir / "tls" / "self-signed.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n) for n in names.get_values_for_type(x509.DNSName)}


def test_the_self_signed_certificate_covers_the_portal_host(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    plain = _config(data_dir)
    assert server_ssl_context(plain) is not None
    assert {"localhost", "wiki.city.example"} <= _names(data_dir)
    assert "portal.city.example" not in _names(data_dir)
    # A portal host set later: the certificate made before it is replaced, not reused.
    with_portal = replace(plain, portal=PortalSettings(host="portal.city.example"))
    assert "portal.city.example" in self_signed_hosts(with_portal)
    server_ssl_context(with_portal)
    assert {"localhost", "wiki.city.example", "portal.city.example"} <= _names(data_dir)


def test_self_signed_hosts_are_listed_once() -> None:
    config = _config(Path("."), "wiki.city.example")
    hosts = self_signed_hosts(config)
    assert len(hosts) == len(set(hosts)) and hosts.count("wiki.city.example") == 1


def test_workers_run_at_the_masters_priority_while_it_keeps_up() -> None:
    assert [worker_nice(n) for n in range(1, MASTER_KEEPS_UP + 1)] == [0] * MASTER_KEEPS_UP


@pytest.mark.parametrize("workers", [4, 5, 6, 8, 12, 64, 10_000])
def test_more_workers_yield_enough_for_the_master_to_keep_up(workers: int) -> None:
    """The workers' total weight stays within what the master records at its own weight
    (`MASTER_KEEPS_UP` workers' worth), by the fewest nice steps (a lower priority than
    needed costs throughput); never past nice 19."""
    steps = worker_nice(workers)
    weight = NICE_STEP_WEIGHT ** -steps  # a worker's weight, the master's being 1
    if steps < 19:
        assert workers * weight <= MASTER_KEEPS_UP
        assert workers * weight * NICE_STEP_WEIGHT > MASTER_KEEPS_UP  # one step fewer: not
    assert 0 < steps <= 19
    assert steps >= worker_nice(workers - 1)


@pytest.mark.parametrize("workers", [0, 2, 6])
def test_a_worker_process_takes_its_nice_level(workers: int) -> None:
    """`tune_worker_process` in a real process: its priority is the parent's plus the steps
    for `workers` relaying workers (0: a lone process writing its own log, unchanged)."""
    code = ("import os, sys; from sekisho.app import tune_worker_process; "
            f"tune_worker_process({workers}); "
            "print(os.getpriority(os.PRIO_PROCESS, 0), sys.getswitchinterval())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    parent = os.getpriority(os.PRIO_PROCESS, 0)
    assert int(out[0]) == min(parent + (worker_nice(workers) if workers else 0), 19)
    assert float(out[1]) == 0.001


FREEZE_PROBE = """
import gc, weakref
from sekisho.app import freeze_heap

class Node:
    pass

def cycle():
    node = Node()
    node.self = node  # reclaimed only by the collector
    return node

startup = cycle()
freeze_heap()
frozen = gc.get_freeze_count()
probe = weakref.ref(startup)
del startup
gc.collect()
kept_while_frozen = probe() is not None
freeze_heap()  # as after a reload
print(frozen > 0, kept_while_frozen, probe() is None, gc.get_freeze_count() > 0)
"""


def test_the_startup_heap_is_frozen_and_a_reload_lets_replaced_objects_go() -> None:
    """In a real process: after `freeze_heap` collections skip the startup objects (a cycle
    dropped afterwards is not collected), and the next call (after a reload) unfreezes
    first, so what the reload replaced is reclaimed, then freezes again."""
    out = subprocess.run([sys.executable, "-c", FREEZE_PROBE], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True", "True", "True"]
