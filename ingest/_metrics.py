"""Prometheus metrics and the /metrics + /healthz HTTP endpoint of ingest."""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RuleCounts(Collector):
    """A counter per rule that the hot path bumps as a plain int: ``counts[rule] += 1``.

    prometheus_client's ``Counter.inc()`` takes a lock and cost ~0.9 µs per call here; ingest
    made two per message (and a ``Histogram.observe``, ~1.8 µs: see
    :class:`LatencyHistogram`). These are read when /metrics is scraped instead.
    Only the event-loop thread writes, so a scrape reads each value whole.

    Args:
        name: Metric name without ``_total``.
        documentation: Help text.
        rules: Every label value; fixed, so a scrape never sees the dict grow.
        registry: Where to register.
    """

    def __init__(
        self, name: str, documentation: str, rules: Iterable[str], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self.counts: dict[str, int] = dict.fromkeys(rules, 0)
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        """The current counts (prometheus_client's collector interface)."""
        family = CounterMetricFamily(self._name, self._documentation, labels=["rule"])
        for rule, count in self.counts.items():
            family.add_metric([rule], count)
        yield family


class LatencyHistogram(Collector):
    """A histogram observed with one ``bisect`` and two additions (no lock, no loop).

    Args:
        name: Metric name.
        documentation: Help text.
        buckets: Upper bounds, ascending; ``+Inf`` is added.
        registry: Where to register.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Iterable[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = tuple(buckets)
        # Per bucket, not cumulative: the last one counts values above every bound.
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        """Count one observation (``le`` bounds are inclusive, as in Prometheus)."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[Metric]:
        """Cumulative buckets, count and sum (prometheus_client's collector interface)."""
        counts = list(self._counts)
        buckets = []
        running = 0
        # `le` written as prometheus_client writes it (1 -> "1.0"), so queries keep matching.
        labels = (*map(floatToGoString, self._bounds), "+Inf")
        for bound, count in zip(labels, counts, strict=True):
            running += count
            buckets.append((bound, running))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=self._sum
        )


class IngestMetrics:
    """All ingest metrics, in their own registry (several services may share a process in tests).

    Args:
        rules: Names of the MQTT -> Kafka rules, the labels of the per-message counters.
    """

    def __init__(self, rules: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        rules = tuple(rules)
        self.received = RuleCounts(
            "fleetstream_ingest_received", "MQTT messages received", rules, r
        )
        self.produced = RuleCounts(
            "fleetstream_ingest_produced", "Records Kafka confirmed (excl. quarantine)", rules, r
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
        self.quarantine_failed = Counter(
            "fleetstream_ingest_quarantine_failed",
            "Quarantine records Kafka refused (retried with backoff; the message stays unacked)",
            ["rule", "reason"],
            registry=r,
        )
        self.acked = Counter(
            "fleetstream_ingest_acked", "MQTT PUBACKs sent after Kafka confirmed", registry=r
        )
        self.dropped = Counter(
            "fleetstream_ingest_dropped",
            "QoS 0 messages dropped because ingest_qos0_max_queued records already waited "
            "for Kafka (Kafka down or slower than MQTT)",
            ["rule"],
            registry=r,
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
        self.latency = LatencyHistogram(
            "fleetstream_ingest_ack_latency_seconds",
            "MQTT receive to Kafka acknowledgement",
            LATENCY_BUCKETS,
            r,
        )
        self.commands = Counter(
            "fleetstream_ingest_commands", "Kafka records published to MQTT", ["rule"], registry=r
        )
        self.commands_commit_failed = Counter(
            "fleetstream_ingest_commands_commit_failed",
            "Offset commits of published commands that failed (the commands may come again)",
            ["rule"],
            registry=r,
        )
        self.command_loop_crashes = Counter(
            "fleetstream_ingest_command_loop_crashes",
            "Kafka -> MQTT command loops that crashed (restarted with backoff)",
            ["rule"],
            registry=r,
        )
        self.commands_quarantined = Counter(
            "fleetstream_ingest_commands_quarantined",
            "Kafka commands that could not be published",
            ["rule", "reason"],
            registry=r,
        )


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """A thread per connection: one slow or idle client cannot hold up /healthz."""

    daemon_threads = True  # never joined: a hung client must not delay the exit


class _QuietHandler(WSGIRequestHandler):
    timeout = 10.0  # socket timeout per connection, set by serve_http

    def handle(self) -> None:
        try:
            super().handle()
        except (TimeoutError, ConnectionError) as exc:
            # An idle or vanished client (port scan, half-open scrape): nothing to report.
            _log.debug("HTTP client %s dropped: %s", self.client_address, exc)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        _log.debug(format, *args)


def serve_http(
    metrics: IngestMetrics,
    health: Callable[[], tuple[bool, dict[str, Any]]],
    host: str,
    port: int,
    request_timeout_s: float = 10.0,
) -> WSGIServer:
    """Serve /metrics and /healthz from daemon threads; returns the server (``shutdown()`` it).

    Args:
        metrics: What /metrics exposes.
        health: Called for each /healthz: (healthy, details).
        host: Address to listen on.
        port: Port to listen on (0: any free one, see ``server_address``).
        request_timeout_s: A connection that sends nothing for this long is closed.
    """
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

    handler = type("_Handler", (_QuietHandler,), {"timeout": request_timeout_s})
    server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=handler)
    thread = threading.Thread(target=server.serve_forever, name="ingest-http", daemon=True)
    thread.start()
    return server
