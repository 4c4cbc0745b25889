"""Ingest's lock-free hot-path metrics expose what prometheus_client's own would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ingest._metrics import LATENCY_BUCKETS, IngestMetrics

pytestmark = pytest.mark.unit


def _lines(registry: CollectorRegistry, name: str) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if name in line and "_created" not in line]


@pytest.mark.parametrize(
    "values",
    [[], [0.0005, 0.001, 0.001, 0.0011, 0.3, 60.0, 61.0], [float(b) for b in LATENCY_BUCKETS]],
)
def test_latency_histogram_matches_prometheus_client(values: list[float]) -> None:
    ours = IngestMetrics(["telemetry"])
    registry = CollectorRegistry()
    theirs = Histogram(
        "fleetstream_ingest_ack_latency_seconds",
        "MQTT receive to Kafka acknowledgement",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    for value in values:
        ours.latency.observe(value)
        theirs.observe(value)
    name = "fleetstream_ingest_ack_latency_seconds"
    assert _lines(ours.registry, name) == _lines(registry, name)


def test_rule_counts_match_prometheus_client() -> None:
    ours = IngestMetrics(["telemetry", "tesla"])
    registry = CollectorRegistry()
    theirs = Counter("fleetstream_ingest_received", "MQTT messages received", ["rule"],
                     registry=registry)  # fmt: skip
    for rule, times in (("telemetry", 3), ("tesla", 0)):
        ours.received.counts[rule] += times
        theirs.labels(rule=rule).inc(times)
    name = "fleetstream_ingest_received"
    assert _lines(ours.registry, name) == _lines(registry, name)
