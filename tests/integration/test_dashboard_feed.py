"""The dashboard's Kafka feed on the real broker: backfill depth, sampling, throughput."""

from __future__ import annotations

import time

import orjson
import pytest

from bench.harness import as_rows, create_topic, produce
from dashboard.feed import KafkaFeed
from dashboard.settings import DashboardSettings
from dashboard.view import FleetView
from simulator import FleetConfig, iter_records
from tests.unit.dashboard.fleet_data import _alert

pytestmark = pytest.mark.integration

CARS = 100
SECONDS = 1000  # 100 cars x 1000 s at 1 Hz = 100,000 telemetry records


@pytest.mark.parametrize("sample_ms", [10_000, 0], ids=["sampled", "every-record"])
def test_feed_reads_recent_history_and_samples_telemetry(
    kafka_bootstrap: str, unique_name: str, sample_ms: int
) -> None:
    topics = {
        kind: f"{unique_name}-{kind}"
        for kind in ("telemetry", "stats", "sessions", "alerts", "feedback")
    }
    for topic in topics.values():
        create_topic(kafka_bootstrap, topic)
    now = time.time_ns() // 1_000_000
    records = list(
        iter_records(
            FleetConfig(vehicles=CARS, duration_s=SECONDS, seed=5, start_ms=now - SECONDS * 1000)
        )
    )
    produce(kafka_bootstrap, topics["telemetry"], as_rows(records))
    alerts = [_alert(f"ep{i}", f"veh-{i:05d}", "overheat", "critical", now - i) for i in range(30)]
    produce(
        kafka_bootstrap,
        topics["alerts"],
        [(a["vehicle_id"].encode(), orjson.dumps(a), a["ts"]) for a in alerts],
    )
    produce(kafka_bootstrap, topics["alerts"], [(b"x", b"not json", now)])

    settings = DashboardSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        dashboard_telemetry_topic=topics["telemetry"],
        dashboard_stats_topic=topics["stats"],
        dashboard_sessions_topic=topics["sessions"],
        dashboard_alerts_topic=topics["alerts"],
        dashboard_feedback_topic=topics["feedback"],
        dashboard_telemetry_backfill=SECONDS * CARS,  # read it all, to measure throughput
        dashboard_telemetry_sample_ms=sample_ms,
    )
    view = FleetView()
    feed = KafkaFeed(settings, view)
    began = time.monotonic()
    feed.start()
    try:
        deadline = began + 120
        while feed.consumed < len(records) + len(alerts) + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.monotonic() - began
    finally:
        feed.stop()
    assert feed.consumed == len(records) + len(alerts) + 1
    status = view.status()
    assert status.connected is True
    assert status.skipped == 1  # the "not json" alert
    # One kept sample per car per 10 s of event time, and the latest position is the car's last.
    kept = CARS * SECONDS / (sample_ms / 1000) if sample_ms else len(records)
    assert status.records["telemetry"] == pytest.approx(kept, rel=0.02)
    last = {r["vehicle_id"]: r for r in records}
    snapshot = view.snapshot()
    assert len(snapshot.latest) == CARS
    for vid, sample in snapshot.latest.items():
        assert last[vid]["ts"] - sample["ts"] <= sample_ms
    assert len(snapshot.alerts) == 30
    print(  # noqa: T201 - measured figure for docs/dashboard.md
        f"dashboard feed ({sample_ms} ms sampling): {feed.consumed:,} records in {elapsed:.1f} s "
        f"({feed.consumed / elapsed:,.0f} records/s incl. start-up), kept "
        f"{status.records['telemetry']:,} telemetry samples"
    )
