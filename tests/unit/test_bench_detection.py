"""The integration test's detection evaluation, computed offline (bench.detection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.detection import integration_fleet, main, offline_detection
from bench.harness import simulate
from models.registry import current_version
from models.replay import replay_records, window_alerts
from processing.detectors import KINDS
from processing.evaluate import evaluate
from simulator import FleetConfig

pytestmark = pytest.mark.unit


def test_integration_fleet_is_the_tests_fleet() -> None:
    # tests/integration/test_processing.py: 20 cars, one day at 0.2 Hz, 5 per vehicle-day.
    config = integration_fleet(7)
    assert (config.vehicles, config.duration_s, config.rate_hz) == (20, 86400, 0.2)
    assert (config.seed, config.anomaly_rate) == (7, 5.0)


def test_offline_detection_scores_the_replayed_alerts_against_the_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = FleetConfig(vehicles=4, duration_s=6 * 3600, rate_hz=0.2, seed=3, anomaly_rate=8)
    records, labels = simulate(config)
    replayed = replay_records(records)
    expected = evaluate(labels, replayed.record_alerts + window_alerts(replayed.windows, None))
    assert offline_detection(config, rules_only=True) == expected
    with_model = offline_detection(config, tmp_path / "registry")
    assert current_version(tmp_path / "registry") is not None
    assert set(with_model) == {*KINDS, "overall"}
    assert with_model["overall"].labels == len(labels) > 0
    main(["--rules", "3"])
    assert capsys.readouterr().out.startswith("seed 3, rules only\nkind ")
