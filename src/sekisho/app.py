"""Composition root: read the configuration, wire the parts, run the processes.

No request logic lives here. One process serves a small town; `server.workers: N` forks N
gateway workers that share the listening port (SO_REUSEPORT) while the master keeps the
admin listener, validates reloads once, and restarts a worker that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import math
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sekisho.config.model import Config
from sekisho.errors import ConfigError, SekishoError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from sekisho.audit.log import AuditLog
    from sekisho.observability.admin import AdminServer
    from sekisho.runtime import Runtime

log = logging.getLogger("sekisho.app")

GRACE_SECONDS = 10.0
MASTER_PID_ENV = "SEKISHO_MASTER_PID"  # set by the master for its workers
# How long one thread may hold the GIL while another waits (CPython default 5 ms). A gateway
# worker runs the event loop and the audit writer thread: with 5 ms slices the writer falls
# behind under full load (its events are then refused: 503) and every slice it takes stalls
# the loop by up to 5 ms (tail latency). 1 ms keeps both in check (docs/benchmarks.md).
WORKER_SWITCH_INTERVAL = 0.001


def tune_master_process() -> None:
    """The master also runs an event loop (the audit relay) beside the audit writer thread:
    with CPython's 5 ms slices the writer, handing the GIL back at every database step, waited
    up to 5 ms each time the relay was busy, and its log lagged (503s) under load."""
    sys.setswitchinterval(WORKER_SWITCH_INTERVAL)


# How many workers the master, writing the audit log for all of them, keeps up with at their
# own CPU priority on a saturated machine. It spends about a third of a worker's CPU time per
# request (11–14 µs against 40–45); measured on 2 cores: with 4 workers at its priority it kept
# up, with 6 it fell behind and 23,030 requests were refused (503) in 15 s (docs/benchmarks.md).
MASTER_KEEPS_UP = 3
NICE_STEP_WEIGHT = 1.25  # the Linux scheduler's weight ratio between two nice levels


def worker_nice(workers: int) -> int:
    """How many nice steps below the master each of `workers` relaying workers runs: none
    while the master keeps up at the same priority, then enough that the workers' weight is
    at most `MASTER_KEEPS_UP / workers` of the master's. A lower priority than needed costs
    throughput: every other process on the machine preempts the workers (nice +5 for 2
    workers: 5–14 % fewer requests a second on 2 cores)."""
    if workers <= MASTER_KEEPS_UP:
        return 0
    return min(19, math.ceil(math.log(workers / MASTER_KEEPS_UP, NICE_STEP_WEIGHT)))


def freeze_heap() -> None:
    """Leave what the process has built so far out of every later garbage collection.

    An audit writer holds each batch (thousands of records for up to `flush_interval`), so
    many objects live long enough to reach the oldest generation and full collections come
    often; each walked the whole startup heap (SQLAlchemy, the configuration, the modules). In
    the master under full load (2 workers, about 12 s) 4–5 full collections took 266–452 ms,
    the longest 94–125 ms, while the writer and the relay stood still; frozen (`gc.freeze`),
    26–38 ms, the collection made here included (docs/benchmarks.md). Called once started
    and after each reload: unfreezing first lets the replaced snapshot's cycles be reclaimed."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def tune_worker_process(relaying_workers: int = 0) -> None:
    """Process-wide settings for a gateway worker (one event loop, and an audit writer thread
    unless it is one of `relaying_workers` whose master writes: then it yields the CPU to the
    master as `worker_nice` says)."""
    sys.setswitchinterval(WORKER_SWITCH_INTERVAL)
    if relaying_workers:
        os.nice(worker_nice(relaying_workers))


@dataclass(frozen=True)
class Launch:
    """What `sekisho serve` was asked to run."""

    config: Config
    config_path: str | None  # None in demo mode: the demo config is rebuilt, not re-read
    workers: int
    banner: Callable[[Config], str] | None = None


class RuntimeHolder:
    """The current snapshot. Swapping is one attribute store: requests in flight keep theirs."""

    def __init__(self, runtime: Runtime) -> None:
        self._current = runtime

    def get(self) -> Runtime:
        return self._current

    def swap(self, runtime: Runtime) -> None:
        self._current = runtime


def digest_of(path: str | None, config: Config) -> str:
    """The sha256 of the file the snapshot came from (the loader records it)."""
    if config.digest or path is None:
        return config.digest
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _restart_needed(old: Config, new: Config) -> list[str]:
    """Settings a reload cannot change: they bind sockets or open storage."""
    changed = []
    if old.server.listen != new.server.listen:
        changed.append("server.listen")
    if old.server.admin_listen != new.server.admin_listen:
        changed.append("server.admin_listen")
    if old.server.workers != new.server.workers:
        changed.append("server.workers")
    if old.storage_url != new.storage_url:
        changed.append("storage.url")
    if old.tls != new.tls:
        changed.append("tls")
    if old.connector.listen != new.connector.listen:
        changed.append("connector.listen")
    return changed


def load_snapshot(path: str) -> tuple[Runtime, str]:
    from sekisho.config.loader import load_config
    from sekisho.runtime import build_runtime

    config = load_config(path)
    digest = digest_of(path, config)
    return build_runtime(config, digest), digest


def log_warnings(config: Config, source: str | None) -> None:
    """The configuration's warnings (config/segments.py: e.g. a マイナンバー route closed for
    want of designated terminals) in the log, at start and at every reload: `check-config`
    shows them only to whoever runs it, and a route nobody can reach must not go unnoticed."""
    for warning in config.warnings:
        log.warning("設定の警告 / configuration warning",
                    extra={"fields": {"source": source or "demo", "warning": warning}})


def reload(path: str | None, holder: RuntimeHolder, audit: AuditLog | None, *,
           announce: bool = True) -> bool:
    """Validate the file and swap the snapshot; on any error keep the old one (logged).

    `announce`: log the new snapshot's warnings (one process of an installation does, so a
    forked installation does not repeat each warning once per worker)."""
    from sekisho.audit.events import ConfigRejected, ConfigReloaded

    if path is None:
        log.info("reload ignored: demo mode has no configuration file")
        return False
    try:
        runtime, digest = load_snapshot(path)
    except (SekishoError, OSError) as exc:
        message = str(exc) if isinstance(exc, SekishoError) else f"cannot read {path}"
        log.error("configuration reload refused; the previous configuration stays in force",
                  extra={"fields": {"source": path, "error": message}})
        if audit is not None:
            audit.append_sync(ConfigRejected(source=path, error=message[:2000]))
        return False
    old = holder.get().config
    pending = _restart_needed(old, runtime.config)
    if pending:
        log.warning("these settings change only at restart",
                    extra={"fields": {"settings": pending}})
    holder.swap(runtime)
    log.info("configuration reloaded", extra={"fields": {"source": path, "sha256": digest}})
    if announce:
        log_warnings(runtime.config, path)
    if audit is not None:
        audit.append_sync(ConfigReloaded(
            source=path, sha256=digest, routes=len(runtime.config.routes),
            policies=len(runtime.config.policies),
        ))
    return True


def server_ssl_context(config: Config) -> ssl.SSLContext | None:
    from sekisho.gateway import tls

    if not config.tls.enabled:
        return None
    client_ca = None
    if config.tls.client_certificates == "optional":
        from sekisho.devices.ca import ca_directory

        client_ca = str(ca_directory(config))
    if config.tls.self_signed:
        cert, key = tls.self_signed(Path(config.server.data_dir), self_signed_hosts(config))
        return tls.server_context(str(cert), str(key), client_ca_dir=client_ca)
    assert config.tls.cert_file and config.tls.key_file
    return tls.server_context(config.tls.cert_file, config.tls.key_file,
                              client_ca_dir=client_ca)


def self_signed_hosts(config: Config) -> tuple[str, ...]:
    """Every name the listener answers to: the defaults, each route's host and the portal's
    own host (without it the portal would be the one page a browser refuses)."""
    from sekisho.gateway import tls

    named = {route.host for route in config.routes}
    if config.portal.host:
        named.add(config.portal.host)
    return (*tls.DEFAULT_HOSTS, *sorted(named - set(tls.DEFAULT_HOSTS)))


def open_storage(config: Config) -> Engine:
    from sekisho.storage.database import create_database_engine, require_current_schema

    engine = create_database_engine(config.storage_url.reveal())
    require_current_schema(engine)
    return engine


# --------------------------------------------------------------------------- worker


async def run_worker(launch: Launch, *, reuse_port: bool, admin: bool, audit_reloads: bool) -> None:
    """One gateway process: storage, audit writer, sessions, keys, sign-in pages, gateway."""
    from sekisho.audit.log import AuditLog
    from sekisho.audit.relay import RELAY_ENV, AuditRelay
    from sekisho.gateway.keys import KeyRing
    from sekisho.gateway.server import Gateway
    from sekisho.gateway.watch import LiveConnections
    from sekisho.identity.sessions import SessionManager
    from sekisho.identity.signin import build_signin_handlers
    from sekisho.runtime import build_runtime
    from sekisho.services import AuditSink
    from sekisho.storage.changes import ChangeWatcher
    from sekisho.storage.keys import SigningKeyRepository

    # A worker of a master sends its events to the master's single writer (no writer
    # thread taking this process's GIL from its event loop); a lone process writes itself.
    relay_socket = None if admin else os.environ.get(RELAY_ENV)
    tune_worker_process(launch.workers if relay_socket else 0)
    config = launch.config
    engine = open_storage(config)
    holder = RuntimeHolder(build_runtime(config, digest_of(launch.config_path, config)))
    audit: AuditSink
    local: AuditLog | None = None
    relay: AuditRelay | None = None
    if relay_socket:
        audit = relay = AuditRelay(relay_socket)
        await relay.start(give_up=master_gone)
    else:
        audit = local = AuditLog(
            engine,
            flush_interval=config.audit.flush_interval,
            batch_max=config.audit.batch_max,
        )
        local.start()
    sessions = SessionManager(engine, config.session)
    keyring = KeyRing(SigningKeyRepository(engine))
    keyring.ensure()
    devices = None
    if config.tls.enabled and config.tls.client_certificates == "optional":
        from sekisho.devices.trust import DeviceTrust

        devices = DeviceTrust(engine)
    handlers = build_signin_handlers(
        current_config=lambda: holder.get().config,
        engine=engine,
        sessions=sessions,
        audit=audit,
        device_trust=devices,
        current_runtime=holder.get,
    )
    # Open WebSockets are decided again on a timer and at once on every change committed by
    # any process (the change feed) and on reload: revocation reaches them within a second.
    live = LiveConnections(holder.get, sessions, audit, devices=devices)
    feed = ChangeWatcher(engine, live.changed, live.resync)
    feed_task = asyncio.ensure_future(feed.run())
    from sekisho.identity.cli_login import CliCredentials

    gateway = Gateway(holder.get, sessions, audit, keyring, handlers, devices=devices,
                      watch=live, cli_credentials=CliCredentials(engine))
    ssl_context = server_ssl_context(config)
    await gateway.start(config.server.listen, ssl_context, reuse_port=reuse_port)

    admin_server = None
    broker = None
    if admin:
        admin_server = await _start_admin(config, engine, local, lambda: keyring.jwks_json)
        from sekisho.connector.service import start_broker

        broker = await start_broker(config, engine, audit)  # one process: tunnels end here

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        keyring.reload()
        if reload(launch.config_path, holder, local if audit_reloads else None,
                  announce=audit_reloads):
            sessions.update_settings(holder.get().config.session)
            live.reloaded()
            freeze_heap()

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if launch.banner is not None and admin:
        print(launch.banner(config), flush=True)
    if admin:
        log_warnings(config, launch.config_path)
    watcher = asyncio.ensure_future(_exit_with_master(stop)) if relay is not None else None
    freeze_heap()
    log.info("gateway started", extra={"fields": {
        "pid": os.getpid(), "listen": [str(a) for a in config.server.listen]}})
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    log.info("shutting down", extra={"fields": {"pid": os.getpid()}})
    await asyncio.to_thread(feed.stop)
    feed_task.cancel()
    live.close()
    await gateway.close(GRACE_SECONDS)
    if broker is not None:
        await broker.close()
    if admin_server is not None:
        await admin_server.close()
    if relay is not None:
        await relay.close()
    if local is not None:
        await asyncio.to_thread(local.close)
    engine.dispose()


def master_gone() -> bool:
    """Has this worker's master died (the worker was re-parented)?"""
    # The master's pid comes from the environment, not getppid() at start: a master killed
    # while this worker was still starting would otherwise look like a live parent.
    parent = int(os.environ.get(MASTER_PID_ENV) or os.getppid())
    return os.getppid() != parent


async def _exit_with_master(stop: asyncio.Event) -> None:
    """A worker whose master died (kill -9) could only answer 503: it exits instead, so the
    port is free for a new master and its workers."""
    while not stop.is_set():
        if master_gone():
            log.error("master process gone; worker exits", extra={"fields": {"pid": os.getpid()}})
            stop.set()
            return
        await asyncio.sleep(1.0)


async def _start_admin(
    config: Config, engine: Engine, audit: AuditLog | None, jwks: Callable[[], bytes]
) -> AdminServer:
    from sekisho.observability.admin import AdminServer
    from sekisho.storage.database import require_current_schema

    async def ready() -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        try:
            await asyncio.to_thread(require_current_schema, engine)
            checks["storage"] = "ok"
        except SekishoError as exc:
            checks["storage"] = exc.code
        if audit is not None:
            checks["audit"] = "ok" if audit.healthy else "unavailable"
        return all(v == "ok" for v in checks.values()), checks

    registry = None
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    async def count_sessions() -> None:
        from datetime import UTC, datetime

        from sekisho.observability.metrics import ACTIVE_SESSIONS
        from sekisho.storage.sessions import count_active

        ACTIVE_SESSIONS.set(await asyncio.to_thread(
            count_active, engine, datetime.now(UTC), config.session.idle_timeout))

    server = AdminServer(ready, jwks, registry, before_scrape=count_sessions)
    await server.start(config.server.admin_listen.host, config.server.admin_listen.port)
    return server


def _run(coro_factory: Callable[[], object]) -> None:
    import uvloop

    uvloop.run(coro_factory())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- master


def serve(launch: Launch) -> int:
    """Run in the foreground until SIGTERM/SIGINT."""
    workers = max(1, launch.workers)
    if workers == 1:
        _run(lambda: run_worker(launch, reuse_port=False, admin=True, audit_reloads=True))
        return 0
    return _serve_forked(launch, workers)


def _serve_forked(launch: Launch, workers: int) -> int:
    """Master: start workers as child processes, keep the admin listener, relay signals."""
    import subprocess

    from sekisho.audit.log import AuditLog
    from sekisho.audit.relay import RELAY_ENV, AuditRelayServer
    from sekisho.gateway.keys import KeyRing
    from sekisho.storage.keys import SigningKeyRepository

    if launch.config_path is None:
        return fail("several workers need a configuration file (server.workers > 1)")
    metrics_dir = Path(launch.config.server.data_dir) / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    command = [sys.executable, "-m", "sekisho", "serve", "--config", launch.config_path,
               "--worker-process"]
    children: list[subprocess.Popen[bytes]] = []

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL)  # noqa: S603 (our own argv)

    async def master() -> None:
        from prometheus_client import multiprocess

        tune_master_process()
        engine = open_storage(launch.config)
        keyring = KeyRing(SigningKeyRepository(engine))
        keyring.ensure()  # before the workers start, so they never race to create the first key
        # The installation's single audit writer: the workers relay their events here.
        audit = AuditLog(engine, flush_interval=launch.config.audit.flush_interval,
                         batch_max=launch.config.audit.batch_max, background=True)
        audit.start()
        relay = AuditRelayServer(audit, relay_path(Path(launch.config.server.data_dir)))
        await relay.start()
        os.environ[RELAY_ENV] = relay.path
        os.environ[MASTER_PID_ENV] = str(os.getpid())
        from sekisho.connector.service import start_broker

        # The connector tunnels end in the master; workers reach them over its Unix socket
        # (the environment names it, as for the audit relay).
        broker = await start_broker(launch.config, engine, audit)
        holder = RuntimeHolder(_build(launch))
        # A self-signed certificate is made here, once: workers racing to make their own
        # would each serve a different one (and a client trusting the file meets the other).
        server_ssl_context(launch.config)
        children.extend(spawn() for _ in range(workers))
        admin_server = await _start_admin(launch.config, engine, audit,
                                          lambda: keyring.jwks_json)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_hup() -> None:
            keyring.reload()
            swapped = reload(launch.config_path, holder, audit)
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGHUP)
            if swapped:  # as the workers: a refused file replaced nothing to reclaim
                freeze_heap()

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        if launch.banner is not None:
            print(launch.banner(launch.config), flush=True)
        log_warnings(launch.config, launch.config_path)
        freeze_heap()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            for index, child in enumerate(children):
                if child.poll() is not None and not stop.is_set():
                    multiprocess.mark_process_dead(child.pid)  # type: ignore[no-untyped-call]
                    log.error("worker exited; restarting", extra={"fields": {
                        "pid": child.pid, "status": child.returncode}})
                    await asyncio.sleep(0.5)
                    children[index] = spawn()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS + 5
        while any(c.poll() is None for c in children) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for child in children:
            if child.poll() is None:
                child.kill()
        await admin_server.close()
        if broker is not None:
            await broker.close()
        await relay.close()  # the workers have exited: everything they sent is queued
        await asyncio.to_thread(audit.close)
        engine.dispose()

    _run(master)
    return 0


def relay_path(data_dir: Path) -> str:
    """The audit relay's socket: in the data directory, unless that path is too long for a
    Unix socket (108 bytes), then in a private (0700) temporary directory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = str(data_dir.resolve() / "audit.sock")
    if len(path.encode()) < 100:
        return path
    import tempfile

    return str(Path(tempfile.mkdtemp(prefix="sekisho-")) / "audit.sock")


def _build(launch: Launch) -> Runtime:
    from sekisho.runtime import build_runtime

    return build_runtime(launch.config, digest_of(launch.config_path, launch.config))


def with_workers(config: Config, workers: int | None) -> Config:
    if workers is None:
        return config
    return replace(config, server=replace(config.server, workers=workers))


def fail(message: str) -> int:
    print(f"sekisho: {message}", file=sys.stderr)
    return 2


__all__ = ["ConfigError", "Launch", "RuntimeHolder", "reload", "serve", "with_workers"]
