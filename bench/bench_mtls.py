"""mTLS: TLS handshakes with a device certificate vs plain TLS, and keep-alive throughput of
device-certificate sessions vs the gateway-core baseline, against the real `sekisho serve`.

    python bench/bench_mtls.py [--seconds 5] [--duration 8] [--rounds 2] [--clients 2]
                               [--workers 2] [--only handshakes|throughput]

Two gateways run on copies of one provisioned SQLite database (real CLI: `ca init`,
`db upgrade`, `user add`): one with `tls.client_certificates: optional`, one with it off.
A device is enrolled through the running gateway by the real device code
(`devices.client.enrol`: key made here, CSR, one-time code from `sekisho device code`).

(a) Handshakes: `--clients` processes open connections in a loop for `--seconds`, each a
full handshake (a new connection and no session passed in: no resumption), one request
(`Connection: close`, to a host no route serves, so the answer is the same small 4xx for
everyone) and the close — the request/answer makes sure the server finished the handshake,
client certificate verification included, before the next one starts. Three variants,
interleaved over `--rounds`: the gateway with client certificates off (plain TLS), the
optional gateway without a certificate, and the optional gateway with the device
certificate (mTLS). Printed: handshakes/s of each, Sekisho's CPU per handshake, and mTLS /
plain. Two more variants, outside the comparison, offer the previous connection's session
(resumption, as browsers do) and print how many were actually resumed.

(b) Throughput in steady state with keep-alive. wrk cannot present client certificates, so
every variant is the same chain: wrk → a local nginx (plain HTTP, upstream keep-alive pool
of 64) → Sekisho over TLS → the nginx upstream (1 KiB). Variants, interleaved: the optional
gateway without a client certificate on a route whose policy is `group: staff` (the
gateway-core baseline), the same gateway with nginx's `proxy_ssl_certificate` presenting
the device certificate on a route whose policy also asks `device: {enrolled: true}` (every
request checks the device against the registry through the per-process cache), and the
gateway with client certificates off (plain). Bar: mTLS no more than 10% slower than the
baseline. Then, at one fixed offered rate (half the slowest variant's maximum, wrk's Lua
`delay()`), the CPU time of Sekisho's processes per request: a figure other work on a shared
machine disturbs far less than requests/s. `main(argv) -> dict` returns the figures for
bench/run.py.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_proxy import (  # reference servers and wrk, as the proxy benchmark runs them
    BODY,
    NGINX,
    WRK,
    delay_script,
    free_port,
    nginx_conf,
    start_nginx,
    stop,
    wait_port,
    wrk,
)

SEKISHO = [sys.executable, "-m", "sekisho"]
PASSWORD = "Kaigan-Shiokaze-77"
APP, DEV = "app.localhost", "dev.localhost"
NOWHERE = "no-route.invalid"


# -- the gateways ------------------------------------------------------------------------


def server_certificate(tmp: Path) -> tuple[Path, Path]:
    """One server certificate for both gateways (nginx then trusts exactly one)."""
    from sekisho.gateway.tls import DEFAULT_HOSTS, self_signed

    cert, key = self_signed(tmp / "server", (*DEFAULT_HOSTS, APP, DEV))
    return Path(cert), Path(key)


def _config(tmp: Path, name: str, port: int, admin: int, upstream: int, workers: int,
            client_certificates: str) -> Path:
    data = tmp / f"data-{name}"
    cert, key = server_certificate(tmp)
    path = tmp / f"sekisho-{name}.yaml"
    path.write_text(f"""\
server:
  listen: ["127.0.0.1:{port}"]
  admin_listen: "127.0.0.1:{admin}"
  workers: {workers}
  data_dir: "{data}"
tls:
  cert_file: "{cert}"
  key_file: "{key}"
  client_certificates: "{client_certificates}"
storage:
  url: "sqlite:///{tmp}/sekisho-{name}.db"
mfa:
  office_networks: ["127.0.0.0/8"]
  require_groups: []
policies:
  staff:
    allow:
      and:
        - group: [staff]
  staff-device:
    allow:
      and:
        - group: [staff]
        - device: {{enrolled: true}}
routes:
  - id: app
    from: https://{APP}/
    to: http://127.0.0.1:{upstream}
    segment: internet
    policy: staff
  - id: dev
    from: https://{DEV}/
    to: http://127.0.0.1:{upstream}
    segment: internet
    policy: staff-device
  - id: device-endpoints  # enrolment is served on route hosts; the device names 127.0.0.1
    from: https://127.0.0.1/
    to: http://127.0.0.1:{upstream}
    segment: internet
    policy: staff
""", encoding="utf-8")
    return path


def _cli(config: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([*SEKISHO, *args, "--config", str(config)], input=stdin,
                            text=True, capture_output=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"sekisho {' '.join(args)} failed: {result.stderr}")
    return result.stdout


class Gateway:
    """`sekisho serve --config FILE` in a child process."""

    def __init__(self, config: Path, port: int, admin: int, log: Path) -> None:
        self.config, self.port, self.admin = config, port, admin
        self.process = subprocess.Popen([*SEKISHO, "serve", "--config", str(config)],
                                        stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("sekisho serve exited: " + log.read_text()[-2000:])
            try:
                conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=2)
                conn.request("GET", "/readyz")
                ready = conn.getresponse().status == 200
                conn.close()
                if ready:  # and the public listener (the workers') accepts
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("sekisho serve did not become ready: " + log.read_text()[-2000:])

    @property
    def server_cert(self) -> Path:
        return server_certificate(self.config.parent)[0]


def provision(tmp: Path, config: Path) -> str:
    """The CA, the database and a staff user through the real CLI; a session token."""
    from sekisho.config.model import SessionSettings
    from sekisho.identity.sessions import SessionManager
    from sekisho.storage import users
    from sekisho.storage.database import create_database_engine

    # The CA first: a configuration asking for client certificates needs it to load.
    subprocess.run([*SEKISHO, "ca", "init", "--dir", str(tmp / "data-optional" / "ca"),
                    "--organisation", "関所市"], check=True, capture_output=True, timeout=120)
    _cli(config, "db", "upgrade")
    _cli(config, "group", "add", "staff")
    _cli(config, "user", "add", "tanaka", "--password-stdin", "--group", "staff",
         stdin=PASSWORD + "\n")
    engine = create_database_engine(f"sqlite:///{tmp}/sekisho-optional.db")
    try:  # as a sign-in would leave it (the benchmark measures requests, not sign-ins)
        token, _ = SessionManager(engine, SessionSettings()).create(
            users.require_user(engine, "tanaka"), {"pwd"}, "127.0.0.1", "")
        with engine.connect() as conn:  # everything in the main file before it is copied
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    # The other gateway gets its own copy (same user and session): two audit writers on one
    # SQLite file would wait on each other and skew the comparison.
    shutil.copyfile(tmp / "sekisho-optional.db", tmp / "sekisho-off.db")
    return str(token)


def enrol_device(tmp: Path, gateway: Gateway) -> tuple[Path, Path]:
    """Enrol through the running gateway with the device-side code: (cert, key) files."""
    from sekisho.devices.client import enrol

    out = _cli(gateway.config, "device", "code", "tanaka", "--ttl", "1h")
    code = out.split("tanaka: ", 1)[1].split()[0]
    result = enrol(f"https://127.0.0.1:{gateway.port}", code, "bench-pc",
                   directory=tmp / "device", cafile=str(gateway.server_cert),
                   p12_password=b"bench-p12-password")
    return result.certificate, result.key


# -- (a) handshakes ----------------------------------------------------------------------


def _handshake_loop(port: int, cafile: str, cert: str | None, key: str | None,
                    seconds: float, resume: bool) -> tuple[int, int, list[float]]:
    """Handshakes for `seconds`: (count, resumed, per-connection milliseconds).

    Without `resume` no session is ever passed in, so every connection is a full handshake;
    with it, each connection offers the previous one's session (as a browser would).
    """
    context = ssl.create_default_context(cafile=cafile)
    if cert and key:
        context.load_cert_chain(cert, key)
    request = (f"GET / HTTP/1.1\r\nHost: {NOWHERE}\r\nConnection: close\r\n\r\n").encode()
    times: list[float] = []
    resumed = 0
    session: ssl.SSLSession | None = None
    deadline = time.perf_counter() + seconds
    while (start := time.perf_counter()) < deadline:
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(request)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            if not answer.startswith(b"HTTP/1.1 "):
                raise RuntimeError(f"unexpected answer: {answer[:100]!r}")
            resumed += bool(tls.session_reused)
            if resume:
                session = tls.session
        times.append((time.perf_counter() - start) * 1000)
    return len(times), resumed, times


def handshakes(port: int, cafile: str, cert: str | None, key: str | None, seconds: float,
               clients: int, resume: bool = False) -> dict[str, float]:
    pool = multiprocessing.get_context("fork").Pool(clients)
    try:
        runs = pool.starmap(_handshake_loop,
                            [(port, cafile, cert, key, seconds, resume)] * clients)
    finally:
        pool.close()
        pool.join()
    count = sum(c for c, _, _ in runs)
    times = sorted(t for _, _, ts in runs for t in ts)
    return {"per_s": count / seconds, "count": count,
            "resumed_share": sum(r for _, r, _ in runs) / count,
            "p50_ms": times[len(times) // 2], "p99_ms": times[int(len(times) * 0.99)]}


# -- (b) keep-alive throughput through a TLS client nginx ---------------------------------


def front_nginx(tmp: Path, ports: dict[str, int], targets: dict[str, int], trusted: Path,
                cert: Path, key: Path) -> Path:
    """One nginx with a plain-HTTP server per variant, each with its own upstream pool."""
    prefix = tmp / "front"
    (prefix / "logs").mkdir(parents=True)
    blocks = []
    for name, listen in ports.items():
        client_cert = (f"proxy_ssl_certificate {cert}; proxy_ssl_certificate_key {key};"
                       if name == "mtls" else "")
        blocks.append(f"""
  upstream sekisho_{name} {{ server 127.0.0.1:{targets[name]}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{listen} reuseport;
    location / {{
      proxy_pass https://sekisho_{name};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_ssl_server_name on; proxy_ssl_name localhost;
      proxy_ssl_verify on; proxy_ssl_trusted_certificate {trusted};
      proxy_ssl_session_reuse on;
      {client_cert}
    }}
  }}""")
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  keepalive_requests 1000000;
  {''.join(blocks)}
}}
""")
    return conf


def _status(port: int, host: str, cookie: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host, "Cookie": cookie})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _process_tree(root: int) -> list[int]:
    """`root` and its descendants (the serve master, its workers), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes (all their threads), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def cpu_per_request(gateway: Gateway, front: int, port: int, headers: list[str],
                    duration: float, script: Path) -> tuple[float, float]:
    """Microseconds of CPU per request at a fixed offered rate: (Sekisho's master and
    workers, the front nginx that plays the TLS client).

    Far less sensitive than requests/s to other work on a shared machine: it measures what
    each request costs, not how much CPU was left over for the gateway.
    """
    ours, theirs = _process_tree(gateway.process.pid), _process_tree(front)
    before = cpu_seconds(ours), cpu_seconds(theirs)
    measured = wrk(port, duration, headers, script)
    after = cpu_seconds(ours), cpu_seconds(theirs)
    requests = measured["raw_rps"] * duration
    if not requests:
        return float("nan"), float("nan")
    return ((after[0] - before[0]) / requests * 1e6, (after[1] - before[1]) / requests * 1e6)


# -- the run -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per handshake loop")
    parser.add_argument("--duration", type=float, default=8.0, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--clients", type=int, default=2, help="handshake client processes")
    parser.add_argument("--workers", type=int, default=2, help="server.workers of Sekisho")
    parser.add_argument("--only", choices=("handshakes", "throughput"), default=None)
    args = parser.parse_args(argv)
    for tool in (NGINX, WRK):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing: run scripts/bench-deps (as root)")
    results: dict[str, Any] = {"workers": args.workers, "clients": args.clients,
                               "load_before": os.getloadavg()[0]}
    procs: list[subprocess.Popen[bytes]] = []
    gateways: list[Gateway] = []
    with tempfile.TemporaryDirectory(prefix="sekisho-bench-mtls-") as name:
        tmp = Path(name)
        try:
            up = free_port()
            procs.append(start_nginx(nginx_conf(tmp, "upstream", up, BODY)))
            wait_port(up)
            ports = {"optional": (free_port(), free_port()), "off": (free_port(), free_port())}
            configs = {mode: _config(tmp, mode, p, a, up, args.workers, mode)
                       for mode, (p, a) in ports.items()}
            token = provision(tmp, configs["optional"])
            for mode, (port, admin) in ports.items():
                gateways.append(Gateway(configs[mode], port, admin, tmp / f"{mode}.log"))
            optional, off = gateways
            cert, key = enrol_device(tmp, optional)
            if args.only in (None, "handshakes"):
                results["handshakes"] = _run_handshakes(args, optional, off, cert, key)
            if args.only in (None, "throughput"):
                results["throughput"] = _run_throughput(args, tmp, procs, optional, off, cert,
                                                        key, token)
        finally:
            for gateway in gateways:
                stop([gateway.process])
            stop(procs)
    results["load_after"] = os.getloadavg()[0]
    report(results)
    return results


def _run_handshakes(args: argparse.Namespace, optional: Gateway, off: Gateway, cert: Path,
                    key: Path) -> dict[str, Any]:
    variants = {
        "plain": (off, None, None, False),
        "optional_no_cert": (optional, None, None, False),
        "mtls": (optional, str(cert), str(key), False),
        # Not part of the bar: what a browser reconnecting with its session ticket costs.
        "plain_resumed": (off, None, None, True),
        "mtls_resumed": (optional, str(cert), str(key), True),
    }
    for gateway, c, k, resume in variants.values():  # warm: imports, caches, device lookup
        handshakes(gateway.port, str(gateway.server_cert), c, k, 0.5, 1, resume)
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for order in _rotations(list(variants), args.rounds):
        for variant in order:
            gateway, c, k, resume = variants[variant]
            pids = _process_tree(gateway.process.pid)
            before = cpu_seconds(pids)
            run = handshakes(gateway.port, str(gateway.server_cert), c, k, args.seconds,
                             args.clients, resume)
            # Sekisho's own CPU per handshake: the clients share the machine's cores.
            run["server_cpu_us"] = (cpu_seconds(pids) - before) / run["count"] * 1e6
            runs[variant].append(run)
    out: dict[str, Any] = {"runs": runs}
    for variant, measured in runs.items():
        out[variant] = statistics.median(r["per_s"] for r in measured)
        out[f"{variant}_server_cpu_us"] = statistics.median(r["server_cpu_us"]
                                                            for r in measured)
    out["ratio_mtls_plain"] = out["mtls"] / out["plain"]
    out["ratio_mtls_optional"] = out["mtls"] / out["optional_no_cert"]
    return out


def _run_throughput(args: argparse.Namespace, tmp: Path, procs: list[subprocess.Popen[bytes]],
                    optional: Gateway, off: Gateway, cert: Path, key: Path,
                    token: str) -> dict[str, Any]:
    variants = {"baseline": (optional, APP), "mtls": (optional, DEV), "plain": (off, APP)}
    fronts = {v: free_port() for v in variants}
    conf = front_nginx(tmp, fronts, {v: g.port for v, (g, _) in variants.items()},
                       optional.server_cert, cert, key)
    procs.append(start_nginx(conf))
    front = procs[-1].pid
    cookie = f"__Host-sekisho={token}"
    deadline = time.monotonic() + 15
    for variant, (_, host) in variants.items():
        while (status := _safe_status(fronts[variant], host, cookie)) != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{variant}: the chain answers {status}, not 200 "
                                   f"(see {tmp}/front/logs/error.log)")
            time.sleep(0.2)
    # Without the device certificate the device route refuses: the mTLS facts are real.
    refused = _status(fronts["baseline"], DEV, cookie)
    if refused != 403:
        raise RuntimeError(f"the device route answered {refused} without a certificate")
    headers = {v: [f"Host: {host}", f"Cookie: {cookie}"] for v, (_, host) in variants.items()}
    for variant in variants:  # warm the pools, caches and keep-alive connections
        wrk(fronts[variant], 2, headers[variant])
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for order in _rotations(list(variants), args.rounds):
        for variant in order:
            runs[variant].append(wrk(fronts[variant], args.duration, headers[variant]))
    out: dict[str, Any] = {"runs": runs}
    for variant, measured in runs.items():
        out[variant] = {"rps": statistics.median(r["rps"] for r in measured),
                        "p50_ms": statistics.median(r["p50_ms"] for r in measured),
                        "p99_ms": statistics.median(r["p99_ms"] for r in measured),
                        "non_2xx": sum(r["non_2xx"] for r in measured)}
    # CPU per request at one fixed rate every variant sustains (half the slowest maximum).
    rate = min(out[v]["rps"] for v in variants) / 2
    script = delay_script(tmp, rate)
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    nginx_cpu: dict[str, list[float]] = {v: [] for v in variants}
    for order in _rotations(list(variants), args.rounds):
        for variant in order:
            ours, theirs = cpu_per_request(variants[variant][0], front, fronts[variant],
                                           headers[variant], args.duration, script)
            cpu[variant].append(ours)
            nginx_cpu[variant].append(theirs)
    out["cpu_rate"] = rate
    out["cpu_runs"] = cpu
    out["cpu_us"] = {v: statistics.median(values) for v, values in cpu.items()}
    out["nginx_cpu_us"] = {v: statistics.median(values) for v, values in nginx_cpu.items()}
    out["ratio_mtls_baseline"] = out["mtls"]["rps"] / out["baseline"]["rps"]
    out["ratio_mtls_plain"] = out["mtls"]["rps"] / out["plain"]["rps"]
    out["cpu_ratio_mtls_baseline"] = out["cpu_us"]["mtls"] / out["cpu_us"]["baseline"]
    out["bar_met"] = out["ratio_mtls_baseline"] >= 0.90
    return out


def _rotations(variants: list[str], rounds: int) -> list[list[str]]:
    """Each round starts with the next variant, so none is always measured last."""
    return [variants[r % len(variants):] + variants[:r % len(variants)] for r in range(rounds)]


def _safe_status(port: int, host: str, cookie: str) -> int:
    try:
        return _status(port, host, cookie)
    except OSError:
        return 0


def report(results: dict[str, Any]) -> None:
    print(f"\nSekisho workers {results['workers']}; load average {results['load_before']:.1f} "
          f"before, {results['load_after']:.1f} after")
    hs = results.get("handshakes")
    if hs:
        print(f"\n(a) full TLS handshakes + one request, {results['clients']} client processes")
        print(f"{'variant':<20}{'handshakes/s':>14}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'server CPU µs':>15}   per round")
        for variant in ("plain", "optional_no_cert", "mtls", "plain_resumed", "mtls_resumed"):
            last = hs["runs"][variant][-1]
            rounds = " / ".join(f"{r['per_s']:.0f}" for r in hs["runs"][variant])
            resumed = statistics.median(r["resumed_share"] for r in hs["runs"][variant])
            print(f"{variant:<20}{hs[variant]:>14.0f}{last['p50_ms']:>9.2f}"
                  f"{last['p99_ms']:>9.2f}{hs[variant + '_server_cpu_us']:>15.0f}   {rounds}"
                  + (f"   ({resumed:.0%} resumed)" if variant.endswith("resumed") else ""))
        print(f"mTLS / plain TLS = {hs['ratio_mtls_plain']:.3f}   "
              f"mTLS / optional without certificate = {hs['ratio_mtls_optional']:.3f}   "
              f"server CPU per handshake mTLS / plain = "
              f"{hs['mtls_server_cpu_us'] / hs['plain_server_cpu_us']:.2f}")
    tp = results.get("throughput")
    if tp:
        print("\n(b) keep-alive throughput: wrk → nginx (HTTP) → Sekisho (TLS) → upstream")
        print(f"{'variant':<12}{'2xx rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}"
              "   per round")
        for variant in ("plain", "baseline", "mtls"):
            row = tp[variant]
            rounds = " / ".join(f"{r['rps']:.0f}" for r in tp["runs"][variant])
            print(f"{variant:<12}{row['rps']:>10.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
                  f"{row['non_2xx']:>9.0f}   {rounds}")
        print(f"mTLS / baseline = {tp['ratio_mtls_baseline']:.3f} (bar >= 0.90: "
              f"{'met' if tp['bar_met'] else 'NOT met'})   mTLS / plain = "
              f"{tp['ratio_mtls_plain']:.3f}")
        cpu = tp["cpu_us"]
        print(f"Sekisho CPU per request at {tp['cpu_rate']:.0f} req/s offered: "
              + ", ".join(f"{v} {cpu[v]:.0f} µs ("
                          + " / ".join(f"{x:.0f}" for x in tp["cpu_runs"][v]) + ")"
                          for v in ("plain", "baseline", "mtls"))
              + f"; mTLS / baseline = {tp['cpu_ratio_mtls_baseline']:.3f}")
        print("front nginx (the TLS client) CPU per request: " + ", ".join(
            f"{v} {tp['nginx_cpu_us'][v]:.0f} µs" for v in ("plain", "baseline", "mtls")))


if __name__ == "__main__":
    main(sys.argv[1:])
