"""Ingest's lock-free hot-path metrics expose what prometheus_client's own would."""

from __future__ import annotations

import socket
import time
import urllib.request

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ingest._metrics import LATENCY_BUCKETS, IngestMetrics, serve_http

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


def test_an_idle_connection_neither_blocks_healthz_nor_stays_open_forever(
    capfd: pytest.CaptureFixture[str],
) -> None:
    server = serve_http(
        IngestMetrics(), lambda: (True, {"status": "ok"}), "127.0.0.1", 0, request_timeout_s=0.5
    )
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        # Connects and sends nothing (a port scan, a half-open scrape, a load-balancer probe).
        with socket.create_connection(("127.0.0.1", port)) as idle:
            time.sleep(0.1)
            started = time.monotonic()
            with urllib.request.urlopen(url, timeout=2) as response:
                assert response.status == 200
                assert orjson.loads(response.read()) == {"status": "ok"}
            assert time.monotonic() - started < 0.4  # not after the idle one timed out
            idle.settimeout(3)
            assert idle.recv(1) == b""  # the server closed it after its timeout
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err
