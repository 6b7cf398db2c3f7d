"""Prometheus metrics, defined once. Names follow `sekisho_<noun>_<unit>`.

With several worker processes the master serves the sum (prometheus_client multiprocess
mode, enabled by setting PROMETHEUS_MULTIPROC_DIR before this module is imported).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "sekisho_requests_total", "Requests answered by the gateway", ["route", "status"]
)
DECISIONS = Counter(
    "sekisho_decisions_total", "Policy decisions by outcome and reason", ["decision", "reason"]
)
UPSTREAM_LATENCY = Histogram(
    "sekisho_upstream_latency_seconds",
    "Time from sending the request upstream to its response head",
    ["route"],
    buckets=_BOUNDS,
)
ACTIVE_SESSIONS = Gauge(
    "sekisho_active_sessions", "Sessions that are neither expired nor revoked",
    multiprocess_mode="max",
)
SIGNINS = Counter("sekisho_signins_total", "Sign-in attempts by result", ["result"])
AUDIT_EVENTS = Counter("sekisho_audit_events_total", "Audit events committed")
AUDIT_QUEUE = Gauge(
    "sekisho_audit_queue_depth", "Audit events waiting for the group commit",
    multiprocess_mode="livesum",
)


class RequestTally:
    """The request path's metrics, counted in plain dicts and flushed about once a second.

    In multiprocess mode every `inc()`/`observe()` takes a lock and writes an mmap'd file;
    a proxied request made four of them. The gateway counts here instead (dict updates only)
    and `flush()` moves the totals into the Prometheus objects, so /metrics lags by at most
    the flush interval (docs/operations.md). The flushed figures are identical to observing
    each request directly (tests/gateway/test_metrics_tally.py).
    """

    def __init__(self) -> None:
        # (route, status, decision, reasons) -> requests: one count a request, split by
        # `flush` into the requests and decisions counters.
        self.exchanges: dict[tuple[str, int, str, tuple[str, ...]], int] = {}
        # route -> [sum of seconds, count in bucket 0, bucket 1, ..., bucket +Inf]
        self.latency: dict[str, list[float]] = {}
        self._children: dict[object, Any] = {}

    def exchange(self, route: str, status: int, outcome: str, reasons: tuple[str, ...]) -> None:
        """One request answered `status` on `route` after the decision `outcome` (allow or
        deny) for `reasons`."""
        key = (route, status, outcome, reasons)
        self.exchanges[key] = self.exchanges.get(key, 0) + 1

    def upstream_latency(self, route: str, seconds: float) -> None:
        row = self.latency.get(route)
        if row is None:
            row = self.latency[route] = [0.0] * (len(_BOUNDS) + 2)  # + the +Inf bucket
        row[0] += seconds
        # Prometheus puts a value in the first bucket whose upper bound is >= the value.
        row[1 + bisect_left(_BOUNDS, seconds)] += 1

    def flush(self) -> None:
        """Add what was counted since the last flush to the Prometheus metrics."""
        exchanges, self.exchanges = self.exchanges, {}
        latency, self.latency = self.latency, {}
        children = self._children
        requests: dict[tuple[str, int], int] = {}
        decisions: dict[tuple[str, str], int] = {}
        for (route, status, outcome, reasons), count in exchanges.items():
            requests[route, status] = requests.get((route, status), 0) + count
            for reason in reasons:
                decisions[outcome, reason] = decisions.get((outcome, reason), 0) + count
        for (route, status), count in requests.items():
            child = children.get(("r", route, status))
            if child is None:
                child = children[("r", route, status)] = REQUESTS.labels(route, str(status))
            child.inc(count)
        for (outcome, reason), count in decisions.items():
            child = children.get(("d", outcome, reason))
            if child is None:
                child = children[("d", outcome, reason)] = DECISIONS.labels(outcome, reason)
            child.inc(count)
        for route, row in latency.items():
            child = children.get(("l", route))
            if child is None:
                child = children[("l", route)] = UPSTREAM_LATENCY.labels(route)
            # Histogram.observe() does exactly these increments, one value at a time.
            child._sum.inc(row[0])
            for index, in_bucket in enumerate(row[1:]):
                if in_bucket:
                    child._buckets[index].inc(in_bucket)
