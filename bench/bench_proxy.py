"""Proxy throughput and latency: Sekisho against nginx and Caddy, measured in one run.

    python bench/bench_proxy.py [--duration 10] [--workers 1,2,3] [--half-rounds 3] [--profile]

An nginx (worker_processes 1) serves a 1 KiB response as the upstream; the nginx reverse
proxy under test runs `worker_processes auto` (2 here). wrk (2 threads, 64 keep-alive
connections) measures: (a) the upstream directly, (b) an nginx reverse proxy, (c) a Caddy
reverse proxy, (d) Sekisho with a real signed-in session (SessionManager over SQLite), a
group policy, the assertion and the real AuditLog (hash chain, SQLite), with 1, 2 and 3
worker processes sharing the port through SO_REUSEPORT (tuned as `sekisho serve` tunes its
workers); the best counts. All plain HTTP, so TLS cost is equal (absent) for every contender.
Then the added p99 over nginx at half of Sekisho's
maximum rate: wrk paced by a Lua `delay()` schedule (no wrk2/oha in Debian; see docs), in
`--half-rounds` alternated nginx/Sekisho pairs whose median is the figure.
`main(argv) -> dict` returns the figures for bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NGINX = "/usr/sbin/nginx"
CADDY = "/usr/bin/caddy"
WRK = "/usr/bin/wrk"
HOST = "app.localhost"
BODY = "x" * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0, headers: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n{headers}Connection: close"
                             "\r\n\r\n".encode())
                if sock.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered 200 on port {port}")


def nginx_conf(tmp: Path, name: str, port: int, body: str, workers: str = "1") -> Path:
    prefix = tmp / name
    prefix.mkdir()
    (prefix / "logs").mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{body.split(':')[1] if body.startswith('proxy:') else 1};
                      keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
      {"proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection '';"
       if body.startswith("proxy:") else
       f"default_type text/plain; return 200 '{body}';"}
    }}
  }}
}}
""")
    return conf


def start_nginx(conf: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([NGINX, "-p", str(conf.parent), "-c", str(conf), "-g",
                             "daemon off; master_process on;"])


def start_caddy(tmp: Path, port: int, upstream: int) -> subprocess.Popen[bytes]:
    caddyfile = tmp / "Caddyfile"
    caddyfile.write_text(f"{{\n  admin off\n  auto_https off\n}}\n"
                         f"http://:{port} {{\n  bind 127.0.0.1\n"
                         f"  reverse_proxy 127.0.0.1:{upstream}\n}}\n")
    env = {**os.environ, "XDG_DATA_HOME": str(tmp / "caddy-data"),
           "XDG_CONFIG_HOME": str(tmp / "caddy-config"), "HOME": str(tmp)}
    return subprocess.Popen([CADDY, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wrk(port: int, duration: float, headers: list[str], script: Path | None = None,
        connections: int = 64) -> dict[str, float]:
    command = [WRK, "-t2", f"-c{connections}", f"-d{int(duration)}s", "--latency"]
    for header in headers:
        command += ["-H", header]
    if script is not None:
        command += ["-s", str(script)]
    command.append(f"http://127.0.0.1:{port}/")
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(label: str) -> float:
        match = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    total = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = float(errors.group(1)) if errors else 0.0
    # Only successful answers count: a fast 503 (e.g. audit refusing) is not throughput.
    ok_rps = rps * (total - non_2xx) / total if total else 0.0
    return {"rps": ok_rps, "raw_rps": rps, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "non_2xx": non_2xx}


# A wrk script holding each wrk thread to a schedule of requests `interval` ms apart: each
# call of `delay()` (after any connection's response) takes the thread's next slot. wrk's Lua
# is LuaJIT, whose ffi reads the monotonic clock; its `delay()` is in whole milliseconds, so a
# request leaves up to half a millisecond off its slot, but the rate is held exactly. (A fixed
# delay per connection made the rate depend on the response time and move in steps of 25 %:
# "half of 28,500 req/s" was 12,200 measured.)
_PACED = """local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} sekisho_timespec;
int clock_gettime(int clock, sekisho_timespec *now);
]]
local now = ffi.new("sekisho_timespec")
local interval = {interval!r}
local slot = nil
function delay()
  ffi.C.clock_gettime(1, now)
  local ms = tonumber(now.tv_sec) * 1000 + tonumber(now.tv_nsec) / 1e6
  if slot == nil or slot < ms then slot = ms end
  slot = slot + interval
  return math.floor(slot - ms + 0.5)
end
"""


def delay_script(tmp: Path, rate: float, threads: int = 2) -> Path:
    """A wrk script (for `wrk -t{threads}`) offering `rate` requests a second in all."""
    path = tmp / f"paced-{int(rate)}.lua"
    path.write_text(_PACED.format(interval=threads * 1000 / rate))
    return path


# -- Sekisho workers ------------------------------------------------------------------------

def prepare_sekisho(tmp: Path, upstream: int) -> tuple[str, str, Path]:
    """A migrated SQLite database with a user in group `staff`, a live session and a key."""
    from sekisho.config.model import SessionSettings
    from sekisho.gateway.keys import KeyRing
    from sekisho.identity.sessions import SessionManager
    from sekisho.storage import users
    from sekisho.storage.database import create_database_engine, upgrade
    from sekisho.storage.keys import SigningKeyRepository

    url = f"sqlite:///{tmp}/sekisho.db"
    engine = create_database_engine(url)
    upgrade(engine)
    user = users.create_user(engine, "alice", display_name="Alice", email="alice@example.jp")
    users.create_group(engine, "staff")
    users.add_member(engine, "staff", "alice")
    token, _ = SessionManager(engine, SessionSettings()).create(user, {"pwd"}, "127.0.0.1", "")
    KeyRing(SigningKeyRepository(engine)).ensure()
    engine.dispose()
    spec = tmp / "sekisho.json"
    spec.write_text(json.dumps({"url": url, "upstream": upstream}))
    return url, token, spec


def audit_master(spec_path: str, path: str) -> None:
    """The master's part of `sekisho serve` with workers > 1: the single audit writer."""
    import uvloop

    from sekisho.app import freeze_heap, tune_master_process
    from sekisho.audit.log import AuditLog
    from sekisho.audit.relay import AuditRelayServer
    from sekisho.storage.database import create_database_engine

    tune_master_process()  # as `sekisho serve` tunes its master
    spec = json.loads(Path(spec_path).read_text())
    engine = create_database_engine(spec["url"])
    audit = AuditLog(engine, background=True)  # as `sekisho serve`'s master
    audit.start()

    async def run() -> None:
        server = AuditRelayServer(audit, path)
        await server.start()
        freeze_heap()  # as `sekisho serve` does once started
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.close()

    uvloop.run(run())
    audit.close()
    engine.dispose()


def worker(spec_path: str, port: int, profile: str | None, relay: str | None = None,
           workers: int = 1) -> None:
    import uvloop

    from sekisho.app import freeze_heap, tune_worker_process
    from sekisho.audit.log import AuditLog
    from sekisho.audit.relay import AuditRelay
    from sekisho.config.model import Config, ListenAddress, Route, SessionSettings
    from sekisho.gateway.keys import KeyRing
    from sekisho.gateway.server import Gateway
    from sekisho.identity.sessions import SessionManager
    from sekisho.runtime import build_runtime
    from sekisho.services import AuditSink
    from sekisho.storage.database import create_database_engine
    from sekisho.storage.keys import SigningKeyRepository

    tune_worker_process(workers if relay is not None else 0)  # as `sekisho serve` does
    spec = json.loads(Path(spec_path).read_text())
    engine = create_database_engine(spec["url"])
    config = Config(source="<bench>", routes=(
        Route(id="app", host=HOST, path_prefix="/", to=f"http://127.0.0.1:{spec['upstream']}",
              policy="staff"),), policies={"staff": {"allow": {"and": [{"group": ["staff"]}]}}})
    runtime = build_runtime(config)
    keyring = KeyRing(SigningKeyRepository(engine))
    keyring.reload()
    local = AuditLog(engine) if relay is None else None
    if local is not None:
        local.start()
    # bench_instructions sets the session cache TTL (`session.cache_ttl`) in the spec.
    sessions = SessionManager(engine, SessionSettings(cache_ttl=spec.get("cache_ttl", 1.0)))

    async def run() -> None:
        audit: AuditSink
        if relay is not None:
            audit = forward = AuditRelay(relay)
            forward.send_delay = spec.get("send_delay", forward.send_delay)  # bench_instructions
            await forward.start()
        else:
            assert local is not None
            audit = local
        gateway = Gateway(lambda: runtime, sessions, audit, keyring, {})
        await gateway.start([ListenAddress("127.0.0.1", port)], None, reuse_port=True)
        freeze_heap()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await gateway.close(1.0)
        if relay is not None:
            await forward.close()

    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        uvloop.run(run())
        profiler.disable()
        profiler.dump_stats(profile)
    else:
        uvloop.run(run())
    if local is not None:
        local.close()
    engine.dispose()


def start_workers(spec: Path, port: int, count: int, profile: Path | None = None,
                  arrangement: str = "serve") -> list[subprocess.Popen[bytes]]:
    """`count` workers arranged as `sekisho serve` arranges them ("serve": with several
    workers, one audit writer in a master process fed by relays; one worker writes itself)
    or each worker with its own writer thread ("local", the arrangement before the relay)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    procs = []
    relay: list[str] = []
    if arrangement == "serve" and count > 1:
        path = str(spec.parent / f"audit-{port}.sock")
        procs.append(subprocess.Popen([sys.executable, __file__, "--audit-master", str(spec),
                                       "--relay", path], env=env))
        deadline = time.monotonic() + 15
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise RuntimeError("the audit master did not start")
            time.sleep(0.05)
        relay = ["--relay", path]
    for i in range(count):
        command = [sys.executable, __file__, "--worker", str(spec), "--port", str(port),
                   "--of", str(count), *relay]
        if profile is not None:
            command += ["--profile-out", f"{profile}.{i}"]
        procs.append(subprocess.Popen(command, env=env))
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    # Workers first, then the audit master (started first), as `sekisho serve` stops them.
    for proc in procs[::-1]:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_use(pid: int) -> tuple[float, float, int]:
    """(user seconds, system seconds, involuntary context switches) of a process so far, all
    its threads: where a request's CPU goes, beside the rate (Linux `/proc`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            for line in (task / "status").read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches"):
                    switches += int(line.split()[1])
    return int(fields[11]) / tick, int(fields[12]) / tick, switches


def cpu_per_request(procs: list[subprocess.Popen[bytes]], before: list[tuple[float, float, int]],
                    requests: float) -> dict[str, float]:
    """CPU µs per request of the master (when there is one) and of all workers together,
    their kernel share, and how often a worker was preempted per request."""
    after = [cpu_use(proc.pid) for proc in procs]
    used = [(a[0] - b[0], a[1] - b[1], a[2] - b[2]) for a, b in zip(after, before, strict=True)]
    relaying = "--audit-master" in list(procs[0].args)  # type: ignore[arg-type]
    master, workers = (used[0], used[1:]) if relaying else (None, used)
    per = 1e6 / max(requests, 1.0)
    result = {"workers_us": round(sum(u + k for u, k, _ in workers) * per, 1),
              "workers_kernel_us": round(sum(k for _, k, _ in workers) * per, 1),
              "worker_preemptions": round(sum(n for _, _, n in workers) / max(requests, 1.0), 3)}
    if master is not None:
        result["master_us"] = round((master[0] + master[1]) * per, 1)
    return result


def half_rate(tmp: Path, spec: Path, nginx_port: int, cookie: str, *, rate: float,
              workers: int, arrangements: list[str], duration: float,
              rounds: int) -> dict[str, Any]:
    """The added p99 over nginx at `rate`, from `rounds` alternated samples (nginx, then each
    arrangement of `workers` Sekisho workers, kept running between rounds): one sample moves by
    milliseconds with the rest of the machine's load (1.4 to 5.4 ms for the same code in one
    session), so every round is kept and the median is the figure."""
    script = delay_script(tmp, rate)
    headers = [f"Host: {HOST}"]
    ports: dict[str, int] = {}
    running: list[list[subprocess.Popen[bytes]]] = []
    result: dict[str, Any] = {"rate": rate, "rounds": []}
    try:
        for arrangement in arrangements:
            label = "sekisho" + ("" if arrangement == "serve" else f"_{arrangement}")
            ports[label] = free_port()
            running.append(start_workers(spec, ports[label], workers, arrangement=arrangement))
            wait_port(ports[label], headers=cookie + "\r\n")
            wrk(ports[label], 2, [*headers, cookie])  # warm the caches and pools
        for _ in range(rounds):
            pair: dict[str, Any] = {"nginx": wrk(nginx_port, duration, headers, script)}
            for label, port in ports.items():
                pair[label] = wrk(port, duration, [*headers, cookie], script)
                pair["added" + label[7:]] = round(
                    pair[label]["p99_ms"] - pair["nginx"]["p99_ms"], 3)
            result["rounds"].append(pair)
    finally:
        for procs in running:
            stop(procs)
    for label in ports:
        result["added_p99_ms" + label[7:]] = round(statistics.median(
            pair["added" + label[7:]] for pair in result["rounds"]), 3)
    return result


# -- the run ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--profile", action="store_true",
                        help="also run one profiled worker and print where the time goes")
    parser.add_argument("--audit", default="serve",
                        help="serve (as `sekisho serve`), local (a writer per worker), or both "
                             "as serve,local to compare them in one run")
    parser.add_argument("--half-rounds", type=int, default=3,
                        help="alternated nginx/Sekisho pairs at half rate (the median counts)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--audit-master", help=argparse.SUPPRESS)
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    parser.add_argument("--of", type=int, default=1, help=argparse.SUPPRESS)  # workers in all
    args = parser.parse_args(argv)
    if args.audit_master:
        audit_master(args.audit_master, args.relay)
        return {}
    if args.worker:
        worker(args.worker, args.port, args.profile_out, args.relay, args.of)
        return {}
    arrangements = args.audit.split(",")

    def key(count: int, arrangement: str) -> str:
        return f"sekisho_{count}w" + ("" if arrangement == "serve" else f"_{arrangement}")

    results: dict[str, Any] = {}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="sekisho-bench-") as name:
        tmp = Path(name)
        try:
            up, ngx, cdy = free_port(), free_port(), free_port()
            procs.append(start_nginx(nginx_conf(tmp, "upstream", up, BODY)))
            # The reference proxy may use every core, as Sekisho may use several workers.
            procs.append(start_nginx(nginx_conf(tmp, "proxy", ngx, f"proxy:{up}", "auto")))
            procs.append(start_caddy(tmp, cdy, up))
            for port in (up, ngx, cdy):
                wait_port(port)
            _, token, spec = prepare_sekisho(tmp, up)
            cookie = f"Cookie: __Host-sekisho={token}"
            headers = [f"Host: {HOST}"]
            results["direct"] = wrk(up, args.duration, headers)
            results["nginx"] = wrk(ngx, args.duration, headers)
            results["caddy"] = wrk(cdy, args.duration, headers)
            for count in (int(c) for c in args.workers.split(",")):
                for arrangement in arrangements:
                    port = free_port()
                    workers = start_workers(spec, port, count, arrangement=arrangement)
                    try:
                        wait_port(port, headers=cookie + "\r\n")
                        wrk(port, 2, [*headers, cookie])  # warm the caches and pools
                        before = [cpu_use(proc.pid) for proc in workers]
                        run: dict[str, Any] = {**wrk(port, args.duration, [*headers, cookie])}
                        run["cpu"] = cpu_per_request(workers, before,
                                                     run["raw_rps"] * args.duration)
                        results[key(count, arrangement)] = run
                    finally:
                        stop(workers)
            best_key = max((k for k in results if k.startswith("sekisho_")),
                           key=lambda k: results[k]["rps"])
            best = results[best_key]
            count = int(best_key.split("_")[1][:-1])
            results["half_rate"] = half_rate(
                tmp, spec, ngx, cookie, rate=best["rps"] / 2, workers=count,
                arrangements=arrangements, duration=args.duration, rounds=args.half_rounds)
            results["ratio_nginx"] = round(best["rps"] / results["nginx"]["rps"], 3)
            results["ratio_caddy"] = round(best["rps"] / results["caddy"]["rps"], 3)
            results["best"] = best_key
            if args.profile:
                port = free_port()
                workers = start_workers(spec, port, 1, profile=tmp / "prof")
                try:
                    wait_port(port, headers=cookie + "\r\n")
                    wrk(port, args.duration, [*headers, cookie])
                finally:
                    stop(workers)
                import pstats

                stats = pstats.Stats(str(tmp / "prof.0"))
                stats.sort_stats("tottime").print_stats(25)
        finally:
            stop(procs)
    report(results)
    return results


def report(results: dict[str, Any]) -> None:
    print(f"\n{'target':<14}{'2xx rps':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for key, value in results.items():
        if isinstance(value, dict) and "rps" in value:
            print(f"{key:<14}{value['rps']:>10.0f}{value['p50_ms']:>10.2f}{value['p99_ms']:>10.2f}"
                  f"{value['non_2xx']:>10.0f}")
    for key, value in results.items():
        cpu = value.get("cpu") if isinstance(value, dict) else None
        if cpu:
            master = f"master {cpu['master_us']:.1f} µs, " if "master_us" in cpu else ""
            print(f"{key}: CPU per request {master}workers {cpu['workers_us']:.1f} µs (kernel "
                  f"{cpu['workers_kernel_us']:.1f}); workers preempted "
                  f"{cpu['worker_preemptions']:.2f} times per request")
    half = results.get("half_rate")
    if half:
        print(f"\nat {half['rate']:.0f} req/s offered (half of Sekisho's max), "
              f"{len(half['rounds'])} alternated rounds:")
        for index, pair in enumerate(half["rounds"], start=1):
            line = (f"  round {index}: nginx {pair['nginx']['raw_rps']:.0f} req/s measured, "
                    f"p99 {pair['nginx']['p99_ms']:.2f} ms")
            for name in (k for k in pair if k.startswith("sekisho")):
                line += (f"; {name} {pair[name]['raw_rps']:.0f} req/s, p99 "
                         f"{pair[name]['p99_ms']:.2f} ms, added {pair['added' + name[7:]]:.2f}")
            print(line)
        for key in (k for k in half if k.startswith("added_p99_ms")):
            print(f"  added p99 over nginx{key[12:]}: median {half[key]:.2f} ms (bar: <= 2 ms)")
    if "ratio_nginx" in results:
        print(f"Sekisho ({results['best']}) / nginx = {results['ratio_nginx']:.3f}   "
              f"Sekisho / Caddy = {results['ratio_caddy']:.3f}   (bar: >= 0.35 x nginx)")


if __name__ == "__main__":
    main(sys.argv[1:])
