"""Prometheus metrics and the /metrics + /healthz HTTP endpoint of ingest."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

_log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class IngestMetrics:
    """All ingest metrics, in their own registry (several services may share a process in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "fleetstream_ingest_received", "MQTT messages received", ["rule"], registry=r
        )
        self.produced = Counter(
            "fleetstream_ingest_produced",
            "Records Kafka confirmed (excl. quarantine)",
            ["rule"],
            registry=r,
        )
        self.quarantined = Counter(
            "fleetstream_ingest_quarantined",
            "Records written to a quarantine topic",
            ["rule", "reason"],
            registry=r,
        )
        self.failed = Counter(
            "fleetstream_ingest_failed", "Kafka delivery failures (retried)", ["reason"], registry=r
        )
        self.acked = Counter(
            "fleetstream_ingest_acked", "MQTT PUBACKs sent after Kafka confirmed", registry=r
        )
        self.unmatched = Counter(
            "fleetstream_ingest_unmatched", "Messages no rule matched (acked)", registry=r
        )
        self.redelivered = Counter(
            "fleetstream_ingest_redelivered", "Messages received with the MQTT dup flag", registry=r
        )
        self.inflight = Gauge(
            "fleetstream_ingest_inflight", "Received, not yet acknowledged messages", registry=r
        )
        self.oldest_unacked = Gauge(
            "fleetstream_ingest_oldest_unacked_seconds",
            "Age of the oldest unacknowledged message",
            registry=r,
        )
        self.kafka_up = Gauge(
            "fleetstream_ingest_kafka_up", "1 when Kafka confirms writes", registry=r
        )
        self.mqtt_up = Gauge(
            "fleetstream_ingest_mqtt_up", "1 when connected to the MQTT broker", registry=r
        )
        self.mqtt_reconnects = Counter(
            "fleetstream_ingest_mqtt_reconnects", "MQTT connection attempts", registry=r
        )
        self.mqtt_sessions_lost = Counter(
            "fleetstream_ingest_mqtt_sessions_lost",
            "Reconnects where the broker no longer had ingest's session",
            registry=r,
        )
        self.producer_restarts = Counter(
            "fleetstream_ingest_kafka_producer_restarts",
            "Kafka producers replaced (fatal error, or no confirmation while Kafka answered)",
            registry=r,
        )
        self.kafka_errors = Counter(
            "fleetstream_ingest_kafka_errors", "librdkafka client errors", ["code"], registry=r
        )
        self.latency = Histogram(
            "fleetstream_ingest_ack_latency_seconds",
            "MQTT receive to Kafka acknowledgement",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commands = Counter(
            "fleetstream_ingest_commands", "Kafka records published to MQTT", ["rule"], registry=r
        )
        self.commands_quarantined = Counter(
            "fleetstream_ingest_commands_quarantined",
            "Kafka commands that could not be published",
            ["rule", "reason"],
            registry=r,
        )


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        _log.debug(format, *args)


def serve_http(
    metrics: IngestMetrics, health: Callable[[], tuple[bool, dict[str, Any]]], host: str, port: int
) -> WSGIServer:
    """Serve /metrics and /healthz from a daemon thread; returns the server (``shutdown()`` it)."""
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            ok, detail = health()
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "application/json")],
            )
            return [orjson.dumps(detail)]
        return metrics_app(environ, start_response)  # type: ignore[no-any-return]

    server = make_server(host, port, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="ingest-http", daemon=True)
    thread.start()
    return server
