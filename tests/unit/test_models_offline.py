"""Parquet archive, dataset loading, time split, calibration, replay and the train/backtest CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fleetstream.cli import app
from models.archive import STATS, TELEMETRY, ParquetArchive, stats_row, telemetry_row
from models.dataset import iter_records, load_telemetry
from models.errors import DataError
from models.registry import load
from models.replay import replay_records, window_alerts, window_feature_rows
from models.training import Scores, best_threshold, label_windows, split_by_time
from processing.detectors import detect, detect_window
from processing.evaluate import evaluate
from simulator import Fleet, FleetConfig
from simulator import iter_records as simulate
from telemetry.contract import ContractError

pytestmark = pytest.mark.unit

DAY_MS = 86_400_000


def _records(vehicles: int = 3, hours: float = 30, seed: int = 5) -> list[dict[str, Any]]:
    config = FleetConfig(vehicles=vehicles, duration_s=hours * 3600, rate_hz=0.1, seed=seed)
    return list(simulate(config))


def test_archive_partitions_by_date_and_powertrain_with_typed_columns(tmp_path: Path) -> None:
    records = _records()
    archive = ParquetArchive(tmp_path, TELEMETRY, max_rows=10**9)
    for r in records:
        archive.add(telemetry_row(orjson.dumps(r)))
    files = archive.flush()
    days = {r["ts"] // DAY_MS for r in records}
    powertrains = {r["powertrain"] for r in records}
    assert len(files) == len(days) * len(powertrains)  # one file per partition, not per batch
    assert all(f.parent.name.startswith("powertrain=") for f in files)
    assert all(f.parent.parent.name.startswith("date=2026-01-0") for f in files)
    schema = pq.read_schema(files[0])
    assert schema.field("ts").type == pa.int64()
    assert schema.field("speed_kmh").type == pa.float64()
    assert schema.field("state").type == pa.string()
    assert not list(tmp_path.rglob(".*.tmp"))


def test_archive_round_trip_keeps_values_and_unknown_fields(tmp_path: Path) -> None:
    records = _records(hours=2)
    archive = ParquetArchive(tmp_path, TELEMETRY, max_rows=10**9)
    archive.add(telemetry_row(orjson.dumps({**records[0], "firmware": "2026.4"})))
    for r in records[1:]:
        archive.add(telemetry_row(orjson.dumps(r)))
    archive.flush()
    table = pq.read_table(tmp_path / "telemetry", partitioning="hive")
    assert table.num_rows == len(records)
    extras = [e for e in table.column("extra").to_pylist() if e is not None]
    assert [orjson.loads(e) for e in extras] == [{"firmware": "2026.4"}]
    loaded = list(iter_records(load_telemetry(str(tmp_path / "telemetry"))))
    by_key = {(r["vehicle_id"], r["seq"]): r for r in loaded}
    for original in records:
        row = by_key[(original["vehicle_id"], original["seq"])]
        assert {k: row[k] for k in original} == original


def test_archive_writes_when_size_or_age_says_so(tmp_path: Path) -> None:
    now = [0.0]
    archive = ParquetArchive(tmp_path, TELEMETRY, max_rows=100, max_age_s=60, clock=lambda: now[0])
    records = _records(hours=1)
    assert not archive.due()
    archive.add(telemetry_row(orjson.dumps(records[0])))
    assert not archive.due()
    now[0] = 61.0
    assert archive.due()
    archive.flush()
    for r in records[1:101]:
        archive.add(telemetry_row(orjson.dumps(r)))
    assert archive.due()


def test_invalid_values_are_refused_with_the_contract_reason() -> None:
    with pytest.raises(ContractError, match="speed_kmh"):
        telemetry_row(orjson.dumps({**_records(hours=0.01)[0], "speed_kmh": -5}))
    with pytest.raises(ContractError):
        stats_row(b'{"vehicle_id": "a"}')
    assert STATS.schema.field("window_start").nullable is False


def test_load_dedupes_repeated_records_across_files(tmp_path: Path) -> None:
    records = _records(hours=3)
    for chunk in (records, records[: len(records) // 2]):  # a restart rewrote half
        archive = ParquetArchive(tmp_path, TELEMETRY)
        for r in chunk:
            archive.add(telemetry_row(orjson.dumps(r)))
        archive.flush()
    raw = pq.read_table(tmp_path / "telemetry", partitioning="hive").num_rows
    table = load_telemetry(str(tmp_path / "telemetry/**/*.parquet"))
    assert raw == len(records) + len(records) // 2
    assert table.num_rows == len(records)
    ts = table.column("ts").to_pylist()
    assert ts == sorted(ts)


def test_load_reads_simulator_json_lines_like_parquet(tmp_path: Path) -> None:
    records = _records(hours=1)
    path = tmp_path / "run.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    rows = list(iter_records(load_telemetry(str(path))))
    assert len(rows) == len(records)
    assert rows[0]["ts"] == records[0]["ts"]


def test_load_without_files_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no \.parquet or \.jsonl files"):
        load_telemetry(str(tmp_path / "nothing-*.parquet"))


def test_time_split_is_ordered_and_disjoint() -> None:
    ends = pd.Series(np.arange(0, 1000, 1) * 60_000)
    split = split_by_time(ends)
    assert not (split.train & split.validation).any()
    assert not (split.validation & split.test).any()
    assert (split.train | split.validation | split.test).all()
    assert ends[split.train].max() < ends[split.validation].min()
    assert ends[split.validation].max() < ends[split.test].min()


def test_windows_overlapping_a_consumption_label_are_positive() -> None:
    frame = pd.DataFrame(
        {
            "vehicle_id": ["a", "a", "a", "b"],
            "window_start": [0, 60_000, 120_000, 60_000],
            "window_end": [60_000, 120_000, 180_000, 120_000],
        }
    )
    labels = pd.DataFrame(
        [
            {"vehicle_id": "a", "kind": "high_consumption", "start_ts": 90_000, "end_ts": 130_000},
            {"vehicle_id": "b", "kind": "tire_leak", "start_ts": 0, "end_ts": 10**9},
        ]
    )
    assert label_windows(frame, labels).tolist() == [False, True, True, False]


def test_threshold_calibration_maximises_f1() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    actual = np.array([False, False, True, False, True, True])
    threshold = best_threshold(scores, actual)
    best = Scores.of(scores >= threshold, actual).f1
    for t in scores:
        assert Scores.of(scores >= t, actual).f1 <= best
    with pytest.raises(DataError):
        best_threshold(scores, np.zeros(6, dtype=bool))


def test_replay_gives_the_pipeline_functions_alerts_and_features() -> None:
    fleet = Fleet(FleetConfig(vehicles=4, duration_s=86400, rate_hz=0.1, seed=3, anomaly_rate=3))
    records = [r for _ in range(8640) for r in fleet.tick()]
    replayed = replay_records(records)
    # The per-record rules, run directly, give the same alerts.
    state: dict[str, dict[str, Any]] = {}
    direct = [a for r in records for a in detect(state.setdefault(r["vehicle_id"], {}), r)]
    assert replayed.record_alerts == direct
    assert replayed.records == len(records)
    assert len(replayed.windows) == len({(r["vehicle_id"], r["ts"] // 60_000) for r in records})
    # Rule-only window alerts equal detect_window over the same windows.
    memory: dict[str, dict[str, Any]] = {}
    expected = [
        a
        for w in replayed.windows
        for a in detect_window(memory.setdefault(w["vehicle_id"], {}), dict(w))
    ]
    assert window_alerts(replayed.windows, None) == expected
    rows = window_feature_rows(replayed.windows)
    assert rows
    assert all(r["consumption_ratio"] > 0 for r in rows)
    scores = evaluate([dict(lab) for lab in fleet.labels()], replayed.record_alerts)
    assert scores["sensor_glitch"].recall > 0.5


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("train")
    data, labels = folder / "run.jsonl", folder / "labels.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "simulate", "--vehicles", "6", "--duration", str(3 * 86400), "--rate", "0.1",
            "--seed", "8", "--anomaly-rate", "4", "--output", str(data), "--labels", str(labels),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"data": data, "labels": labels, "registry": folder / "registry"}


def test_train_cli_saves_a_loadable_artifact_with_metadata_and_report(
    small_run: dict[str, Path],
) -> None:
    registry = small_run["registry"]
    result = CliRunner().invoke(
        app,
        [
            "train", "--data", str(small_run["data"]), "--labels", str(small_run["labels"]),
            "--out", str(registry),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "held-out F1" in result.output
    (folder,) = [p for p in registry.iterdir() if p.is_dir()]
    model = load(folder)
    meta = model.metadata
    assert meta["family"] in {"isolation_forest", "hist_gradient_boosting", "logistic_regression"}
    assert set(meta["candidates"]) >= {"isolation_forest", "hist_gradient_boosting"}
    data = meta["training_data"]
    assert data["telemetry_rows"] == 6 * 3 * 8640
    assert data["first_ts"] < data["validation_from"] < data["test_from"] < data["last_ts"]
    for key in ("version", "created_at", "library_versions", "features", "threshold"):
        assert key in meta
    assert meta["candidates"][meta["family"]]["validation"]["f1"] == max(
        c["validation"]["f1"] for c in meta["candidates"].values()
    )
    report = (folder / "report.md").read_text()
    assert "held-out" in report
    for png in ("scores.png", "precision_recall.png", "per_kind_recall.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"
        assert png in report


def test_backtest_cli_prints_evaluate_metrics(small_run: dict[str, Path], tmp_path: Path) -> None:
    alerts = tmp_path / "alerts.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "backtest", "--data", str(small_run["data"]), "--labels", str(small_run["labels"]),
            "--alerts-out", str(alerts),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = result.stdout.strip().splitlines()
    assert table[0].split()[:3] == ["kind", "labels", "alerts"]
    assert table[-1].startswith("overall")
    written = [orjson.loads(line) for line in alerts.read_bytes().splitlines()]
    assert int(table[-1].split()[2]) == sum(1 for a in written if a["status"] == "raised")


def test_train_and_backtest_fail_clearly_on_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "none.parquet")])
    assert result.exit_code == 2
    assert "no .parquet or .jsonl files" in result.output
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metadata.json").write_text("{}")
    labels = tmp_path / "l.jsonl"
    labels.write_text("")
    result = runner.invoke(
        app,
        ["backtest", "--model", str(tmp_path / "broken"), "--data", "x", "--labels", str(labels)],
    )
    assert result.exit_code == 2
    assert "cannot read model artifact" in result.output
