"""Prometheus metrics of the processing service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 90, 120, 300)


class ProcessingMetrics:
    """All processing metrics in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records_in = Counter(
            "fleetstream_processing_records_in", "Telemetry records consumed", registry=r
        )
        self.quarantined = Counter(
            "fleetstream_processing_quarantined",
            "Invalid records sent to quarantine",
            ["reason"],
            registry=r,
        )
        self.late = Counter(
            "fleetstream_processing_late",
            "Records later than the window grace",
            ["vehicle_id"],
            registry=r,
        )
        self.windows = Counter(
            "fleetstream_processing_windows", "Closed windows (vehicle-stats records)", registry=r
        )
        self.alerts = Counter(
            "fleetstream_processing_alerts", "Alert records", ["kind", "status"], registry=r
        )
        self.lag = Gauge(
            "fleetstream_processing_consumer_lag",
            "Input records not yet committed by the group",
            registry=r,
        )
        self.model_version = Info(
            "fleetstream_processing_model", "The active detector model", registry=r
        )
        self.shadow_version = Info(
            "fleetstream_processing_shadow_model",
            "The candidate model scored in shadow mode (empty: none)",
            registry=r,
        )
        self.models_refused = Counter(
            "fleetstream_processing_models_refused",
            "Promoted model versions refused (corrupt, untrusted or incompatible)",
            registry=r,
        )
        self.model_errors = Counter(
            "fleetstream_processing_model_errors",
            "Windows a loaded model failed to score (they got the rules only)",
            ["pointer"],
            registry=r,
        )
        self.window_latency = Histogram(
            "fleetstream_processing_window_close_latency_seconds",
            "Wall clock at window close minus window end",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
