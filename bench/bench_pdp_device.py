"""PDP with device, time, segment and client-certificate criteria on 1,000 routes, vs cedarpy.

The workload of bench_pdp (groups, office CIDRs, users, e-mail domains, methods, paths) with
the issue-4 criteria mixed in as a city would write them: `device` (`enrolled`, `profile`),
`time` (weekdays, office hours, a contractor's date range, holidays excluded, a night lock
over midnight), `segment` (deny rules for `lgwan` and `mynumber` routes) and
`client_certificate` (issuer, inventory SANs). Requests carry a device in most cases (an
enrolled one of profile managed/byod/quarantine, some used by another user, some not
enrolled) and a moment spread over two weeks around Golden Week with its holidays.

Measured on one core, each loop bounded in time: decisions/s and per-call p50/p99 of
`evaluate(facts, policy)` (a) on each route's own compiled policy and (b) as the gateway
decides, through `Runtime.policy_for(route)` of a runtime built from a `Config` holding the
1,000 routes under `profile: beta-prime` with office networks and designated My Number
terminals: the segment guardrail in front of each route's policy (the bar is judged on (b)).
The route policies are translated to Cedar and decided by cedarpy in the same run; the
decisions must agree with (a).

What Cedar cannot express, and how the translation stands in for it (in Cedar's favour:
the work is done outside the timed call):
- weekdays: Cedar's `datetime` has no day of the week, so the local weekday is computed by
  the caller and passed in the context;
- time zones: Cedar knows only fixed offsets; Asia/Tokyo has had no daylight saving since
  1951, so `offset(duration("9h"))` is exact here but would not be for a zone with DST;
- the holiday list is inlined into each policy as a set of dates (Sekisho takes it from
  the configuration's `holidays:` at run time).

    python bench/bench_pdp_device.py [--seconds 2] [--seed 11] [--requests 20000]

`main(argv)` returns the figures as a dict, for bench/run.py.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import ipaddress
import json
import os
import random  # noqa: TID251 -- reproducible workload, nothing security-relevant
import statistics
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pdp  # the shared workload pieces and timing loops
from bench_pdp import (
    BRANCHES,
    CITY_DOMAIN,
    DEPARTMENTS,
    METHODS,
    OFFICE,
    SUBPATHS,
    USERS,
    _address,
    _pct,
    _users,
    cedar_entities,
    latencies,
    throughput,
)

from sekisho.config.model import Config, Networks, Route
from sekisho.policy import Facts, Policy, compile_policy, evaluate
from sekisho.runtime import build_runtime

ROUTES = 1000
DEVICES = 3000
ISSUER = "CN=Sekisho Device CA,O=関所市"
PROFILES = ("managed", "byod", "quarantine")
TOKYO = ZoneInfo("Asia/Tokyo")
WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WORKDAYS = list(WEEKDAY_NAMES[:5])
# 2025 holidays around the measured fortnight (Shōwa Day, Constitution Day, Greenery Day,
# Children's Day and its substitute) and a few others, as `holidays:` would list them.
HOLIDAYS = frozenset(date.fromisoformat(d) for d in (
    "2025-01-01", "2025-01-13", "2025-02-11", "2025-02-24", "2025-03-20", "2025-04-29",
    "2025-05-03", "2025-05-04", "2025-05-05", "2025-05-06", "2025-07-21", "2025-08-11"))
START = datetime(2025, 4, 24, 15, 0, tzinfo=UTC)  # Friday 00:00 in Tokyo
SPAN = timedelta(days=14)
# The guardrails' networks: the office, and the designated My Number terminals in it.
MYNUMBER_TERMINALS = ["10.20.5.0/24", "10.21.9.0/24"]
# How people signed in: password only, or with a second factor (for the guardrails' `mfa`
# and `auth_age`; the route policies here do not look at it, so Cedar needs no translation).
FACTORS = (frozenset({"pwd"}), frozenset({"pwd", "totp"}), frozenset({"pwd", "webauthn_uv"}))


# -- workload ---------------------------------------------------------------------------


def _segment(route: int) -> str:
    if route % 20 == 0:
        return "mynumber"
    return "lgwan" if route % 4 == 1 else "internet"


def _inventory(device: int) -> str:
    return f"urn:sekisho:inventory:PC-{device:04d}"


def _policy(rng: random.Random, route: int) -> dict[str, Any]:
    prefix = f"/app{route}"
    depts = [f"dept-{d:02d}" for d in rng.sample(range(DEPARTMENTS), rng.randint(1, 4))]
    office = rng.sample(OFFICE, rng.randint(1, 3)) + rng.sample(BRANCHES, rng.randint(0, 4))
    office_hours = {"weekdays": WORKDAYS, "hours": "08:00-20:00", "holidays": "exclude"}
    kind = rng.random()
    if kind < 0.30:
        allow = [{"group": depts}, {"device": {"enrolled": True}}, {"time": office_hours}]
    elif kind < 0.50:
        allow = [{"group": "staff"}, {"device": {"profile": ["managed", "byod"]}},
                 {"or": [{"source_ip": office}, {"group": "remote-ok"}]}]
    elif kind < 0.65:
        users = [f"u{n:04d}" for n in rng.sample(range(USERS), rng.randint(5, 20))]
        pcs = [_inventory(n) for n in rng.sample(range(DEVICES), rng.randint(5, 30))]
        allow = [{"user": users}, {"client_certificate": {"san": pcs}},
                 {"http_method": ["GET", "POST"]}]
    elif kind < 0.75:
        allow = [{"group": "admins"}, {"device": {"profile": "managed"}},
                 {"source_ip": office}, {"http_path": {"prefix": f"{prefix}/admin"}},
                 {"time": {"hours": ["07:00-12:00", "13:00-22:00"]}}]
    elif kind < 0.85:
        first = START.astimezone(TOKYO).date() + timedelta(days=rng.randint(0, 7))
        allow = [{"group": "contractors"}, {"client_certificate": {"issuer": ISSUER}},
                 {"time": {"weekdays": WORKDAYS, "hours": "09:00-18:00",
                           "dates": {"from": first.isoformat(),
                                     "until": (first + timedelta(days=5)).isoformat()}}}]
    elif kind < 0.97:
        allow = [{"email_domain": CITY_DOMAIN}, {"segment": ["internet", "lgwan"]},
                 {"device": {"enrolled": True}},
                 {"http_path": [{"prefix": f"{prefix}/public"}, {"exact": prefix}]}]
    else:
        allow = [{"always": True}]
    document: dict[str, Any] = {"allow": {"and": allow}}
    deny: list[dict[str, Any]] = []
    segment = _segment(route)
    if segment == "mynumber":  # only managed devices in the office, never at night
        deny.append({"not": [{"and": [{"device": {"profile": "managed"}},
                                      {"source_ip": OFFICE[:3]}]}]})
    if segment == "lgwan":
        deny.append({"and": [{"segment": "lgwan"}, {"not": [{"source_ip": OFFICE + BRANCHES}]},
                             {"not": [{"device": {"profile": "managed"}}]}]})
    if route % 7 == 0:
        deny.append({"time": {"hours": "22:00-06:00"}})
    if route % 11 == 0:
        deny.append({"group": "contractors"})
    if deny:
        document["deny"] = {"or": deny}
    return document


def _device_facts(rng: random.Random, user: str | None) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.25:
        return {}  # a browser without a device certificate
    device = rng.randrange(DEVICES)
    device_id = f"dev-{device:016x}"
    if roll < 0.30:
        return {"device_id": device_id}  # a certificate of a suspended or unknown device
    owner = user if (user and rng.random() < 0.9) else f"u{rng.randrange(USERS):04d}"
    return {
        "device_id": device_id, "device_enrolled": True, "device_user": owner,
        "device_profile": rng.choices(PROFILES, (5, 3, 2))[0],
        "client_certificate_issuer": ISSUER,
        "client_certificate_sans": frozenset({f"urn:sekisho:device:{device_id}",
                                              _inventory(device)}),
    }


def build(seed: int, requests: int, allowed_share: float = 0.5) -> dict[str, Any]:
    """Users, one policy document per route, and a request stream (see bench_pdp.build)."""
    rng = random.Random(seed)
    users = _users(rng)
    documents = {f"r{n:04d}": _policy(rng, n) for n in range(ROUTES)}
    policies = {r: compile_policy(r, d) for r, d in documents.items()}
    want_allowed = int(requests * allowed_share)
    allowed: list[Facts] = []
    denied: list[Facts] = []
    while len(allowed) < want_allowed or len(denied) < requests - want_allowed:
        route = rng.randrange(ROUTES)
        if rng.random() < 0.1:
            user, email, groups, authenticated = None, "", frozenset[str](), False
        else:
            (user, email, groups), authenticated = rng.choice(users), True
        now = START + timedelta(seconds=rng.randrange(int(SPAN.total_seconds())))
        methods = rng.choices(FACTORS, (3, 6, 1))[0] if authenticated else frozenset[str]()
        # When each method was proven (the timed `mfa` form of the guardrails reads these):
        # within the last two hours, so some pass "within 15 minutes" and some do not.
        proofs = {m: now - timedelta(seconds=rng.randrange(7200)) for m in methods}
        facts = Facts(
            authenticated=authenticated, user=user, email=email, groups=groups,
            source_ip=ipaddress.ip_address(_address(rng)), method=rng.choice(METHODS),
            path=f"/app{route}{rng.choice(SUBPATHS)}", host="apps.city.example.lg.jp",
            route=f"r{route:04d}", segment=_segment(route), now=now, holidays=HOLIDAYS,
            auth_methods=methods, proofs=proofs,
            auth_time=max(proofs.values()) if proofs else None,
            **_device_facts(rng, user))
        bucket = allowed if evaluate(facts, policies[facts.route]).allow else denied
        if len(bucket) < (want_allowed if bucket is allowed else requests - want_allowed):
            bucket.append(facts)
    stream = allowed + denied
    rng.shuffle(stream)
    return {"users": users, "documents": documents, "stream": stream}


# -- Cedar translation ------------------------------------------------------------------

_LOCAL = 'context.now.offset(duration("9h"))'  # Asia/Tokyo: UTC+9, no DST since 1951
_HOLIDAY_SET = "[{}]".format(", ".join(f'datetime("{d.isoformat()}")' for d in sorted(HOLIDAYS)))


def _names(arg: Any) -> list[Any]:
    return list(arg) if isinstance(arg, list) else [arg]


def _strings(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in values) + "]"


def _minutes(text: str) -> tuple[int, int]:
    start, end = text.split("-")
    h1, m1 = start.split(":")
    h2, m2 = end.split(":")
    return int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)


def _cedar_time(arg: dict[str, Any]) -> str:
    parts = []
    if "weekdays" in arg:
        parts.append(f"{_strings(_names(arg['weekdays']))}.contains(context.weekday)")
    if "hours" in arg:
        windows = []
        for text in _names(arg["hours"]):
            start, end = _minutes(text)
            after = f'{_LOCAL}.toTime() >= duration("{start}m")'
            before = f'{_LOCAL}.toTime() < duration("{end}m")'
            windows.append(f"({after} && {before})" if start < end else
                           f"({after} || {before})")
        parts.append("(" + " || ".join(windows) + ")")
    if "dates" in arg:
        dates = arg["dates"]
        parts.append(f'({_LOCAL}.toDate() >= datetime("{dates["from"]}") && '
                     f'{_LOCAL}.toDate() <= datetime("{dates["until"]}"))')
    holidays = arg.get("holidays", "ignore")
    if holidays != "ignore":
        test = f"{_HOLIDAY_SET}.contains({_LOCAL}.toDate())"
        parts.append(f"!{test}" if holidays == "exclude" else test)
    return "(" + " && ".join(parts) + ")"


def cedar_expr(item: dict[str, Any]) -> str:
    ((key, arg),) = item.items()
    if key in ("and", "or", "not"):
        parts = [cedar_expr(child) for child in arg]
        if key == "and":
            return "(" + " && ".join(parts) + ")"
        joined = "(" + " || ".join(parts) + ")"
        return joined if key == "or" else f"!{joined}"
    if key == "segment":
        return f"{_strings(_names(arg))}.contains(context.segment)"
    if key == "device":
        parts = ["context.device_enrolled", 'context.device_id != ""']
        if "id" in arg:
            parts.append(f"{_strings(_names(arg['id']))}.contains(context.device_id)")
        if "profile" in arg:
            parts.append(f"{_strings(_names(arg['profile']))}.contains(context.device_profile)")
        parts.append('!(context.authenticated && context.user != "" && '
                     'context.device_user != "" && context.device_user != context.user)')
        return "(" + " && ".join(parts) + ")"
    if key == "client_certificate":
        parts = ['context.cert_issuer != ""']
        if "issuer" in arg:
            parts.append(f"context.cert_issuer == {json.dumps(arg['issuer'], ensure_ascii=False)}")
        if "san" in arg:
            parts.append(f"context.cert_sans.containsAny({_strings(_names(arg['san']))})")
        return "(" + " && ".join(parts) + ")"
    if key == "time":
        return _cedar_time(arg)
    return bench_pdp._cedar_expr(item)


def cedar_policies(route: str, document: dict[str, Any]) -> str:
    return "\n".join(
        f'{effect}(principal, action, resource == Route::"{route}") '
        f"when {{ {cedar_expr(document[section])} }};"
        for effect, section in (("permit", "allow"), ("forbid", "deny")) if section in document)


def cedar_request(facts: Facts) -> dict[str, Any]:
    request = bench_pdp.cedar_request(facts)
    request["context"].update({
        "user": facts.user or "",
        "segment": facts.segment,
        "now": {"__extn": {"fn": "datetime",
                           "arg": facts.now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}},
        # Cedar has no day of the week: the caller computes it (outside the timed call).
        "weekday": WEEKDAY_NAMES[facts.now.astimezone(TOKYO).weekday()],
        "device_id": facts.device_id, "device_enrolled": facts.device_enrolled,
        "device_user": facts.device_user, "device_profile": facts.device_profile,
        "cert_issuer": facts.client_certificate_issuer,
        "cert_sans": sorted(facts.client_certificate_sans),
    })
    return request


# -- measurement ------------------------------------------------------------------------


def _stats(rate: float, samples: list[int]) -> dict[str, float]:
    return {"decisions_per_s": rate, "p50_us": _pct(samples, 0.50),
            "p99_us": _pct(samples, 0.99), "mean_us": 1e6 / rate}


def _gateway_policies(documents: dict[str, dict[str, Any]]
                      ) -> tuple[dict[str, Policy] | None, str]:
    """Each route's policy as `Runtime.policy_for` gives it to the gateway (guardrails too)."""
    routes = tuple(Route(id=r, host="apps.city.example.lg.jp", path_prefix=f"/app{int(r[1:])}",
                         to="http://127.0.0.1:9", segment=_segment(int(r[1:])),
                         policy=r) for r in documents)
    networks = Networks(office=tuple(ipaddress.ip_network(n) for n in OFFICE + BRANCHES),
                        mynumber_terminals=tuple(ipaddress.ip_network(n)
                                                 for n in MYNUMBER_TERMINALS))
    config = Config(source="<bench>", routes=routes, policies=documents, holidays=HOLIDAYS,
                    profile="beta-prime", networks=networks)
    try:
        runtime = build_runtime(config)
    except Exception as exc:  # a guardrail refusing a bench route: say so, measure the rest
        return None, f"{type(exc).__name__}: {exc}"[:300]
    chosen: dict[str, Policy] = {}
    for route in routes:
        policy = runtime.policy_for(route)
        if policy is None:
            return None, f"no policy for route {route.id}"
        chosen[route.id] = policy
    if any(chosen[r.id] is not runtime.policies[r.policy] for r in routes):
        return chosen, ("the β′ segment guardrails in front of the route policies (office "
                        "networks and designated My Number terminals configured)")
    present = importlib.util.find_spec("sekisho.policy.guardrails") is not None
    return chosen, ("the route policies as they are: policy_for applies no guardrails yet"
                    + (" (sekisho.policy.guardrails exists but is not wired in)"
                       if present else ""))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measured loop")
    parser.add_argument("--seed", type=int, default=11)
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
    policies = {r: compile_policy(r, d) for r, d in documents.items()}
    counts = [bench_pdp._count(d[s]) for d in documents.values()
              for s in ("allow", "deny") if s in d]
    n = len(stream)
    kinds = ("device", "time", "segment", "client_certificate")
    text = json.dumps(documents)
    results: dict[str, Any] = {
        "routes": len(documents), "rules": len(counts),
        "criteria": sum(c for c, _ in counts),
        "criteria_of_issue_4": {k: text.count(f'"{k}"') for k in kinds},
        "requests": n,
        "with_device": sum(bool(f.device_id) for f in stream) / n,
    }

    def measure(pairs: list[tuple[Facts, Policy]]) -> dict[str, float]:
        def chunk(start: int) -> None:
            for facts, policy in pairs[start : start + 1000]:
                evaluate(facts, policy)

        def one(i: int) -> object:
            facts, policy = pairs[i]
            return evaluate(facts, policy)

        gc.collect()
        return _stats(throughput(chunk, n, args.seconds), latencies(one, n, args.seconds))

    route_pairs = [(f, policies[f.route]) for f in stream]
    decisions = [evaluate(f, p) for f, p in route_pairs]
    results["allowed_share"] = sum(d.allow for d in decisions) / n
    results["sekisho"] = measure(route_pairs)
    gateway, note = _gateway_policies(documents)
    results["gateway_note"] = note
    if gateway is not None:
        gateway_pairs = [(f, gateway[f.route]) for f in stream]
        results["gateway_allowed_share"] = sum(
            evaluate(f, p).allow for f, p in gateway_pairs) / n
        results["sekisho_gateway"] = measure(gateway_pairs)
    timer = latencies(lambda i: None, n, min(args.seconds, 0.5))
    results["timer_overhead_us"] = statistics.median(timer) / 1000.0

    try:
        import cedarpy
    except ImportError:
        results["cedarpy"] = None
    else:
        entities = cedarpy.Entities.from_json_str(cedar_entities(workload["users"]))
        route_sets = {r: cedarpy.PolicySet.from_str(cedar_policies(r, d))
                      for r, d in documents.items()}
        cedar_pairs = [(cedar_request(f), route_sets[f.route]) for f in stream]
        check = min(n, 5000)
        mismatches = []
        for i, (req, ps) in enumerate(cedar_pairs[:check]):
            answer = cedarpy.is_authorized(req, ps, entities)
            if answer.diagnostics.errors:
                raise RuntimeError(f"Cedar evaluation error: {answer.diagnostics.errors}")
            if answer.allowed != decisions[i].allow:
                mismatches.append(i)
        results["agreement"] = 1 - len(mismatches) / check
        results["checked"] = check

        def cedar_chunk(start: int) -> None:
            for req, ps in cedar_pairs[start : start + 1000]:
                cedarpy.is_authorized(req, ps, entities)

        def cedar_one(i: int) -> object:
            req, ps = cedar_pairs[i]
            return cedarpy.is_authorized(req, ps, entities)

        gc.collect()
        results["cedarpy"] = _stats(throughput(cedar_chunk, n, args.seconds),
                                    latencies(cedar_one, n, args.seconds))
        results["ratio_vs_cedarpy"] = (results["sekisho"]["decisions_per_s"]
                                       / results["cedarpy"]["decisions_per_s"])
    headline = results.get("sekisho_gateway", results["sekisho"])
    results["bar"] = {"decisions_per_s": 200_000, "p99_us": 20.0}
    results["bar_met"] = (headline["decisions_per_s"] >= 200_000
                          and headline["p99_us"] <= 20.0)
    return results


def _print(r: dict[str, Any]) -> None:
    issue4 = ", ".join(f"{k} {v}" for k, v in r["criteria_of_issue_4"].items())
    print(f"PDP benchmark with device/time/segment/client_certificate: {r['routes']} routes, "
          f"{r['rules']} rules, {r['criteria']} criteria ({issue4}); {r['requests']} "
          f"distinct requests, {r['with_device']:.0%} with a device certificate, "
          f"{r['allowed_share']:.0%} allowed; python {sys.version.split()[0]}, one core")
    print(f"{'engine':<40}{'decisions/s':>14}{'p50 µs':>10}{'p99 µs':>10}")
    rows = [("sekisho evaluate (route policy)", r["sekisho"])]
    if "sekisho_gateway" in r:
        rows.append(("sekisho via Runtime.policy_for", r["sekisho_gateway"]))
    if r.get("cedarpy"):
        rows.append(("cedarpy.is_authorized (per route)", r["cedarpy"]))
    for name, row in rows:
        print(f"{name:<40}{row['decisions_per_s']:>14,.0f}{row['p50_us']:>10.2f}"
              f"{row['p99_us']:>10.2f}")
    print(f"policy_for: {r['gateway_note']}"
          + (f" ({r['gateway_allowed_share']:.0%} allowed)" if "gateway_allowed_share" in r
             else ""))
    if r.get("cedarpy"):
        print(f"ratio Sekisho / cedarpy: {r['ratio_vs_cedarpy']:.1f}x; decisions agree on "
              f"{r['agreement']:.1%} of {r['checked']} checked requests")
    print(f"(latencies include ~{r['timer_overhead_us']:.2f} µs timer overhead)")
    print(f"bar >= 200,000 decisions/s and p99 <= 20 µs: "
          f"{'met' if r['bar_met'] else 'NOT met'}")


if __name__ == "__main__":
    main(sys.argv[1:])
