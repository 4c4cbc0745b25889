"""``run_pipeline`` at a tiny size on the real Kafka: the report's shape and its counts."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient

from bench import run_pipeline
from fleetstream import infra

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_run_pipeline_reports_every_figure_and_consistent_counts(
    brokers: infra.InfraSettings,
) -> None:
    vehicles, seconds = 4, 200
    report = run_pipeline(vehicles=vehicles, seconds=seconds)

    rows = {(r["subject"], r["metric"]): r for r in report.rows}
    bare = rows[("bare consumer (read_committed, orjson only)", "throughput")]
    subject = rows[("processing (1 process, exactly-once)", "throughput")]
    assert bare["value"] > 0
    assert subject["value"] > 0
    assert subject["baseline"] == "bare consumer"
    assert subject["ratio"] == pytest.approx(subject["value"] / bare["value"])
    for metric in ("CPU per record", "peak RSS", "start-up to first record"):
        assert rows[("processing", metric)]["value"] > 0, (metric, rows[("processing", metric)])
    assert ("offline replay (no Kafka, no Quix, no sessions)", "throughput") in rows

    details = report.details
    assert details["records"] == vehicles * seconds
    assert details["records_in"] == details["records"]
    assert details["offline_replay"]["records"] == details["records"]
    # Exactly-once: what the counters saw is what the output topics hold.
    assert details["outputs"]["stats"] == details["windows_counted"] > 0
    assert details["outputs"]["alerts"] == details["alerts_counted"]
    assert rows[("processing", "stats records out")]["value"] == details["outputs"]["stats"]
    # Each car's windows close on the partition clock; the last ones stay open.
    assert details["outputs"]["stats"] <= vehicles * (seconds // 60 + 1)
    assert details["quarantined"] == 0

    [target] = report.targets
    assert target["target"] == "pipeline ≥ 20,000 records/s per process"
    assert target["met"] == (subject["value"] >= 20_000)

    # The benchmark deletes its topics.
    topics = AdminClient({"bootstrap.servers": brokers.kafka_bootstrap}).list_topics(timeout=10)
    assert not [t for t in topics.topics if details["topic_prefix"] in t]
