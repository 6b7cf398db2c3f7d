"""Prometheus metrics, defined once. Names follow `sekisho_<noun>_<unit>`.

With several worker processes the master serves the sum (prometheus_client multiprocess
mode, enabled by setting PROMETHEUS_MULTIPROC_DIR before this module is imported).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
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
