"""Staff portal page time with 1,000 routes and 10,000 users, against a trivial reserved page
of the same gateway measured in the same run.

    python bench/bench_portal.py [--requests 2000 | --seconds S] [--workers 1,2]
                                 [--postgres URL] [--profile]

A real `sekisho serve --config FILE` (TLS with the self-signed certificate, client
certificates optional with an internal CA, profile β′ with its guardrails) on 127.0.0.1 with
1,000 routes: the three segments (~70 % internet, ~25 % LGWAN of which half screen
transfer, 5 % My Number), named policies reused by many routes (by group, group + mfa,
group + office network, group + office hours, group + enrolled device, everyone on staff)
and one route in ten with a policy of its own; each route its own host `app-0001.localhost`.
The database (`sekisho db upgrade`, then bulk inserts with one precomputed argon2 hash) holds
10,000 users in 1–3 of 50 groups each; the measured user is in `staff` and three groups,
which the launcher turns into a few dozen apps. She signs in once through the real sign-in
form; then one keep-alive connection sends `GET /.sekisho/portal/` and, alternately, the
reference `GET /.sekisho/static/portal.css` (same TLS, parser, reserved-path dispatch and
session lookup; no launcher), `--requests` of each (or for `--seconds`). Twice: from the
office (127.0.0.1) and from outside (`X-Forwarded-For` through a trusted proxy entry),
where every curable denial is decided again after a hypothetical step-up and device.

The gateway records no duration for its own pages, so the figures are the client's round
trip on loopback, which bounds the server time from above. After the server stops, the
portal handler itself (the real one `sekisho serve` builds, same database and
configuration, signed-in session, no HTTP) is timed in this process as the server-side
part. Bar: p99 <= 50 ms. `main(argv) -> dict` returns the figures for bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import random  # noqa: TID251 -- reproducible workload, nothing security-relevant
import re
import secrets
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_proxy import free_port

BAR_MS = 50.0
SEKISHO = [sys.executable, "-m", "sekisho"]
PASSWORD = "Kaigan-Shiokaze-77"
PORTAL_HOST = "portal.localhost"
PORTAL = "/.sekisho/portal/"
REFERENCE = "/.sekisho/static/portal.css"
USER = "tanaka"
USER_GROUPS = ("g00", "g01", "g02")
GROUPS = tuple(f"g{n:02d}" for n in range(50))
REMOTE_IP = "203.0.113.7"
HOLIDAYS = ("2026-01-01", "2026-01-12", "2026-02-11", "2026-04-29", "2026-05-05",
            "2026-11-03", "2026-12-29", "2026-12-30", "2026-12-31")


# -- the configuration ----------------------------------------------------------------------

def _named_policies() -> str:
    """Per group: the policy kinds routes share by name (300 names for 1,000 routes)."""
    lines = ["  staff:\n    allow: {and: [{authenticated: true}, {group: [staff]}]}\n"]
    for group in GROUPS:
        lines.append(
            f"  {group}:\n    allow: {{and: [{{group: [{group}]}}]}}\n"
            f"    deny: {{or: [{{group: [suspended]}}]}}\n"
            f"  {group}-mfa:\n    allow: {{and: [{{group: [{group}]}}, {{mfa: true}}]}}\n"
            f"  {group}-passkey:\n    allow: {{and: [{{group: [{group}]}}, "
            f"{{mfa: [webauthn_uv]}}]}}\n"
            f"  {group}-office:\n    allow: {{and: [{{group: [{group}]}}, "
            f"{{source_ip: [127.0.0.0/8, 10.0.0.0/8]}}]}}\n"
            f"  {group}-hours:\n    allow: {{and: [{{group: [{group}]}}, {{time: {{weekdays: "
            f"[mon, tue, wed, thu, fri, sat, sun], hours: \"00:00-24:00\", holidays: "
            f"ignore}}}}]}}\n"
            f"  {group}-device:\n    allow: {{and: [{{group: [{group}]}}, "
            f"{{device: {{enrolled: true}}}}]}}\n")
    return "".join(lines)


def _route(n: int, rng: random.Random) -> str:
    """Route n (1-based): segment, mode and policy from a fixed pattern, group by n."""
    group = GROUPS[n % len(GROUPS)]
    if n % 20 == 0:
        segment, mode = "mynumber", "http"
    elif n % 4 == 1:
        segment, mode = "lgwan", "screen" if n % 8 == 1 else "http"
    else:
        segment, mode = "internet", "http"
    kinds = ["", "-mfa", "-office", "-hours", "-device"]
    if segment == "mynumber":  # a My Number route may only narrow its (strict) guardrail
        kinds = ["", "-passkey", "-device"]
    if n % 50 == 7:
        policy = "staff"
    elif n % 10 == 3:  # a policy of the route's own
        other = GROUPS[(n * 7) % len(GROUPS)]
        policy = (f"\n      allow:\n        and:\n          - group: [{group}, {other}]"
                  f"\n          - or: [{{mfa: true}}, {{auth_age: 8h}}]"
                  f"\n      deny:\n        or:\n          - http_method: [DELETE]")
    else:
        policy = group + rng.choice(kinds)
    screen = "\n    screen: {clipboard: false, file_transfer: false, printing: false, " \
             "drive: false}" if mode == "screen" else ""
    path = "/" if n % 3 else f"/sys{n % 7}/"
    return (f"  - id: app-{n:04d}\n    title: 業務システム {n:04d}\n"
            f"    from: https://app-{n:04d}.localhost{path}\n    to: http://127.0.0.1:9\n"
            f"    segment: {segment}\n    mode: {mode}{screen}\n    policy: {policy}\n")


def config_text(tmp: Path, url: str, port: int, admin: int, workers: int, routes: int,
                seed: int = 7) -> str:
    rng = random.Random(seed)
    holidays = ", ".join(HOLIDAYS)
    return f"""\
server:
  listen: ["127.0.0.1:{port}"]
  admin_listen: "127.0.0.1:{admin}"
  workers: {workers}
  data_dir: "{tmp / 'data'}"
tls:
  self_signed: true
  client_certificates: optional
trusted_proxies: ["127.0.0.1/32"]
storage:
  url: "{url}"
mfa:
  require_groups: []
profile: beta-prime
networks:
  office: ["127.0.0.0/8", "10.0.0.0/8"]
  mynumber_terminals: ["10.99.1.0/24"]
devices:
  profiles:
    managed: {{os_updated_within: 30d, disk_encryption: true, firewall: true}}
    byod: {{os_updated_within: 60d, screen_lock: true}}
holidays: [{holidays}]
portal:
  host: {PORTAL_HOST}
  contact: "情報政策課 内線 1234"
policies:
{_named_policies()}routes:
{"".join(_route(n, rng) for n in range(1, routes + 1))}"""


# -- the database ---------------------------------------------------------------------------

def populate(url: str, users: int, seed: int = 11) -> dict[str, int]:
    """10,000 users in 1–3 groups each by bulk insert, one argon2 hash for all."""
    from sqlalchemy import insert, select

    from sekisho.identity.passwords import PasswordHasher
    from sekisho.storage.database import create_database_engine
    from sekisho.storage.models import Group, GroupMember, User

    rng = random.Random(seed)
    digest = PasswordHasher().hash(PASSWORD)
    now = datetime.now(UTC)
    engine = create_database_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(Group), [{"name": name, "description": "", "created_at": now}
                                         for name in ("staff", "suspended", *GROUPS)])
            group_ids = dict(conn.execute(select(Group.name, Group.id)).all())
            names = [USER] + [f"user{n:05d}" for n in range(1, users)]
            conn.execute(insert(User), [
                {"username": name, "display_name": "田中 花子" if name == USER else name,
                 "email": f"{name}@city.example.jp", "password_hash": digest,
                 "disabled": False, "created_at": now, "updated_at": now,
                 "password_changed_at": now} for name in names])
            user_ids = dict(conn.execute(select(User.username, User.id)).all())
            rows = [{"group_id": group_ids[g], "user_id": user_ids[USER]}
                    for g in ("staff", *USER_GROUPS)]
            for name in names[1:]:
                for g in {"staff", *rng.sample(GROUPS, rng.randint(1, 3))}:
                    rows.append({"group_id": group_ids[g], "user_id": user_ids[name]})
            conn.execute(insert(GroupMember), rows)
    finally:
        engine.dispose()
    return {"users": len(user_ids), "groups": len(group_ids), "memberships": len(rows)}


@contextmanager
def database(tmp: Path, postgres: str | None) -> Iterator[str]:
    """A fresh database URL: SQLite in `tmp`, or a new schema on PostgreSQL, dropped after."""
    if postgres is None:
        yield f"sqlite:///{tmp / 'sekisho.db'}"
        return
    from sqlalchemy import create_engine, text

    admin = create_engine(postgres.replace("postgresql://", "postgresql+psycopg://", 1))
    schema = "bench_portal_" + secrets.token_hex(4)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in postgres else "?"
    try:
        yield f"{postgres}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def cli(config: Path, *args: str) -> str:
    result = subprocess.run([*SEKISHO, *args, "--config", str(config)], text=True,
                            capture_output=True, timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"sekisho {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout


# -- the client -----------------------------------------------------------------------------

class Client:
    """One keep-alive TLS connection to the gateway, with cookies (sign-in) and a timer."""

    def __init__(self, port: int) -> None:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # self-signed
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=context,
                                                timeout=30)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, target: str, body: str = "",
                headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        sent = {"Host": PORTAL_HOST, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        started = time.perf_counter()
        self.conn.request(method, target, body=body.encode() or None, headers=sent)
        response = self.conn.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        for key, value in response.getheaders():
            if key.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
        return response.status, data, elapsed

    def sign_in(self) -> None:
        status, page, _ = self.request("GET", "/.sekisho/signin?" + urlencode({"rd": PORTAL}))
        match = re.search(rb'name="csrf" value="([^"]+)"', page)
        if status != 200 or match is None:
            raise RuntimeError(f"no sign-in form ({status})")
        form = urlencode({"csrf": match.group(1).decode(), "rd": PORTAL, "username": USER,
                          "password": PASSWORD})
        status, body, _ = self.request("POST", "/.sekisho/signin", form)
        if status != 303:
            raise RuntimeError(f"sign-in failed ({status}): {body[:300]!r}")

    def close(self) -> None:
        self.conn.close()


def apps_listed(body: bytes) -> dict[str, int]:
    found = re.findall(rb'<li class="app app-([a-z-]+)" data-route=', body)
    return {access.decode(): found.count(access) for access in sorted(set(found))}


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 3),
            "p95_ms": round(pct(95), 3), "p99_ms": round(pct(99), 3),
            "max_ms": round(ordered[-1], 3)}


def measure(port: int, requests: int, seconds: float | None,
            headers: dict[str, str]) -> dict[str, Any]:
    """Portal and reference alternately on one keep-alive connection (same load for both)."""
    client = Client(port)
    try:
        client.sign_in()
        status, body, _ = client.request("GET", PORTAL, headers=headers)
        if status != 200:
            raise RuntimeError(f"portal answered {status}")
        listed = apps_listed(body)
        for _ in range(20):  # warm up: caches, pools, the first template render
            client.request("GET", PORTAL, headers=headers)
            client.request("GET", REFERENCE, headers=headers)
        portal: list[float] = []
        reference: list[float] = []
        deadline = time.monotonic() + seconds if seconds else None
        while (len(portal) < requests) if deadline is None else (time.monotonic() < deadline):
            status, _, elapsed = client.request("GET", PORTAL, headers=headers)
            if status != 200:
                raise RuntimeError(f"portal answered {status}")
            portal.append(elapsed)
            status, _, elapsed = client.request("GET", REFERENCE, headers=headers)
            if status != 200:
                raise RuntimeError(f"reference answered {status}")
            reference.append(elapsed)
    finally:
        client.close()
    p, r = summary(portal), summary(reference)
    return {"apps": listed, "page_bytes": len(body), "portal": p, "reference": r,
            "ratio_p50": round(p["p50_ms"] / r["p50_ms"], 2),
            "ratio_p99": round(p["p99_ms"] / r["p99_ms"], 2),
            "pass": p["p99_ms"] <= BAR_MS}


# -- the gateway ----------------------------------------------------------------------------

class Serve:
    """`sekisho serve --config FILE` in a child process, ready when /readyz says so."""

    def __init__(self, config: Path, port: int, admin: int, log: Path) -> None:
        self.process = subprocess.Popen([*SEKISHO, "serve", "--config", str(config)],
                                        stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("sekisho serve exited: " + log.read_text()[-2000:])
            try:
                conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=2)
                conn.request("GET", "/readyz")
                ready = conn.getresponse().status == 200
                conn.close()
                if ready:
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("sekisho serve did not become ready: " + log.read_text()[-2000:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the handler in process -----------------------------------------------------------------

def in_process(config_path: Path, requests: int, remote: bool,
               profile: bool) -> dict[str, Any]:
    """The portal handler `sekisho serve` builds, called directly: the server-side part."""
    from sekisho.audit.log import AuditLog
    from sekisho.config.loader import load_config
    from sekisho.devices.trust import DeviceTrust
    from sekisho.identity.sessions import SessionManager
    from sekisho.identity.signin import build_signin_handlers
    from sekisho.runtime import build_runtime
    from sekisho.storage import users
    from sekisho.storage.database import create_database_engine
    from sekisho.web import Request

    config = load_config(str(config_path))
    runtime = build_runtime(config)
    engine = create_database_engine(config.storage_url.reveal())
    audit = AuditLog(engine)
    audit.start()
    sessions = SessionManager(engine, config.session)
    try:
        handlers = build_signin_handlers(
            current_config=lambda: config, engine=engine, sessions=sessions, audit=audit,
            device_trust=DeviceTrust(engine), current_runtime=lambda: runtime)
        home = handlers[PORTAL]
        token, _ = sessions.create(users.require_user(engine, USER), {"pwd"}, "127.0.0.1", "")
        session = sessions.lookup_sync(token)

        def request() -> Request:
            req = Request("GET", PORTAL, PORTAL, "", [("host", PORTAL_HOST)],
                          REMOTE_IP if remote else "127.0.0.1", "https", PORTAL_HOST)
            req.session = session
            return req

        async def run() -> list[float]:
            for _ in range(10):
                await home(request())
            samples = []
            for _ in range(requests):
                started = time.perf_counter()
                response = await home(request())
                samples.append((time.perf_counter() - started) * 1000)
                if response.status != 200:
                    raise RuntimeError(f"portal handler answered {response.status}")
            return samples

        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            samples = asyncio.run(run())
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        else:
            samples = asyncio.run(run())
    finally:
        audit.close()
        engine.dispose()
    return summary(samples)


# -- the run --------------------------------------------------------------------------------

def _line(label: str, figures: dict[str, float]) -> str:
    return (f"  {label:<22}{figures['p50_ms']:>9.2f}{figures['p95_ms']:>9.2f}"
            f"{figures['p99_ms']:>9.2f}{figures['max_ms']:>9.2f}")


def run_backend(args: argparse.Namespace, postgres: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sekisho-bench-portal-") as name:
        tmp = Path(name)
        with database(tmp, postgres) as url:
            subprocess.run([*SEKISHO, "ca", "init", "--dir", str(tmp / "data" / "ca"),
                            "--organisation", "関所市"], check=True, capture_output=True,
                           timeout=120)
            started = time.perf_counter()
            config = tmp / "sekisho.yaml"
            port, admin = free_port(), free_port()
            workers = [int(w) for w in args.workers.split(",")]

            def write(count: int) -> None:
                config.write_text(config_text(tmp, url, port, admin, count, args.routes),
                                  encoding="utf-8")

            write(workers[0])
            cli(config, "db", "upgrade")
            results["database"] = populate(url, args.users)
            results["setup_s"] = round(time.perf_counter() - started, 1)
            for count in workers:
                write(count)
                server = Serve(config, port, admin, tmp / f"serve-{count}.log")
                try:
                    for where, headers in (("office", {}),
                                           ("remote", {"X-Forwarded-For": REMOTE_IP})):
                        figures = measure(port, args.requests, args.seconds, headers)
                        results[f"{count}w_{where}"] = figures
                        _print(f"{count} worker(s), {where}", figures)
                finally:
                    server.stop()
            for where in ("office", "remote"):
                figures = in_process(config, min(args.requests, 500), where == "remote",
                                     args.profile and where == "remote")
                results[f"handler_{where}"] = figures
                print(f"portal handler in process ({where}, no HTTP), ms: "
                      f"p50 {figures['p50_ms']:.2f}  p95 {figures['p95_ms']:.2f}  "
                      f"p99 {figures['p99_ms']:.2f}  max {figures['max_ms']:.2f}")
    return results


def _print(label: str, figures: dict[str, Any]) -> None:
    apps = ", ".join(f"{k} {v}" for k, v in figures["apps"].items())
    print(f"\n{label}: {sum(figures['apps'].values())} apps listed ({apps}), "
          f"page {figures['page_bytes']:,} bytes")
    print(f"  {'round trip, ms':<22}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}")
    print(_line(f"portal (n={figures['portal']['n']})", figures["portal"]))
    print(_line("reference (CSS)", figures["reference"]))
    print(f"  ratio portal/reference: p50 {figures['ratio_p50']:.1f}x  "
          f"p99 {figures['ratio_p99']:.1f}x   bar p99 <= {BAR_MS:.0f} ms: "
          f"{'PASS' if figures['pass'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="portal requests per scenario (and as many reference requests)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="measure each scenario for this long instead of --requests")
    parser.add_argument("--workers", default="1", help="e.g. 1,2")
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--postgres", default=None, metavar="URL",
                        help="also run on PostgreSQL (a new schema, dropped after)")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of the in-process handler (remote user)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"bar_p99_ms": BAR_MS, "routes": args.routes}
    backends: list[tuple[str, str | None]] = [("sqlite", None)]
    if args.postgres:
        backends.append(("postgresql", args.postgres))
    for backend, url in backends:
        print(f"\n=== {backend}: {args.routes:,} routes, {args.users:,} users ===")
        results[backend] = run_backend(args, url)
    verdicts = [v["pass"] for b, _ in backends for k, v in results[b].items()
                if isinstance(v, dict) and "pass" in v]
    results["pass"] = all(verdicts)
    print(f"\nportal p99 <= {BAR_MS:.0f} ms in every scenario: "
          f"{'PASS' if results['pass'] else 'FAIL'}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
