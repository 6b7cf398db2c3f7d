"""PDP micro-benchmark: `sekisho.policy.evaluate` against cedarpy on the same rules, same run.

Builds 1,000 routes, each with its own policy (1,000 allow rules plus 150 deny rules over a
realistic mix of group lists, office CIDRs, user lists, e-mail domains, methods and path
prefixes), a seeded stream of requests (random route, user, groups, address, method, path),
and measures decisions/s and per-call p50/p99 of one `evaluate` on one core, each loop
bounded in time. The same rules are translated to Cedar and decided by cedarpy, once with
one PolicySet per route (the like-for-like comparison) and once with all rules in a single
PolicySet through `is_authorized_batch`; the two engines must agree on every decision.

    python bench/bench_pdp.py [--seconds 2] [--seed 7] [--requests 20000]

`main(argv)` returns the figures as a dict, for bench/run.py.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import random  # noqa: TID251 -- reproducible workload, nothing security-relevant
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sekisho.policy import Facts, Policy, compile_policy, evaluate

ROUTES = 1000
USERS = 2000
DEPARTMENTS = 40
DENY_ROUTES = 150
OFFICE = ["10.20.0.0/16", "10.21.0.0/16", "172.16.0.0/12", "2001:db8:100::/48"]
BRANCHES = [f"10.30.{n}.0/24" for n in range(32)]
CITY_DOMAIN = "city.example.lg.jp"
SUBPATHS = ["", "/", "/list", "/admin", "/admin/users", "/public/doc", "/api/v1/items"]
METHODS = ["GET"] * 14 + ["POST"] * 4 + ["PUT", "DELETE"]


# -- workload ---------------------------------------------------------------------------


def _users(rng: random.Random) -> list[tuple[str, str, frozenset[str]]]:
    users = []
    for n in range(USERS):
        groups = {f"dept-{d:02d}" for d in rng.sample(range(DEPARTMENTS), rng.choice((1, 1, 2)))}
        if rng.random() < 0.85:
            groups.add("staff")
        for name, share in (("admins", 0.05), ("contractors", 0.08), ("remote-ok", 0.2)):
            if rng.random() < share:
                groups.add(name)
        domain = CITY_DOMAIN if rng.random() < 0.9 else "contractor.example.co.jp"
        users.append((f"u{n:04d}", f"u{n:04d}@{domain}", frozenset(groups)))
    return users


def _policy(rng: random.Random, route: int) -> dict[str, Any]:
    prefix = f"/app{route}"
    kind = rng.random()
    depts = [f"dept-{d:02d}" for d in rng.sample(range(DEPARTMENTS), rng.randint(1, 4))]
    office = rng.sample(OFFICE, rng.randint(1, 3)) + rng.sample(BRANCHES, rng.randint(0, 4))
    if kind < 0.40:
        allow = [{"authenticated": True}, {"group": depts}, {"source_ip": office}]
    elif kind < 0.60:
        allow = [{"group": "staff"}, {"or": [{"source_ip": office}, {"group": "remote-ok"}]}]
    elif kind < 0.75:
        users = [f"u{n:04d}" for n in rng.sample(range(USERS), rng.randint(5, 20))]
        allow = [{"user": users}, {"http_method": ["GET", "POST"]}]
    elif kind < 0.85:
        allow = [
            {"email_domain": CITY_DOMAIN},
            {"http_path": [{"prefix": f"{prefix}/public"}, {"exact": prefix}]},
        ]
    elif kind < 0.95:
        allow = [
            {"group": "admins"},
            {"source_ip": office},
            {"http_path": {"prefix": f"{prefix}/admin"}},
        ]
    else:
        allow = [{"always": True}]
    document: dict[str, Any] = {"allow": {"and": allow}}
    if route < DENY_ROUTES:
        deny_kind = route % 3
        if deny_kind == 0:
            document["deny"] = {"or": [{"group": "contractors"}]}
        elif deny_kind == 1:
            document["deny"] = {
                "and": [
                    {"http_path": {"prefix": f"{prefix}/admin"}},
                    {"not": [{"group": "admins"}]},
                ]
            }
        else:
            document["deny"] = {"not": [{"source_ip": OFFICE + BRANCHES}]}
    return document


def _address(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.5:
        net = ipaddress.ip_network(rng.choice(OFFICE[:3] + BRANCHES))
    elif roll < 0.6:
        net = ipaddress.ip_network(OFFICE[3])
    else:
        return str(ipaddress.IPv4Address(rng.randrange(0x0B000000, 0xDF000000)))
    return str(net.network_address + rng.randrange(net.num_addresses))


def build(seed: int, requests: int, allowed_share: float = 0.5) -> dict[str, Any]:
    """Users, one policy document per route, and a request stream.

    Random requests are mostly denied (a random user rarely holds a random route's groups);
    real traffic is mostly people using the apps they are entitled to. The stream therefore
    keeps `allowed_share` of allowed requests (decided by Sekisho, checked against Cedar).
    """
    rng = random.Random(seed)
    users = _users(rng)
    documents = {f"r{n:04d}": _policy(rng, n) for n in range(ROUTES)}
    policies = {r: compile_policy(r, d) for r, d in documents.items()}
    now = datetime(2025, 4, 1, 0, 30, tzinfo=UTC)
    want_allowed = int(requests * allowed_share)
    allowed: list[Facts] = []
    denied: list[Facts] = []
    while len(allowed) < want_allowed or len(denied) < requests - want_allowed:
        route = rng.randrange(ROUTES)
        if rng.random() < 0.1:
            user, email, groups, authenticated = None, "", frozenset[str](), False
        else:
            (user, email, groups), authenticated = rng.choice(users), True
        facts = Facts(
            authenticated=authenticated,
            user=user,
            email=email,
            groups=groups,
            source_ip=ipaddress.ip_address(_address(rng)),
            method=rng.choice(METHODS),
            path=f"/app{route}{rng.choice(SUBPATHS)}",
            host="apps.city.example.lg.jp",
            route=f"r{route:04d}",
            segment="internet",
            now=now,
        )
        bucket = allowed if evaluate(facts, policies[facts.route]).allow else denied
        if len(bucket) < (want_allowed if bucket is allowed else requests - want_allowed):
            bucket.append(facts)
    stream = allowed + denied
    rng.shuffle(stream)
    return {"users": users, "documents": documents, "stream": stream}


def _count(block: Any) -> tuple[int, int]:
    """(criteria, blocks) in a policy block."""
    ((_, items),) = block.items()
    criteria, blocks = 0, 1
    for item in items:
        ((key, _),) = item.items()
        if key in ("and", "or", "not"):
            c, b = _count(item)
            criteria, blocks = criteria + c, blocks + b
        else:
            criteria += 1
    return criteria, blocks


# -- Cedar translation ------------------------------------------------------------------


def _cedar_expr(item: dict[str, Any]) -> str:
    ((key, arg),) = item.items()
    names = list(arg) if isinstance(arg, list) else [arg]
    if key in ("and", "or", "not"):
        parts = [_cedar_expr(child) for child in arg]
        if key == "and":
            return "(" + " && ".join(parts) + ")"
        joined = "(" + " || ".join(parts) + ")"
        return joined if key == "or" else f"!{joined}"
    if key == "always":
        return "true"
    if key == "never":
        return "false"
    if key == "authenticated":
        return "context.authenticated"
    if key == "user":
        return "(context.authenticated && principal in [{}])".format(
            ", ".join(f'User::"{n}"' for n in names)
        )
    if key == "group":
        return "(context.authenticated && principal in [{}])".format(
            ", ".join(f'Group::"{n}"' for n in names)
        )
    if key == "email_domain":
        return "(context.authenticated && ({}))".format(
            " || ".join(f'context.email like "*@{n}"' for n in names)
        )
    if key == "source_ip":
        return "({})".format(" || ".join(f'ip(context.ip).isInRange(ip("{n}"))' for n in names))
    if key == "http_method":
        return "({})".format(" || ".join(f'context.method == "{n}"' for n in names))
    if key == "http_path":
        parts = []
        for spec in names:
            ((kind, value),) = spec.items()
            parts.append(f'context.path == "{value}"')
            if kind == "prefix":
                parts.append(f'context.path like "{value}/*"')
        return "(" + " || ".join(parts) + ")"
    raise ValueError(key)


def cedar_policies(route: str, document: dict[str, Any]) -> str:
    text = []
    for effect, section in (("permit", "allow"), ("forbid", "deny")):
        if section in document:
            text.append(
                f'{effect}(principal, action, resource == Route::"{route}") '
                f"when {{ {_cedar_expr(document[section])} }};"
            )
    return "\n".join(text)


def cedar_entities(users: list[tuple[str, str, frozenset[str]]]) -> str:
    groups = sorted({g for _, _, gs in users for g in gs})
    entities: list[dict[str, Any]] = [
        {"uid": {"type": "Group", "id": g}, "attrs": {}, "parents": []} for g in groups
    ]
    entities += [
        {
            "uid": {"type": "User", "id": name},
            "attrs": {},
            "parents": [{"type": "Group", "id": g} for g in sorted(gs)],
        }
        for name, _, gs in users
    ]
    return json.dumps(entities)


def cedar_request(facts: Facts) -> dict[str, Any]:
    return {
        "principal": f'User::"{facts.user or "anonymous"}"',
        "action": f'Action::"{facts.method}"',
        "resource": f'Route::"{facts.route}"',
        "context": {
            "authenticated": facts.authenticated,
            "email": facts.email,
            "ip": str(facts.source_ip),
            "method": facts.method,
            "path": facts.path,
        },
    }


# -- measurement ------------------------------------------------------------------------


def throughput(call: Callable[[int], None], count: int, seconds: float) -> float:
    """Decisions/s of `call(i)` over indices 0..count-1, repeated for about `seconds`."""
    done, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for index in range(0, count, 1000):
            call(index)
            done += min(1000, count - index)
            if time.perf_counter() >= deadline:
                return done / (time.perf_counter() - start)


def latencies(one: Callable[[int], object], count: int, seconds: float) -> list[int]:
    """Per-call nanoseconds of `one(i)`, cycling the stream, for about `seconds`."""
    clock = time.perf_counter_ns
    samples: list[int] = []
    deadline = clock() + int(seconds * 1e9)
    index = 0
    while clock() < deadline and len(samples) < 2_000_000:
        for _ in range(1000):
            t0 = clock()
            one(index)
            samples.append(clock() - t0)
            index = index + 1 if index + 1 < count else 0
    return samples


def _pct(samples: Sequence[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measured loop")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--requests", type=int, default=20000, help="distinct requests")
    parser.add_argument("--allowed-share", type=float, default=0.5, help="of the stream")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    pinned = hasattr(os, "sched_setaffinity")
    if pinned:
        cores = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {max(cores)})  # one core
    try:
        results = _run(args)
    finally:
        if pinned:
            os.sched_setaffinity(0, cores)
    if not args.quiet:
        _print(results)
    return results


def _run(args: argparse.Namespace) -> dict[str, Any]:

    workload = build(args.seed, args.requests, args.allowed_share)
    documents: dict[str, dict[str, Any]] = workload["documents"]
    stream: list[Facts] = workload["stream"]
    t0 = time.perf_counter()
    policies: dict[str, Policy] = {r: compile_policy(r, d) for r, d in documents.items()}
    compile_ms = (time.perf_counter() - t0) * 1000
    counts = [_count(d[s]) for d in documents.values() for s in ("allow", "deny") if s in d]
    pairs = [(f, policies[f.route]) for f in stream]
    n = len(pairs)

    def sekisho_chunk(start: int) -> None:
        for facts, policy in pairs[start : start + 1000]:
            evaluate(facts, policy)

    def sekisho_one(i: int) -> object:
        facts, policy = pairs[i]
        return evaluate(facts, policy)

    decisions = [evaluate(f, p) for f, p in pairs]
    results: dict[str, Any] = {
        "routes": len(documents),
        "rules": len(counts),
        "allow_rules": sum("allow" in d for d in documents.values()),
        "deny_rules": sum("deny" in d for d in documents.values()),
        "criteria": sum(c for c, _ in counts),
        "requests": n,
        "allowed_share": sum(d.allow for d in decisions) / n,
        "compile_ms": compile_ms,
    }
    gc.collect()
    sek_rate = throughput(sekisho_chunk, n, args.seconds)
    sek_lat = latencies(sekisho_one, n, args.seconds)
    timer = latencies(lambda i: None, n, min(args.seconds, 0.5))
    results["sekisho"] = {
        "decisions_per_s": sek_rate,
        "p50_us": _pct(sek_lat, 0.50),
        "p99_us": _pct(sek_lat, 0.99),
        "mean_us": 1e6 / sek_rate,
    }
    results["timer_overhead_us"] = statistics.median(timer) / 1000.0

    try:
        import cedarpy
    except ImportError:
        results["cedarpy"] = None
    else:
        entities = cedarpy.Entities.from_json_str(cedar_entities(workload["users"]))
        route_sets = {
            r: cedarpy.PolicySet.from_str(cedar_policies(r, d)) for r, d in documents.items()
        }
        all_set = cedarpy.PolicySet.from_str(
            "\n".join(cedar_policies(r, d) for r, d in documents.items())
        )
        cedar_pairs = [(cedar_request(f), route_sets[f.route]) for f in stream]
        check = min(n, 5000)
        agree = sum(
            cedarpy.is_authorized(req, ps, entities).allowed == decisions[i].allow
            for i, (req, ps) in enumerate(cedar_pairs[:check])
        )
        results["agreement"] = agree / check

        def cedar_chunk(start: int) -> None:
            for req, ps in cedar_pairs[start : start + 1000]:
                cedarpy.is_authorized(req, ps, entities)

        def cedar_one(i: int) -> object:
            req, ps = cedar_pairs[i]
            return cedarpy.is_authorized(req, ps, entities)

        requests_only = [req for req, _ in cedar_pairs]

        def cedar_batch(start: int) -> None:
            for b in range(start, min(start + 1000, n), 100):
                cedarpy.is_authorized_batch(requests_only[b : b + 100], all_set, entities)

        gc.collect()
        ced_rate = throughput(cedar_chunk, n, args.seconds)
        ced_lat = latencies(cedar_one, n, args.seconds)
        results["cedarpy"] = {
            "decisions_per_s": ced_rate,
            "p50_us": _pct(ced_lat, 0.50),
            "p99_us": _pct(ced_lat, 0.99),
            "mean_us": 1e6 / ced_rate,
        }
        results["cedarpy_all_rules_batch"] = {
            "decisions_per_s": throughput(cedar_batch, n, args.seconds)
        }
        results["ratio_vs_cedarpy"] = sek_rate / ced_rate
    results["bar_decisions_per_s"] = 200_000
    results["bar_met"] = sek_rate >= 200_000
    return results


def _print(r: dict[str, Any]) -> None:
    print(
        f"PDP benchmark: {r['routes']} routes, {r['rules']} rules "
        f"({r['allow_rules']} allow + {r['deny_rules']} deny, {r['criteria']} criteria), "
        f"{r['requests']} distinct requests, {r['allowed_share']:.0%} allowed; "
        f"compile {r['compile_ms']:.0f} ms; python {sys.version.split()[0]}, one core"
    )
    print(f"{'engine':<34}{'decisions/s':>14}{'p50 µs':>10}{'p99 µs':>10}")
    rows = [("sekisho.policy.evaluate", r["sekisho"])]
    if r.get("cedarpy"):
        rows.append(("cedarpy.is_authorized (per route)", r["cedarpy"]))
    for name, row in rows:
        print(
            f"{name:<34}{row['decisions_per_s']:>14,.0f}{row['p50_us']:>10.2f}{row['p99_us']:>10.2f}"
        )
    if r.get("cedarpy"):
        batch = r["cedarpy_all_rules_batch"]["decisions_per_s"]
        print(f"{'cedarpy batch(100), all rules':<34}{batch:>14,.0f}{'-':>10}{'-':>10}")
        print(
            f"ratio Sekisho / cedarpy (per route): {r['ratio_vs_cedarpy']:.1f}x; "
            f"decisions agree on {r['agreement']:.1%} of checked requests"
        )
    print(f"(latencies include ~{r['timer_overhead_us']:.2f} µs timer overhead)")
    print(f"bar >= 200,000 decisions/s: {'met' if r['bar_met'] else 'NOT met'}")


if __name__ == "__main__":
    main(sys.argv[1:])
