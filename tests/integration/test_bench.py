"""``fleetstream bench`` at toy sizes on the real brokers: it runs, counts right, loses nothing.

Speed is not asserted here (benchmarks report it); these tests guard the measuring code.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from bench import Report, run_e2e, run_ingest
from bench._ingest import _wait_subscribed
from bench.errors import BenchError
from fleetstream import infra
from fleetstream.infra import _kafka, _mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _rows(report: Report) -> dict[tuple[str, str], float]:
    return {(r["subject"], r["metric"]): r["value"] for r in report.rows}


def test_bench_ingest_measures_every_bridge(
    brokers: infra.InfraSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three floods each: the third once shared its slug (MQTT prefix and client ids) with
    # the two-process bridge, which resumed its session and counted every message twice.
    admin = AdminClient({"bootstrap.servers": brokers.kafka_bootstrap})
    before = set(admin.list_topics(timeout=10).topics)
    # MQTTSource's Application once left its state/ folder in the user's working folder.
    monkeypatch.chdir(tmp_path)
    report = run_ingest(vehicles=40, seconds=25, outage_s=0, paced_s=2, repeats=3)
    assert not list(tmp_path.iterdir())
    # Every topic of the run is deleted again, those the ingest processes created too.
    left = set(admin.list_topics(timeout=10).topics) - before
    assert not [t for t in left if t.startswith("bench-")]
    rows = _rows(report)
    for bridge in (
        "fleetstream ingest",
        "fleetstream ingest x2 (shared sub)",
        "quixstreams MQTTSource",
        "naive paho + flush per message",
    ):
        assert rows[(bridge, "lost")] == 0, bridge
        assert rows[(bridge, "duplicates")] == 0, bridge
        assert rows[(bridge, "sustained msg/s")] > 0, bridge
        assert (bridge, "p99 publish->Kafka @1000/s") in rows
        # A slow flood can be told from a slow bridge: the CPU the VM lost meanwhile.
        assert 0 <= rows[(bridge, "CPU stolen during flood")] < 100, bridge
    assert rows[("mosquitto_sub (C), before", "msg/s")] > 0
    # Ingest and MQTTSource ran three times each; the median run stands for the bridge.
    for bridge in ("fleetstream ingest", "quixstreams MQTTSource"):
        floods = [rows[(bridge, f"flood {i} of 3 msg/s")] for i in (1, 2, 3)]
        assert all(0 <= rows[(bridge, f"flood {i} of 3 CPU stolen")] < 100 for i in (1, 2, 3))
        assert rows[(bridge, "sustained msg/s")] == sorted(floods)[1], bridge
    # The warm-up flood is reported but measured against nothing.
    warm = "warm-up: fleetstream ingest (discarded)"
    assert rows[(warm, "sustained msg/s")] > 0
    assert all(r["baseline"] is None for r in report.rows if r["subject"] == warm)
    assert all(r["baseline"] != warm for r in report.rows)
    ratio = next(
        r["ratio"]
        for r in report.rows
        if r["subject"] == "fleetstream ingest" and r["baseline"] == "mosquitto_sub (mean)"
    )
    assert ratio is not None
    assert ratio > 0
    assert {t["target"] for t in report.targets} >= {
        "ingest >= 0.5x mosquitto_sub",
        "ingest >= 3x MQTTSource",
        "ingest loses nothing",
    }
    assert next(t for t in report.targets if t["target"] == "ingest loses nothing")["met"]
    # CPU and memory stand next to the peer's, from the same run.
    for metric in ("CPU per 10k msgs", "peak RSS (flood)"):
        mine = next(
            r for r in report.rows if r["subject"] == "fleetstream ingest" and r["metric"] == metric
        )
        assert mine["baseline"] == "quixstreams MQTTSource", metric
        assert mine["ratio"] == mine["value"] / rows[("quixstreams MQTTSource", metric)], metric


def test_bench_e2e_counts_every_message(
    brokers: infra.InfraSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 10 s windows, so that closed windows' stats fall inside a 30 s run and their
    # samples and latency are checked too (the processes read the same environment).
    monkeypatch.setenv("FLEETSTREAM_PROCESSING_WINDOW_S", "10")
    monkeypatch.setenv("FLEETSTREAM_PROCESSING_GRACE_S", "2")
    monkeypatch.setenv("FLEETSTREAM_PROCESSING_STATS_SPREAD_S", "2")
    # Two processing processes share the 4 partitions: the counts are summed over both.
    admin = AdminClient({"bootstrap.servers": brokers.kafka_bootstrap})
    before = set(admin.list_topics(timeout=10).topics)
    report = run_e2e(vehicles=[30], seconds=30, processes=2)
    assert report.details["broker_at_start"]["topics"] == len(before)
    # Every topic of the run is deleted again, Quix's changelogs included.
    left = set(admin.list_topics(timeout=10).topics) - before
    assert not [t for t in left if "bench-e2e-" in t]
    size = report.details["sizes"][0]
    assert size["sent"] == 30 * 30
    assert size["lost"] == 0
    assert size["consumed"] == size["sent"]
    # Windows closed within the run: every sample of them is in their stats, once.
    assert size["window_expected"] >= 30 * 10
    assert size["window_samples"] == size["window_expected"]
    assert size["surplus_samples"] == 0
    assert size["passed"] == (size["p99_alert_ms"] < 1000 and size["p99_receive_ms"] < 1000)
    rows = _rows(report)
    name = "30 cars x 30 s"
    assert rows[(name, "simulator msg/s")] > 0
    assert rows[(name, "rule alerts measured")] > 0
    assert rows[(name, "windows measured")] >= 30
    # Stats wait at least for their window's end and grace; the 95th lies between.
    p50, p95, p99 = (rows[(name, f"p{q} ts->window stats on Kafka")] for q in (50, 95, 99))
    assert 2 <= p50 <= p95 <= p99
    assert rows[(name, "p99 window close->stats")] > 0
    assert report.params["processing_window_s"] == 10
    assert ("30 cars x 30 s", "processing peak RSS") in rows
    # The brokers are watched when this checkout started them; one it cannot find is
    # left out of the rows (and named) rather than shown at 0 %.
    for broker, managed in (("kafka", _kafka), ("mosquitto", _mosquitto)):
        if managed.process(brokers).pid() is None:
            assert (name, f"{broker} CPU") not in rows
            assert broker in size["unwatched_processes"]
        else:
            assert rows[(name, f"{broker} CPU")] > 0
            assert broker not in size["unwatched_processes"]
    assert len(size["p99_alert_ms_by_ten_seconds_of_run"]) == 3
    assert len(size["cpu_pct_by_ten_seconds_of_run"]["processing"]) == 3
    busy = rows[("30 cars x 30 s", "machine CPU busy (all cores)")]
    stolen = rows[("30 cars x 30 s", "CPU stolen by the hypervisor (all cores)")]
    assert 0 < busy <= 100
    assert 0 <= stolen <= 100 - busy + 1e-6
    assert report.params["processing_processes"] == 2
    assert report.params["processing_commit_interval_s"] > 0


def test_a_baseline_subscriber_that_never_subscribes_stops_the_benchmark(
    brokers: infra.InfraSettings,
) -> None:
    # Before: an endless loop of probes when mosquitto_sub died or never subscribed.
    dead = subprocess.Popen(["true"])
    dead.wait()
    with pytest.raises(BenchError, match="exited with 0 before it subscribed"):
        _wait_subscribed(brokers, "bench-dead-sub", dead, lambda: [])
    deaf = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(BenchError, match=r"got no probe .* in 2 s"):
            _wait_subscribed(brokers, "bench-deaf-sub", deaf, lambda: [], timeout_s=2)
    finally:
        deaf.kill()
        deaf.wait()
