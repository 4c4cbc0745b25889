"""Processing under faults on the real Kafka (issue 9).

One seeded fleet is processed cleanly once (module fixture); the fault cases process the
same records and must produce exactly the clean run's vehicle stats and alerts.

Rows for processing count windows, not messages: ``sent`` = stats windows of the clean
run, ``in_kafka`` = windows the faulty run emitted identically, ``lost`` = clean windows
missing or different, ``duplicates`` = windows emitted twice plus repeated alert ids.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.harness import (
    FaultRow,
    KafkaRecord,
    ProcessingRun,
    as_rows,
    create_topic,
    produce,
    read_topic,
    simulate,
)
from fleetstream import infra
from simulator import FleetConfig
from tests.faults._fuzz import bad_payloads
from tests.faults._scale import Scale

pytestmark = [pytest.mark.faults, pytest.mark.timeout(1800)]


@dataclass(frozen=True)
class CleanRun:
    """The input records and the outputs of an undisturbed processing run."""

    prefix: str
    records: list[dict[str, Any]]
    stats: list[bytes]
    alert_ids: list[str]
    seconds: float


def _stats(bootstrap: str, run: ProcessingRun, expect: int = 1) -> list[KafkaRecord]:
    return read_topic(bootstrap, run.topics["stats"], expect=expect, timeout_s=300, settle_s=5)


def _alert_ids(bootstrap: str, run: ProcessingRun) -> list[str]:
    alerts = read_topic(bootstrap, run.topics["alerts"], expect=1, timeout_s=60)
    return [orjson.loads(r.value)["alert_id"] for r in alerts]


@pytest.fixture(scope="module")
def clean_run(
    brokers: infra.InfraSettings, tmp_path_factory: pytest.TempPathFactory, scale: Scale
) -> CleanRun:
    """A seeded fleet (10 cars, 1 Hz, anomalies) written to Kafka and processed once."""
    began = time.monotonic()
    config = FleetConfig(
        vehicles=10,
        duration_s=round(scale.processing_hours * 3600),
        rate_hz=1.0,
        seed=31,
        anomaly_rate=6.0,
    )
    records, _ = simulate(config)
    prefix = f"pf{uuid.uuid4().hex[:10]}"
    run = ProcessingRun(
        brokers.kafka_bootstrap, prefix, tmp_path_factory.mktemp("clean"), group=f"{prefix}-clean"
    )
    create_topic(brokers.kafka_bootstrap, run.topics["input"])
    produce(brokers.kafka_bootstrap, run.topics["input"], as_rows(records))
    run.start()
    run.wait_consumed(len(records), timeout_s=900)
    assert run.stop() == 0, run.log()
    assert run.crashes() == 0, run.log()
    stats = sorted(r.value for r in _stats(brokers.kafka_bootstrap, run))
    assert len(stats) > 100
    return CleanRun(
        prefix,
        records,
        stats,
        _alert_ids(brokers.kafka_bootstrap, run),
        time.monotonic() - began,
    )


def _compare(
    case: str, scale: Scale, clean: CleanRun, stats: list[bytes], alert_ids: list[str]
) -> FaultRow:
    def window(value: bytes) -> tuple[str, int]:
        doc = orjson.loads(value)
        return doc["vehicle_id"], doc["window_start"]

    expected = Counter(clean.stats)
    got = Counter(stats)
    windows = Counter(window(v) for v in stats)
    return FaultRow(
        case=case,
        scale=scale.name,
        sent=len(clean.stats),
        in_kafka=sum((expected & got).values()),
        lost=sum((expected - got).values()),
        duplicates=sum(n - 1 for n in windows.values())
        + sum(n - 1 for n in Counter(alert_ids).values()),
        quarantined=0,
        crashes=0,
        unexpected=sum((got - expected).values()),
    )


def test_processing_kill9_mid_window_matches_a_clean_run(
    brokers: infra.InfraSettings,
    tmp_path: Path,
    clean_run: CleanRun,
    scale: Scale,
    rows_file: Path,
) -> None:
    began = time.monotonic()
    records = clean_run.records
    crashy = ProcessingRun(
        brokers.kafka_bootstrap, clean_run.prefix, tmp_path, group=f"{clean_run.prefix}-crashy"
    )
    crashy.start()
    # Records are still flowing here, so every vehicle has a window open (not yet emitted).
    crashy.wait_records_in(len(records) // 3, timeout_s=600)
    read_at_kill = crashy.records_in()
    crashy.kill9()
    crashy.start()
    crashy.wait_records_in(1, timeout_s=120)  # metrics restart at 0 after the crash
    # The restarted process resumes from its last committed checkpoint; wait until it caught up.
    stats = sorted(
        r.value for r in _stats(brokers.kafka_bootstrap, crashy, expect=len(clean_run.stats))
    )
    exit_code = crashy.stop()
    alert_ids = _alert_ids(brokers.kafka_bootstrap, crashy)
    row = _compare("processing_kill9_mid_window", scale, clean_run, stats, alert_ids)
    row.crashes = crashy.crashes()
    row.duration_s = time.monotonic() - began + clean_run.seconds
    row.notes = {
        "input_records": len(records),
        "read_at_kill": read_at_kill,
        "alerts": len(alert_ids),
        "clean_alerts": len(clean_run.alert_ids),
    }
    with row.checked(rows_file):
        # The kill landed mid-stream: with every record read first it tested no recovery.
        assert 0 < read_at_kill < len(records), (read_at_kill, len(records))
        assert exit_code == 0, crashy.log()
        assert row.crashes == 0, crashy.log()
        assert row.lost == 0
        assert row.unexpected == 0
        assert row.duplicates == 0, "a window or an alert id was emitted twice"
        assert stats == clean_run.stats
        assert sorted(alert_ids) == sorted(clean_run.alert_ids)
        assert clean_run.alert_ids, "the seeded anomalies raised no alert: nothing compared"


def test_processing_quarantines_fuzz_from_a_misbehaving_producer(
    brokers: infra.InfraSettings,
    tmp_path: Path,
    clean_run: CleanRun,
    scale: Scale,
    rows_file: Path,
) -> None:
    """The same fuzz written straight to processing's input topic, bypassing ingest."""
    began = time.monotonic()
    valid_rows = as_rows(clean_run.records)
    bad = bad_payloads(
        scale.processing_fuzz_bad,
        [v for _, v, _ in valid_rows[:500]],
        seed=19,
        require_seq=False,  # processing accepts records without seq (non-v1 adapters)
    )
    rng = random.Random(5)
    positions = sorted(rng.randrange(len(valid_rows)) for _ in bad)
    rows: list[tuple[bytes | None, bytes, int]] = []
    cursor = 0
    for position, b in zip(positions, bad, strict=True):
        rows.extend(valid_rows[cursor:position])
        cursor = position
        key, _, ts = valid_rows[position]
        # Same key and timestamp as its neighbour: same partition, same event-time clock.
        rows.append((key, b.payload, ts))
    rows.extend(valid_rows[cursor:])
    prefix = f"pz{uuid.uuid4().hex[:10]}"
    run = ProcessingRun(brokers.kafka_bootstrap, prefix, tmp_path)
    create_topic(brokers.kafka_bootstrap, run.topics["input"])
    produce(brokers.kafka_bootstrap, run.topics["input"], rows)
    run.start()
    run.wait_consumed(len(rows), timeout_s=900)
    alive = run.proc is not None and run.proc.poll() is None
    exit_code = run.stop()
    stats = sorted(r.value for r in _stats(brokers.kafka_bootstrap, run))
    quarantine = read_topic(
        brokers.kafka_bootstrap, run.topics["quarantine"], expect=len(bad), timeout_s=120
    )
    alert_ids = _alert_ids(brokers.kafka_bootstrap, run)
    row = _compare("processing_fuzz", scale, clean_run, stats, alert_ids)
    row.quarantined = len(quarantine)
    row.crashes = run.crashes()
    row.duration_s = time.monotonic() - began
    row.notes = {
        "bad": len(bad),
        "input_records": len(rows),
        "reasons": dict(Counter(b.reason.split(":")[0] for b in bad)),
    }
    with row.checked(rows_file):
        assert alive, run.log()
        assert exit_code == 0, run.log()
        assert row.crashes == 0, run.log()
        # Valid records give exactly the clean run's stats: the bad ones disturbed nothing.
        assert row.lost == 0
        assert row.unexpected == 0
        assert row.duplicates == 0
        assert sorted(alert_ids) == sorted(clean_run.alert_ids)
        got = Counter((r.value, r.headers.get("reason", b"").decode()) for r in quarantine)
        expected = Counter((b.payload, b.reason) for b in bad)
        assert got == expected, (len(got - expected), len(expected - got))
        assert all(r.headers.get("detail") for r in quarantine)
