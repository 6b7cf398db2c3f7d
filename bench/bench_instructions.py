"""Instructions per proxied request: one Sekisho worker against one nginx proxy, under callgrind.

    python bench/bench_instructions.py [--requests 1000]

Throughput on a shared 2-core machine moves by ±20 % with the neighbours' load, which hides
a change worth 5 %. Instructions do not move: valgrind's callgrind counts the user-space
instructions a process executes, the same for the same work whatever else the machine does.
So each proxy runs under callgrind (about 50× slower), one keep-alive client sends
`--requests` requests after a warm-up, and the count is read for exactly those requests
(`callgrind_control` zeroes the counters before and dumps them after). Kernel work (the
send and receive system calls) is not counted: this measures our own code, not the I/O.

- nginx: a reverse proxy to the same upstream (one process: `master_process off`), upstream
  keep-alive;
- the Python floor: the least an HTTP proxy in Python does — uvloop, httptools parsing the
  request and the response, a pooled upstream connection, callbacks only (`--floor`, below);
  no routing, identity, policy or audit;
- Sekisho: a worker as `sekisho serve` runs it with several workers (signed-in session, group
  policy, assertion, access decision relayed to the audit master — the master runs outside
  callgrind and is not counted; the relay's share in the worker is).

Each is measured with two requests: the bench's own (Host and a session cookie) and a
browser's page request (the same plus `BROWSER_HEADERS`, 13 header lines in all), since every
header line costs a proxy its parsing and forwarding.

Two windows (N and 2N requests) are measured in each process and their difference divided
by N, so what does not grow with the requests (the dump itself) cancels. Wall-clock timers
(the relay's status ticks) still add a little: under callgrind a request takes milliseconds.
`main(argv) -> dict` returns the figures for bench/run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_proxy as proxy

from sekisho.config.build import MAX_CACHE_TTL

VALGRIND = "/usr/bin/valgrind"
CONTROL = "/usr/bin/callgrind_control"
WARM_UP = 300


def callgrind(command: list[str], out: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
    return subprocess.Popen([VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out}",
                             *command], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


class Client:
    """One keep-alive connection sending the same request and reading whole answers."""

    def __init__(self, port: int, headers: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.request = f"GET / HTTP/1.1\r\nHost: {proxy.HOST}\r\n{headers}\r\n".encode()

    def send(self, count: int) -> None:
        body = proxy.BODY.encode()
        for _ in range(count):
            self.sock.sendall(self.request)
            data = b""
            while not data.endswith(body):
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise RuntimeError("the proxy closed the connection")
                data += chunk
            if not data.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"not a 200: {data[:120]!r}")


def dump_total(pid: int, out: Path, index: int) -> int:
    """Dump the counters of `pid` (dump number `index`) and return its instruction total."""
    subprocess.run([CONTROL, "-d", str(pid)], check=True, capture_output=True)
    path = Path(f"{out}.{index}")
    deadline = time.monotonic() + 60
    while True:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
        if time.monotonic() > deadline:
            raise RuntimeError(f"callgrind wrote no dump {path}")
        time.sleep(0.2)


# The other headers a browser sends with a page request (Chrome 130, a same-site link), for
# the second measurement: the bench's own request carries only Host and Cookie, and every
# header line costs each proxy its parsing and forwarding.
BROWSER_HEADERS = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Safari/537.36\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "*/*;q=0.8\r\n"
    "Accept-Language: ja,en-US;q=0.9,en;q=0.8\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
    f"Referer: https://{proxy.HOST}/\r\nUpgrade-Insecure-Requests: 1\r\n"
    "Sec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Site: same-origin\r\n"
    "Sec-Fetch-User: ?1\r\nPriority: u=0, i\r\n")


def measure(process: subprocess.Popen[bytes], out: Path, port: int, cookie: str,
            requests: int) -> tuple[float, float]:
    """Instructions per request for the bench's request (Host and `cookie`) and for a
    browser's (the same plus `BROWSER_HEADERS`), in one process."""
    plain = per_request(process, out, Client(port, cookie), requests)
    browser = per_request(process, out, Client(port, cookie + BROWSER_HEADERS), requests, 3)
    return plain, browser


def per_request(process: subprocess.Popen[bytes], out: Path, client: Client,
                requests: int, first_dump: int = 1) -> float:
    """Instructions per request: windows of N and 2N requests, difference over N (dumps
    `first_dump` and the next)."""
    client.send(WARM_UP)
    totals = []
    for index, count in enumerate((requests, 2 * requests), start=first_dump):
        subprocess.run([CONTROL, "-z", str(process.pid)], check=True, capture_output=True)
        client.send(count)
        totals.append(dump_total(process.pid, out, index))
    return (totals[1] - totals[0]) / requests


def floor(port: int, upstream: int) -> None:
    """The Python floor: parse, forward on a pooled connection, parse, answer."""
    import asyncio

    import httptools
    import uvloop

    idle: list[FloorUpstream] = []

    class FloorUpstream(asyncio.Protocol):
        def __init__(self, client: FloorClient) -> None:
            self.client = client
            self.parser = httptools.HttpResponseParser(self)
            self.parts = [b""]  # the status line first, once the head is parsed

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_begin(self) -> None:
            self.parts = [b""]

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() not in (b"connection", b"keep-alive"):
                self.parts += (name, b": ", value, b"\r\n")

        def on_headers_complete(self) -> None:
            self.parts[0] = b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code()
            self.parts.append(b"\r\n")

        def on_body(self, body: bytes) -> None:
            self.parts.append(body)

        def on_message_complete(self) -> None:
            self.client.transport.write(b"".join(self.parts))  # type: ignore[attr-defined]
            idle.append(self)

    class FloorClient(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""
            self.parts: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.parts += (name, b": ", value, b"\r\n")

        def on_message_complete(self) -> None:
            head = b"".join([self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n",
                             *self.parts, b"X-Forwarded-For: 127.0.0.1\r\n\r\n"])
            self.url, self.parts = b"", []
            if idle:
                connection = idle.pop()
                connection.client = self
                connection.transport.write(head)  # type: ignore[attr-defined]
            else:
                asyncio.get_running_loop().create_task(self.dial(head))

        async def dial(self, head: bytes) -> None:
            _, connection = await asyncio.get_running_loop().create_connection(
                lambda: FloorUpstream(self), "127.0.0.1", upstream)
            connection.transport.write(head)  # type: ignore[attr-defined]

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(FloorClient, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--floor", nargs=2, type=int, metavar=("PORT", "UPSTREAM"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.floor:
        floor(*args.floor)
        return {}
    for tool in (VALGRIND, CONTROL, proxy.NGINX):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} is missing (scripts/bench-deps installs it)")
    results: dict[str, Any] = {"requests": args.requests}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="sekisho-instr-") as name:
        tmp = Path(name)
        try:
            upstream = proxy.free_port()
            procs.append(proxy.start_nginx(proxy.nginx_conf(tmp, "upstream", upstream,
                                                            proxy.BODY)))
            proxy.wait_port(upstream)

            port = proxy.free_port()
            conf = proxy.nginx_conf(tmp, "proxy", port, f"proxy:{upstream}")
            out = tmp / "nginx.cg"
            nginx = callgrind([proxy.NGINX, "-p", str(conf.parent), "-c", str(conf), "-g",
                               "daemon off; master_process off;"], out)
            # The same cookie as Sekisho's request (nginx and the floor pass it on unread).
            cookie = "Cookie: __Host-sekisho=" + "t" * 43 + "\r\n"
            try:
                results["nginx"], results["nginx_browser"] = measure(
                    nginx, out, port, cookie, args.requests)
            finally:
                proxy.stop([nginx])

            port = proxy.free_port()
            out = tmp / "floor.cg"
            python_floor = callgrind([sys.executable, __file__, "--floor", str(port),
                                      str(upstream)], out)
            try:
                results["python_floor"], results["python_floor_browser"] = measure(
                    python_floor, out, port, cookie, args.requests)
            finally:
                proxy.stop([python_floor])

            _, token, spec = proxy.prepare_sekisho(tmp, upstream)
            # The session cache is refreshed every half TTL by the clock, not per request;
            # under callgrind a request takes milliseconds, so with the default TTL (1 s)
            # those loads would land in the counts. The largest TTL allowed (60 s) keeps them
            # out (a production gateway amortises them over thousands of requests a second).
            # Likewise the audit relay's gathering delay (5 ms): under callgrind it would send
            # a frame, and read its acknowledgement, for nearly every request; 250 ms gathers
            # about as many events per frame as 5 ms does at full speed.
            spec.write_text(json.dumps({**json.loads(spec.read_text()),
                                        "cache_ttl": MAX_CACHE_TTL, "send_delay": 0.25}))
            env = {**os.environ,
                   "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
            relay = str(tmp / "audit.sock")
            master = subprocess.Popen([sys.executable, proxy.__file__, "--audit-master",
                                       str(spec), "--relay", relay], env=env)
            procs.append(master)
            deadline = time.monotonic() + 30
            while not os.path.exists(relay):
                if time.monotonic() > deadline:
                    raise RuntimeError("the audit master did not start")
                time.sleep(0.05)
            port = proxy.free_port()
            out = tmp / "sekisho.cg"
            worker = callgrind([sys.executable, proxy.__file__, "--worker", str(spec),
                                "--port", str(port), "--relay", relay], out, env)
            try:
                results["sekisho"], results["sekisho_browser"] = measure(
                    worker, out, port, f"Cookie: __Host-sekisho={token}\r\n", args.requests)
            finally:
                proxy.stop([worker])
        finally:
            proxy.stop(procs)
    for suffix in ("", "_browser"):
        results["ratio_nginx" + suffix] = round(
            results["sekisho" + suffix] / results["nginx" + suffix], 1)
        results["ratio_floor" + suffix] = round(
            results["sekisho" + suffix] / results["python_floor" + suffix], 1)
    print(f"\ninstructions per request (user space, callgrind, {args.requests} requests):")
    print(f"  {'':<22}{'Host, Cookie':>14}{'a browser (13)':>16}")
    for label, key in (("nginx reverse proxy", "nginx"), ("Python floor", "python_floor"),
                       ("Sekisho worker", "sekisho")):
        print(f"  {label:<22}{results[key]:>14,.0f}{results[key + '_browser']:>16,.0f}")
    print(f"  Sekisho / nginx {results['ratio_nginx']}× and {results['ratio_nginx_browser']}×, "
          f"/ the Python floor {results['ratio_floor']}× and {results['ratio_floor_browser']}×")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
