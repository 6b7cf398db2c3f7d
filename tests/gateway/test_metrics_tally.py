"""The request path's batched metrics flush to exactly what direct observation gives."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from sekisho.observability import metrics

VALUES = (0.0, 0.0004, 0.001, 0.0011, 0.0025, 0.003, 0.05, 0.7, 1.0, 29.9, 30.0, 31.0, 500.0)


def _samples(registry: CollectorRegistry, name: str, route: str) -> dict[str, float]:
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.startswith(name) and sample.labels.get("route") == route:
                out[sample.name + str(sorted(sample.labels.items()))] = sample.value
    return out


def test_flushed_histogram_equals_direct_observation() -> None:
    reference_registry = CollectorRegistry()
    reference = Histogram("sekisho_upstream_latency_seconds", "reference", ["route"],
                          buckets=metrics._BOUNDS, registry=reference_registry)
    tally = metrics.RequestTally()
    for value in VALUES:
        reference.labels("tally-hist").observe(value)
        tally.upstream_latency("tally-hist", value)
    assert _samples(REGISTRY, "sekisho_upstream_latency_seconds", "tally-hist") == {}
    tally.flush()
    flushed = _samples(REGISTRY, "sekisho_upstream_latency_seconds", "tally-hist")
    expected = _samples(reference_registry, "sekisho_upstream_latency_seconds", "tally-hist")
    flushed = {k: v for k, v in flushed.items() if "_created" not in k}
    expected = {k: v for k, v in expected.items() if "_created" not in k}
    assert flushed == expected and len(flushed) == len(metrics._BOUNDS) + 3  # +Inf, count, sum


def test_counters_accumulate_across_flushes() -> None:
    tally = metrics.RequestTally()
    for _ in range(3):
        tally.exchange("tally-route", 200, "allow", ("tally-reason-a",))
    tally.exchange("tally-route", 403, "deny", ("tally-reason-a", "tally-reason-b"))
    tally.exchange("tally-route", 502, "allow", ("tally-reason-a",))

    def requests(status: str) -> float | None:
        return REGISTRY.get_sample_value("sekisho_requests_total",
                                         {"route": "tally-route", "status": status})

    def decisions(outcome: str, reason: str) -> float | None:
        return REGISTRY.get_sample_value("sekisho_decisions_total",
                                         {"decision": outcome, "reason": reason})

    assert requests("200") is None  # counted, not yet flushed
    tally.flush()
    assert requests("200") == 3.0 and requests("403") == 1.0 and requests("502") == 1.0
    assert decisions("allow", "tally-reason-a") == 4.0  # the 502 was allowed too
    assert decisions("deny", "tally-reason-a") == 1.0
    assert decisions("deny", "tally-reason-b") == 1.0
    tally.exchange("tally-route", 200, "allow", ())
    tally.flush()
    tally.flush()  # nothing new: no double counting
    assert requests("200") == 4.0
