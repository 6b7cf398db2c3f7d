"""TCP access: bulk transfer and latency through `sekisho tcp`, against `ssh -L` in the same run.

    python bench/bench_tcp.py [--bytes 1073741824] [--rounds 2000] [--streams 200]

Contenders, all on loopback, each carrying the same bytes to the same sink process:
- direct TCP (the floor: no forwarder at all);
- `ssh -L` to an OpenSSH server on 127.0.0.1 (a high port, a test key, OpenSSH's default
  cipher as negotiated — reported);
- `sekisho tcp` → gateway (TLS) → the destination directly (`to: tcp://…`);
- `sekisho tcp` → gateway (TLS) → connector tunnel (TLS, mTLS) → agent → the destination.
Every forwarder is a real process (`sekisho serve`, `sekisho tcp`, `sekisho connector run`,
`ssh`, `sshd`); "CPU s" is the user+system time of the forwarders' processes during the
transfer (client and sink are the same for all and not counted). Also: the round trip of a
64-byte message (p50/p99) and what each path adds to direct TCP; 200 concurrent streams
through one connector (errors) and the memory each idle stream costs (RSS of the gateway,
the agent and `sekisho tcp` before and after opening them). Needs root-free loopback only;
`ssh -L` needs /usr/sbin/sshd and ssh (scripts/bench-deps installs them) and is skipped,
with its reason, otherwise. `main(argv) -> dict` returns the figures for bench/run.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SEKISHO = [sys.executable, "-m", "sekisho"]
CHUNK = 1 << 20
SITE = "bench"
TICKS = os.sysconf("SC_CLK_TCK")


# -- the sink / echo destination (a thread per connection, blocking sockets) -----------------

def _serve_one(conn: socket.socket) -> None:
    with conn:
        mode = conn.recv(1)
        if mode == b"S":  # sink: 8-byte length, then that many bytes, then one byte back
            header = b""
            while len(header) < 8:
                header += conn.recv(8 - len(header))
            left = int.from_bytes(header, "big")
            buffer = bytearray(CHUNK)
            while left > 0:
                got = conn.recv_into(buffer, min(left, CHUNK))
                if not got:
                    return
                left -= got
            conn.sendall(b"K")
        elif mode == b"E":  # echo
            while data := conn.recv(65536):
                conn.sendall(data)


class Destination:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


# -- measuring ---------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, float, int]:
    """(parent pid, CPU seconds, RSS bytes) of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS, rss


def tree(roots: list[int]) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry)] = _stat(int(entry))[0]
    found, frontier = set(roots), list(roots)
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found.add(child)
                frontier.append(child)
    return sorted(found)


def cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in tree(pids):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += _stat(pid)[1]
    return total


def rss(pids: list[int]) -> int:
    total = 0
    for pid in tree(pids):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += _stat(pid)[2]
    return total


def bulk(port: int, size: int) -> float:
    """Seconds to carry `size` bytes to the sink (until its acknowledgement)."""
    payload = memoryview(os.urandom(CHUNK))
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        sock.sendall(b"S" + size.to_bytes(8, "big"))
        left = size
        while left > 0:
            n = min(left, CHUNK)
            sock.sendall(payload[:n])
            left -= n
        assert sock.recv(1) == b"K"
        return time.perf_counter() - started


def round_trips(port: int, rounds: int) -> list[float]:
    message = b"m" * 64
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"E")
        times = []
        for _ in range(rounds + 50):
            started = time.perf_counter()
            sock.sendall(message)
            got = 0
            while got < len(message):
                got += len(sock.recv(65536))
            times.append(time.perf_counter() - started)
        return times[50:]  # warm-up dropped


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the contenders ------------------------------------------------------------------------

@contextlib.contextmanager
def ssh_forward(work: Path, destination: int) -> Iterator[tuple[int, list[int], str]]:
    """(local port, forwarder pids, negotiated cipher) for `ssh -L` through a test sshd."""
    keys = work / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)],
                       check=True)
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    port, local = free_port(), free_port()
    (keys / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile {keys / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(keys / "sshd_config")],
                            stderr=subprocess.DEVNULL)
    ssh = None
    try:
        wait_port(port)
        user = os.environ.get("USER") or "root"
        ssh = subprocess.Popen(
            ["ssh", "-N", "-v", "-i", str(keys / "client"), "-p", str(port),
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
             "-L", f"127.0.0.1:{local}:127.0.0.1:{destination}", f"{user}@127.0.0.1"],
            stderr=subprocess.PIPE)
        cipher = ""
        assert ssh.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not cipher:
            line = ssh.stderr.readline().decode(errors="replace")
            match = re.search(r"kex: server->client cipher: (\S+)", line)
            if match:
                cipher = match.group(1)
        threading.Thread(target=ssh.stderr.read, daemon=True).start()
        wait_port(local)
        yield local, [ssh.pid, sshd.pid], cipher
    finally:
        for process in (ssh, sshd):
            if process is not None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)


class SekishoStack:
    """`sekisho serve` with a direct and a connector TCP route, an agent, a CLI credential."""

    def __init__(self, work: Path, destination: int) -> None:
        self.work = work
        self.destination = destination
        self.port, self.admin, self.cport = free_port(), free_port(), free_port()
        self.config = work / "sekisho.yaml"
        self.env = {**os.environ, "SEKISHO_LOG_LEVEL": "WARNING"}
        self.config.write_text(f"""\
server:
  listen: ["127.0.0.1:{self.port}"]
  admin_listen: "127.0.0.1:{self.admin}"
  workers: 1
  data_dir: "{work / 'data'}"
tls:
  self_signed: true
storage:
  url: "sqlite:///{work / 'sekisho.db'}"
session:
  cache_ttl: 5s
mfa:
  office_networks: ["127.0.0.0/8"]
  require_groups: []
policies:
  staff:
    allow:
      and:
        - authenticated: true
routes:
  - id: bulk
    from: https://bulk.localhost/
    to: tcp://127.0.0.1:{destination}
    segment: internet
    policy: staff
    mode: tcp
  - id: bulkc
    from: https://bulkc.localhost/
    to: connector:{SITE}/127.0.0.1:{destination}
    segment: internet
    policy: staff
    mode: tcp
connector:
  listen: "127.0.0.1:{self.cport}"
""")
        self.processes: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run([*SEKISHO, *args, "--config", str(self.config)], input=stdin,
                              text=True, capture_output=True, env=self.env, check=False,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"sekisho {' '.join(args)}: {done.stderr}")
        return done.stdout

    def start(self) -> None:
        self.cli("db", "upgrade")
        self.cli("user", "add", "bench", "--password-stdin",
                 stdin="Kanagawa-seki-passphrase-2026\n")
        self.cli("ca", "init", "--organisation", "関所市")
        self.gateway = self._spawn([*SEKISHO, "serve", "--config", str(self.config)])
        wait_port(self.port)
        out = self.cli("connector", "token", "--site", SITE)
        token = re.search(r"(skc_[A-Za-z0-9_-]+)", out)
        pin = re.search(r"(sha256:[0-9a-f]{64})", out)
        assert token and pin, out
        self.agent = self._spawn([*SEKISHO, "connector", "run", "--gateway",
                                  f"127.0.0.1:{self.cport}", "--state-dir",
                                  str(self.work / "agent"), "--token", token.group(1),
                                  "--pin", pin.group(1), "--allow",
                                  f"127.0.0.1:{self.destination}"])
        self._credential()

    def _credential(self) -> None:
        """A session and its CLI credential, made as the browser flow would (same key)."""
        from sekisho.config.model import SessionSettings
        from sekisho.identity.cli_login import CliCredentials
        from sekisho.identity.sessions import SessionManager
        from sekisho.storage import users
        from sekisho.storage.database import create_database_engine

        engine = create_database_engine(f"sqlite:///{self.work / 'sekisho.db'}")
        try:
            user = users.require_user(engine, "bench")
            token, info = SessionManager(engine, SessionSettings()).create(
                user, ["pwd"], "127.0.0.1", "bench")
            credential = CliCredentials(engine).seal_credential(token,
                                                                info.expires_at.timestamp())
        finally:
            engine.dispose()
        home = self.work / "home" / "sekisho"
        home.mkdir(parents=True, mode=0o700)
        origin = f"https://127.0.0.1:{self.port}"
        (home / "credentials.json").write_text(json.dumps(
            {origin: {"credential": credential}, "default": origin}))

    def tcp(self, route: str) -> tuple[int, subprocess.Popen[bytes]]:
        local = free_port()
        process = self._spawn(
            [*SEKISHO, "tcp", route, "--listen", f"127.0.0.1:{local}", "--gateway",
             f"https://127.0.0.1:{self.port}", "--ca-file",
             str(self.work / "data" / "tls" / "self-signed.crt")],
            env={**self.env, "XDG_CONFIG_HOME": str(self.work / "home")})
        wait_port(local)
        return local, process

    def _spawn(self, args: list[str], env: dict[str, str] | None = None
               ) -> subprocess.Popen[bytes]:
        log = (self.work / f"p{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(args, env=env or self.env, stdout=subprocess.DEVNULL,
                                   stderr=log)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)


def _connected(stack: SekishoStack, local: int, timeout: float = 30.0) -> None:
    """Wait until a stream through `local` reaches the destination (the tunnel is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if round_trips(local, 1):
                return
        except (OSError, AssertionError):
            time.sleep(0.2)
    raise RuntimeError("no stream through " + str(local))


def measure(name: str, port: int, pids: dict[str, int], size: int, rounds: int
            ) -> dict[str, Any]:
    """Bulk transfer and round trips through `port`; CPU seconds of each forwarder in `pids`
    (label → pid, with its children) during the transfer."""
    before = {label: cpu([pid]) for label, pid in pids.items()}
    seconds = bulk(port, size)
    used = {label: round(cpu([pid]) - before[label], 2) for label, pid in pids.items()}
    latency = round_trips(port, rounds)
    figures = {"mb_s": round(size / seconds / 1e6, 1), "seconds": round(seconds, 3),
               "cpu_s": round(sum(used.values()), 2), "cpu_by_process": used,
               "rtt_p50_ms": round(statistics.median(latency) * 1e3, 3),
               "rtt_p99_ms": round(statistics.quantiles(latency, n=100)[98] * 1e3, 3)}
    split = " + ".join(f"{label} {value}" for label, value in used.items())
    print(f"  {name:<26} {figures['mb_s']:>8} MB/s  CPU {figures['cpu_s']:>6} s  "
          f"rtt p50 {figures['rtt_p50_ms']} ms  p99 {figures['rtt_p99_ms']} ms"
          + (f"  ({split})" if len(used) > 1 else ""), flush=True)
    return figures


def concurrent(port: int, streams: int, pids: list[int]) -> dict[str, Any]:
    """`streams` connections open at once through one connector: errors, memory per idle one."""
    base = rss(pids)
    socks, errors = [], 0
    for _ in range(streams):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"E")
            socks.append(sock)
        except OSError:
            errors += 1
    for sock in socks:  # every one carries a message both ways
        try:
            sock.sendall(b"ping")
            got = b""
            while len(got) < 4:
                chunk = sock.recv(4)
                if not chunk:
                    raise ConnectionError("closed")
                got += chunk
        except OSError:
            errors += 1
    time.sleep(0.5)
    grown = rss(pids) - base
    for sock in socks:
        sock.close()
    figures = {"streams": streams, "errors": errors,
               "kib_per_idle_stream": round(grown / max(len(socks), 1) / 1024, 1)}
    print(f"  {streams} concurrent streams via one connector: {errors} errors, "
          f"{figures['kib_per_idle_stream']} KiB per idle stream (gateway + agent + CLI)")
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=1 << 30)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args(argv)
    destination = Destination()
    results: dict[str, Any] = {"bytes": args.bytes}
    print(f"bulk transfer of {args.bytes / 2**20:.0f} MiB, {args.rounds} round trips of 64 B")
    results["direct"] = measure("direct TCP", destination.port, {}, args.bytes, args.rounds)
    with tempfile.TemporaryDirectory(prefix="sekisho-bench-tcp-") as tmp:
        work = Path(tmp)
        if Path("/usr/sbin/sshd").exists() and shutil.which("ssh"):
            (work / "s").mkdir()
            with ssh_forward(work / "s", destination.port) as (local, pids, cipher):
                results["ssh_cipher"] = cipher
                results["ssh_l"] = measure(f"ssh -L ({cipher})", local,
                                           dict(zip(("ssh", "sshd"), pids, strict=True)),
                                           args.bytes, args.rounds)
        else:
            results["ssh_l"] = None
            print("  ssh -L skipped: /usr/sbin/sshd or ssh missing (scripts/bench-deps)")
        (work / "k").mkdir()
        stack = SekishoStack(work / "k", destination.port)
        try:
            stack.start()
            local, cli = stack.tcp("bulk.localhost")
            _connected(stack, local)
            results["sekisho_direct"] = measure(
                "sekisho tcp (direct)", local, {"gateway": stack.gateway.pid, "cli": cli.pid},
                args.bytes, args.rounds)
            local, cli = stack.tcp("bulkc.localhost")
            _connected(stack, local)
            pids = {"gateway": stack.gateway.pid, "agent": stack.agent.pid, "cli": cli.pid}
            results["sekisho_connector"] = measure(
                "sekisho tcp (via connector)", local, pids, args.bytes, args.rounds)
            results["concurrent"] = concurrent(local, args.streams, list(pids.values()))
        finally:
            stack.stop()
    direct = results["direct"]
    for key in ("sekisho_direct", "sekisho_connector", "ssh_l"):
        if results.get(key):
            results[key]["added_rtt_p99_ms"] = round(
                results[key]["rtt_p99_ms"] - direct["rtt_p99_ms"], 3)
    if results.get("ssh_l"):
        ssh = results["ssh_l"]["mb_s"]
        results["ratio_direct_vs_ssh"] = round(results["sekisho_direct"]["mb_s"] / ssh, 2)
        results["ratio_connector_vs_ssh"] = round(results["sekisho_connector"]["mb_s"] / ssh, 2)
        print(f"  ratios vs ssh -L: sekisho tcp direct {results['ratio_direct_vs_ssh']}x, "
              f"via connector {results['ratio_connector_vs_ssh']}x (bar 0.5x, goal 1.0x)")
    for key in ("sekisho_direct", "sekisho_connector"):
        print(f"  added p99 round trip ({key}): {results[key]['added_rtt_p99_ms']} ms "
              "(bar 1 ms)")
    return results


if __name__ == "__main__":
    main()
