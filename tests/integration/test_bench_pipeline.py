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
    vehicles, seconds = 6, 900
    report = run_pipeline(vehicles=vehicles, seconds=seconds)

    rows = {(r["subject"], r["metric"]): r for r in report.rows}
    bare = rows[("bare consumer (read_committed, orjson only)", "throughput")]
    assert bare["value"] > 0
    details = report.details
    assert details["records"] == vehicles * seconds
    assert details["offline_replay"]["records"] == details["records"]
    assert details["model_version"]
    assert list(details["runs"]) == ["rules", "rules + model", "rules, again"]
    for label, run in details["runs"].items():
        subject = rows[(f"processing ({label}), 1 process, exactly-once", "throughput")]
        assert subject["value"] > 0
        assert subject["baseline"] == "bare consumer"
        assert subject["ratio"] == pytest.approx(subject["value"] / bare["value"])
        for metric in ("CPU per record", "peak RSS", "start-up to first record"):
            value = rows[(f"processing ({label})", metric)]["value"]
            assert value > 0, (label, metric, value)
        cpu = rows[(f"processing ({label})", "CPU per record")]
        assert cpu["baseline"] == "bare consumer"
        assert cpu["baseline_value"] is not None
        assert cpu["ratio"] == pytest.approx(cpu["value"] / cpu["baseline_value"])
        assert run["records_in"] == details["records"]
        # Exactly-once: what the counters saw is what the output topics hold.
        assert run["outputs"]["stats"] == run["windows_counted"] > 0
        assert run["outputs"]["alerts"] == run["alerts_counted"]
        assert (
            rows[(f"processing ({label})", "stats records out")]["value"]
            == (run["outputs"]["stats"])
        )
        # Each car's windows close on the partition clock; the last ones stay open.
        assert run["outputs"]["stats"] <= vehicles * (seconds // 60 + 1)
        assert run["quarantined"] == 0
    # Both runs read the same records into the same windows.
    assert (
        details["runs"]["rules"]["windows_counted"]
        == (details["runs"]["rules + model"]["windows_counted"])
    )
    # Fifteen minutes per car: some driving windows have a five-window baseline to score.
    windows_scored = rows[("offline replay", "windows a model scores")]["value"]
    assert windows_scored == details["offline_replay"]["windows_with_model_features"] > 0

    [target] = report.targets
    judged = rows[("processing (rules + model), 1 process, exactly-once", "throughput")]
    assert target["target"] == "pipeline ≥ 20,000 records/s per process"
    assert target["met"] == (judged["value"] >= 20_000)

    # The benchmark deletes its topics.
    topics = AdminClient({"bootstrap.servers": brokers.kafka_bootstrap}).list_topics(timeout=10)
    assert not [t for t in topics.topics if details["topic_prefix"] in t]
