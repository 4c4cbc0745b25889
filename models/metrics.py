"""Prometheus metrics of the archive service (``fleetstream archive``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ArchiveMetrics:
    """All archive metrics in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rows = Counter(
            "fleetstream_archive_rows",
            "Rows written to Parquet files (offsets committed after)",
            ["table"],
            registry=r,
        )
        self.files = Counter(
            "fleetstream_archive_files", "Parquet files written", ["table"], registry=r
        )
        self.skipped = Counter(
            "fleetstream_archive_skipped",
            "Invalid records not archived (they were quarantined upstream), and rows that"
            " did not convert to the table's columns",
            ["table"],
            registry=r,
        )
        self.kafka_errors = Counter(
            "fleetstream_archive_kafka_errors",
            "Errors from Kafka by librdkafka name; failed offset commits as 'commit'",
            ["reason"],
            registry=r,
        )
        self.kafka_up = Gauge(
            "fleetstream_archive_kafka_up",
            "0 after a broker-level error (all brokers down, connection lost, fatal) until"
            " records arrive, a commit succeeds or partitions are assigned",
            registry=r,
        )
        self.buffered = Gauge(
            "fleetstream_archive_buffered_rows", "Rows in memory, not yet in a file", registry=r
        )
        self.oldest_buffered = Gauge(
            "fleetstream_archive_oldest_buffered_seconds",
            "Age of the oldest row in memory (0: none); stays below the flush age when healthy",
            registry=r,
        )
        self.last_commit = Gauge(
            "fleetstream_archive_last_commit_timestamp_seconds",
            "Unix time of the last successful offset commit (0: none yet)",
            registry=r,
        )
