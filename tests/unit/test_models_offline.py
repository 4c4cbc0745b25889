"""Parquet archive, dataset loading, time split, calibration, replay and the train/backtest CLI."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

from fleetstream.cli import app
from models import workflow
from models.archive import (
    STATS,
    TELEMETRY,
    ParquetArchive,
    TableSpec,
    archive_topics,
    stats_row,
    telemetry_row,
)
from models.dataset import LABEL_COLUMNS, dedupe, iter_records, load_labels, load_telemetry
from models.errors import DataError
from models.feedback import feedback_labels
from models.metrics import ArchiveMetrics
from models.registry import load
from models.replay import replay_records, window_alerts, window_feature_rows
from models.training import Scores, best_threshold, label_windows, split_by_time
from models.workflow import held_out
from processing.detectors import HighConsumption, detect, detect_window
from processing.evaluate import evaluate
from processing.stats import WindowStats, window_stats
from simulator import Fleet, FleetConfig
from simulator import iter_records as simulate
from telemetry.contract import ContractError

from .records import make_ev, make_ice

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


@pytest.mark.parametrize(
    "value", ["12.5", True, [1], {"a": 1}, 12.5], ids=["str", "bool", "list", "dict", "number"]
)
def test_the_other_powertrains_fields_go_to_extra_not_to_typed_columns(
    tmp_path: Path, value: Any
) -> None:
    # v1 checks only the record's own powertrain's fields. As a typed column, an ICE
    # record's "power_kw": "12.5" failed the buffer's Arrow conversion and stopped the
    # archiver at every restart; true was stored as 1.0.
    ice = make_ice(1_767_225_600_000, power_kw=value)
    row = telemetry_row(orjson.dumps(ice))
    assert "power_kw" not in row
    assert orjson.loads(row["extra"]) == {"power_kw": value}
    ev = make_ev(1_767_225_600_000, fuel_rate_lph=value)
    assert orjson.loads(telemetry_row(orjson.dumps(ev))["extra"]) == {"fuel_rate_lph": value}
    archive = ParquetArchive(tmp_path, TELEMETRY)
    archive.add(row)
    archive.add(telemetry_row(orjson.dumps(make_ice(1_767_225_601_000, seq=1))))
    [written] = archive.flush()
    table = pq.read_table(written)
    assert table.column("power_kw").to_pylist() == [None, None]
    assert table.column("fuel_rate_lph").to_pylist() == [0.0, 0.0]


def _raw_row(value: bytes) -> dict[str, Any]:
    """A table spec's row without its checks: what a check that misses something gives."""
    row: dict[str, Any] = orjson.loads(value)
    return row


_UNCHECKED = TableSpec("telemetry", TELEMETRY.schema, "ts", _raw_row)


@pytest.mark.parametrize("batch_rows", [10_000, 2])
def test_a_row_that_does_not_fit_the_columns_is_left_out_logged_and_counted(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    batch_rows: int,
) -> None:
    monkeypatch.setattr("models.archive._BATCH_ROWS", batch_rows)  # the add() path too
    reasons: list[str] = []
    archive = ParquetArchive(tmp_path, _UNCHECKED, on_refused=reasons.append)
    good = [make_ev(1_767_225_600_000 + i * 1000, seq=i) for i in range(3)]
    archive.add(good[0])
    archive.add({**good[1], "speed_kmh": "fast"})
    archive.add(good[2])
    archive.add({**make_ice(1_767_225_600_000), "coolant_temp_c": [1]})  # its partition's only row
    assert archive.buffered == 4 - archive.rows_refused
    written = archive.flush()
    assert len(written) == 1  # the ICE partition had no row left: no empty file
    assert pq.read_table(written[0]).column("seq").to_pylist() == [0, 2]
    assert archive.rows_refused == 2
    assert len(reasons) == 2
    assert all(r.startswith("does_not_fit: ") for r in reasons)
    assert "does not fit the table's columns" in caplog.text
    assert archive.buffered == 0


class _FakeMessage:
    def __init__(self, topic: str, value: bytes) -> None:
        self._topic, self._value = topic, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes:
        return self._value


class _FakeKafka:
    """One topic partition: consumers get the records after the committed offset once."""

    def __init__(self, topic: str, log: list[bytes]) -> None:
        self.topic, self.log, self.committed = topic, log, 0
        self.consumers: list[_FakeConsumer] = []

    def consumer(self, _config: dict[str, Any]) -> _FakeConsumer:
        self.consumers.append(_FakeConsumer(self))
        return self.consumers[-1]


class _FakeConsumer:
    def __init__(self, kafka: _FakeKafka) -> None:
        self.kafka, self.polls, self.read = kafka, 0, kafka.committed

    def subscribe(self, _topics: list[str], on_assign: Any, on_revoke: Any) -> None:
        on_assign(self, [0])

    def consume(self, _n: int, _timeout: float) -> list[_FakeMessage]:
        self.polls += 1
        if self.polls > 1:
            return []
        start, self.read = self.read, len(self.kafka.log)
        return [_FakeMessage(self.kafka.topic, v) for v in self.kafka.log[start:]]

    def commit(self, asynchronous: bool) -> None:
        self.kafka.committed = self.read

    def close(self) -> None:
        pass


def test_an_unfitting_row_never_stops_the_archiver_and_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the conversion error escaped archive_topics before its commit: every
    # restart read the same record, rewrote the same files and stopped again.
    import confluent_kafka  # noqa: PLC0415 - patched for archive_topics' own import

    good = [make_ev(1_767_225_600_000 + i * 1000, seq=i) for i in range(3)]
    log = [orjson.dumps(r) for r in (good[0], {**good[1], "speed_kmh": "x"}, good[2])]
    kafka = _FakeKafka("vehicle-telemetry", log)
    monkeypatch.setattr(confluent_kafka, "Consumer", kafka.consumer)
    reports = []
    for _restart in range(2):
        metrics = ArchiveMetrics()
        reports.append(
            archive_topics(
                {},
                {kafka.topic: _UNCHECKED},
                tmp_path,
                stop=lambda: kafka.consumers[-1].polls >= 2,
                metrics=metrics,
            )
        )
        assert kafka.committed == len(log)
        if _restart == 0:
            skipped = metrics.registry.get_sample_value(
                "fleetstream_archive_skipped_total", {"table": "telemetry"}
            )
            assert skipped == 1
    assert [(r.rows, r.skipped) for r in reports] == [
        ({"telemetry": 2}, 1),
        ({"telemetry": 0}, 0),  # the restart reads nothing again
    ]
    [written] = tmp_path.rglob("*.parquet")
    assert pq.read_table(written).column("seq").to_pylist() == [0, 2]


def test_an_archive_whose_rows_were_all_refused_is_not_due_after_one_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It stayed due with nothing buffered: archive_topics committed every 0.5 s, idle.
    import confluent_kafka  # noqa: PLC0415 - patched for archive_topics' own import

    monkeypatch.setattr("models.archive._BATCH_ROWS", 1)  # refused in add()
    bad = {**make_ev(1_767_225_600_000, seq=0), "speed_kmh": "x"}
    kafka = _FakeKafka("vehicle-telemetry", [orjson.dumps(bad)])
    commits: list[int] = []
    monkeypatch.setattr(confluent_kafka, "Consumer", kafka.consumer)
    monkeypatch.setattr(_FakeConsumer, "commit", lambda self, asynchronous: commits.append(1))
    report = archive_topics(
        {},
        {kafka.topic: _UNCHECKED},
        tmp_path,
        max_age_s=0.0,
        stop=lambda: kafka.consumers[-1].polls >= 6,
    )
    assert report.rows == {"telemetry": 0}
    assert len(commits) == 2  # the flush that took the refusal, and the one at the stop
    assert not list(tmp_path.rglob("*.parquet"))


_GOOD_STATS: dict[str, Any] = {
    "vehicle_id": "car-1", "powertrain": "ev", "window_start": 1_767_225_600_000,
    "window_end": 1_767_225_660_000, "samples": 60, "distance_km": 1.0,
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"window_start": "1767225600000"}, "wrong_type:window_start"),
        ({"samples": "60"}, "wrong_type:samples"),
        ({"samples": 60.5}, "wrong_type:samples"),
        ({"distance_km": "1.0"}, "wrong_type:distance_km"),
        ({"distance_km": True}, "wrong_type:distance_km"),
        # A float64 column holds integers exactly up to 2**53 only; pyarrow refuses more.
        ({"distance_km": 2**53 + 1}, "wrong_type:distance_km"),
        ({"distance_km": -(2**62)}, "wrong_type:distance_km"),
        ({"vehicle_id": 7}, "wrong_type:vehicle_id"),
        ({"window_end": None}, "null:window_end"),
        ({"powertrain": "../x"}, "bad_value:powertrain"),
        ({"window_start": 10**15}, "wrong_type"),  # a year past 9999: no date folder
    ],
)
def test_stats_of_the_wrong_type_are_refused_per_row_and_never_reach_the_buffer(
    tmp_path: Path, change: dict[str, Any], reason: str
) -> None:
    # They used to raise at flush, for the whole buffer, again after every restart.
    archive = ParquetArchive(tmp_path, STATS)
    archive.add(stats_row(orjson.dumps(_GOOD_STATS)))
    with pytest.raises(ContractError) as refused:
        archive.add(stats_row(orjson.dumps({**_GOOD_STATS, **change})))
    assert refused.value.reason == reason
    [written] = archive.flush()
    assert pq.read_table(written).num_rows == 1


def test_stats_with_only_the_key_fields_are_archived(tmp_path: Path) -> None:
    archive = ParquetArchive(tmp_path, STATS)
    keys = ("vehicle_id", "powertrain", "window_start", "window_end")
    archive.add(stats_row(orjson.dumps({k: _GOOD_STATS[k] for k in keys})))
    archive.add(stats_row(orjson.dumps({**_GOOD_STATS, "samples": 61, "unknown": "x"})))
    [written] = archive.flush()
    assert pq.read_table(written).column("samples").to_pylist() == [None, 61]


def test_dedupe_keeps_a_second_run_whose_seq_restarted_at_zero() -> None:
    # Two simulator runs a day apart: seq restarts at 0 in each. Deduping on
    # (vehicle_id, seq) kept only the first run.
    rows = [
        {"vehicle_id": "car-000", "seq": s, "ts": 1_767_225_600_000 + run * DAY_MS + s * 1000}
        for run in (0, 1)
        for s in range(5)
    ]
    duplicate = dict(rows[2])  # a genuine at-least-once duplicate
    no_seq = [{"vehicle_id": "car-001", "seq": None, "ts": 1_767_225_600_000}] * 2
    out = dedupe(pa.Table.from_pylist([*rows, duplicate, *no_seq]))
    assert out.num_rows == len(rows) + 1
    kept = [r["ts"] for r in out.to_pylist() if r["vehicle_id"] == "car-000"]
    assert kept == [r["ts"] for r in rows]  # both runs, ordered by ts


def test_dedupe_warns_about_rows_that_share_a_key_but_differ(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Two simulator runs with other seeds and the same start time share every key: the
    # second run was dropped silently while its labels still applied.
    base = {"vehicle_id": "car-000", "seq": 0, "ts": 1_767_225_600_000, "speed_kmh": 10.0}
    same = [base, dict(base), {**base, "seq": None, "speed_kmh": None}] * 2
    out = dedupe(pa.Table.from_pylist(same))
    assert out.num_rows == 2
    assert "differ" not in caplog.text  # genuine duplicates, nulls included
    other = [{**base, "speed_kmh": 20.0}, {**base, "speed_kmh": 21.0}, {**base, "seq": 1}]
    out = dedupe(pa.Table.from_pylist([*same, *other]))
    assert out.num_rows == 3
    assert "dropped 2 row(s) that share (vehicle_id, seq, ts) with an earlier row" in caplog.text


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


def _driving_window(index: int, consumption: float) -> WindowStats:
    start = 1_767_225_600_000 + index * 60_000
    stats = window_stats("car-1", "ev", start, start + 60_000, [])
    stats["distance_km"] = 1.0
    stats["consumption_wh_per_km"] = consumption
    stats["avg_speed_kmh"] = 60.0
    stats["avg_outside_temp_c"] = 10.0
    return stats


def test_training_features_follow_the_alert_book_as_the_pipeline_does() -> None:
    # Raised on window 7; windows 8-11 (1.3x: not high, not normal) keep the episode
    # active, so the pipeline folds them into no baseline. Training folded them in as if
    # no alert were active: its ratios drifted down from 1.3 while the pipeline scored 1.3.
    values = [150.0] * 5 + [270.0] * 3 + [195.0] * 4
    windows = [_driving_window(i, v) for i, v in enumerate(values)]
    live: list[float] = []
    state: dict[str, Any] = {}
    for stats in windows:
        features = HighConsumption().features(state.setdefault("high_consumption", {}), dict(stats))
        if features is not None:
            live.append(features["consumption_ratio"])
        detect_window(state, dict(stats))
    assert "high_consumption" in state["alerts"]
    rows = window_feature_rows(windows)
    assert [r["consumption_ratio"] for r in rows] == live
    assert [round(r["consumption_ratio"], 6) for r in rows[-4:]] == [1.3] * 4
    assert window_feature_rows(windows, None) == rows


_CUT = 1_767_225_600_000
_KIND = "high_consumption"


def _label(vid: str, start: int, end: int) -> dict[str, Any]:
    return {"vehicle_id": vid, "kind": _KIND, "start_ts": start, "end_ts": end, "magnitude": 1.8}


def _alert(vid: str, ts: int) -> dict[str, Any]:
    return {"vehicle_id": vid, "kind": _KIND, "ts": ts, "status": "raised"}


def test_held_out_scores_an_episode_crossing_the_cut_as_detected() -> None:
    labels = pd.DataFrame(
        [
            # Starts 5 min before the cut, caught 2 min after: held out before as an
            # unmatched alert with its label dropped (a false alarm).
            _label("car-1", _CUT - 300_000, _CUT + 2_100_000),
            # Starts 10 min before the cut, caught 3 min before it, lasts past it.
            _label("car-2", _CUT - 600_000, _CUT + 600_000),
            # Long over before the cut, with its alert: neither is held out.
            _label("car-3", _CUT - 900_000, _CUT - 600_000),
            _label("car-4", _CUT + 600_000, _CUT + 3_000_000),
        ]
    )
    alerts = [
        _alert("car-1", _CUT + 119_999),
        _alert("car-2", _CUT - 180_001),
        _alert("car-3", _CUT - 720_001),
        _alert("car-4", _CUT + 779_999),
    ]
    s = held_out(labels, alerts, _CUT)[_KIND]
    assert (s.labels, s.alerts, s.matched_alerts, s.detected_labels) == (3, 3, 3, 3)
    assert s.f1 == 1.0


def test_held_out_includes_the_first_held_out_windows_alert() -> None:
    # The first held-out window ends at the cut; its alert's ts is the cut - 1. A false
    # alarm there was left out of the held-out scores.
    s = held_out(pd.DataFrame(columns=LABEL_COLUMNS), [_alert("car-1", _CUT - 1)], _CUT)[_KIND]
    assert (s.alerts, s.matched_alerts) == (1, 0)
    assert (
        held_out(pd.DataFrame(columns=LABEL_COLUMNS), [_alert("car-1", _CUT - 2)], _CUT)[
            _KIND
        ].alerts
        == 0
    )


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


def test_train_and_backtest_use_the_pipelines_window_length(
    small_run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Train and backtest replayed 60 s windows whatever the pipeline's setting: a pipeline
    # with FLEETSTREAM_PROCESSING_WINDOW_S=300 scored features of 5 min windows with a
    # model trained on 1 min ones, and feedback labels spanned 3 min instead of 15.
    spans: list[int] = []
    real = feedback_labels

    def spy(records: Any, window_ms: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        spans.append(window_ms)
        return real(records, window_ms)

    monkeypatch.setattr(workflow, "feedback_labels", spy)
    feedback = tmp_path / "feedback.jsonl"
    _feedback_from_labels(small_run["labels"], feedback)
    registry = tmp_path / "registry"
    monkeypatch.setenv("FLEETSTREAM_PROCESSING_WINDOW_S", "300")
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(small_run["data"]), "--labels", str(small_run["labels"]),
         "--feedback", str(feedback), "--out", str(registry)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (folder,) = [p for p in registry.iterdir() if p.is_dir()]
    meta = load(folder).metadata
    assert meta["window_ms"] == 300_000
    assert spans == [300_000]
    backtest = ["backtest", "--model", str(folder), "--data", str(small_run["data"]),
                "--labels", str(small_run["labels"])]  # fmt: skip
    assert CliRunner().invoke(app, backtest).exit_code == 0
    monkeypatch.delenv("FLEETSTREAM_PROCESSING_WINDOW_S")
    refused = CliRunner().invoke(app, backtest)
    assert refused.exit_code == 2
    assert "trained on 300 s windows, not the 60 s windows" in refused.output
    assert CliRunner().invoke(app, [*backtest, "--window-s", "300"]).exit_code == 0


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


def test_backtest_judges_odometers_at_the_pipelines_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One car at 100 km/h whose odometer counts whole kilometres (see processing's
    # FLEETSTREAM_PROCESSING_ODOMETER_RESOLUTION_KM).
    data, labels, alerts = tmp_path / "run.jsonl", tmp_path / "labels.jsonl", tmp_path / "a.jsonl"
    records = [
        make_ev(1_767_225_600_000 + s * 1000, seq=s, state="driving", speed_kmh=100.0,
                odometer_km=float(1000 + s * 100 // 3600))
        for s in range(300)
    ]  # fmt: skip
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    labels.write_text("")

    def backtest(*options: str) -> Result:
        command = ["backtest", "--data", str(data), "--labels", str(labels)]
        return CliRunner().invoke(app, [*command, "--alerts-out", str(alerts), *options])

    def glitches(*options: str) -> int:
        result = backtest(*options)
        assert result.exit_code == 0, result.output
        return sum(orjson.loads(line)["kind"] == "sensor_glitch" for line in alerts.open("rb"))

    assert glitches() > 0
    assert glitches("--odometer-resolution-km", "1") == 0
    monkeypatch.setenv("FLEETSTREAM_PROCESSING_ODOMETER_RESOLUTION_KM", "1.0")
    assert glitches() == 0
    refused = backtest("--odometer-resolution-km", "0")
    assert refused.exit_code == 2
    assert "must be a positive number" in refused.output


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


def _verdict(alert_id: str, verdict: str, ts: int, alert_ts: int, **extra: Any) -> dict[str, Any]:
    return {
        "alert_id": alert_id, "episode_id": alert_id.rsplit("-", 1)[0], "vehicle_id": "car-1",
        "kind": "high_consumption", "alert_ts": alert_ts, "verdict": verdict, "ts": ts,
        "source": "dashboard", **extra,
    }  # fmt: skip


def test_feedback_labels_take_the_latest_verdict_per_alert() -> None:
    records = [
        # An alert's ts is its window's end - 1.
        _verdict("a-raised", "acknowledged", ts=10, alert_ts=599_999),
        _verdict("a-raised", "false_positive", ts=20, alert_ts=599_999),  # changed mind
        _verdict("b-raised", "false_positive", ts=30, alert_ts=899_999),
        _verdict("b-raised", "acknowledged", ts=40, alert_ts=899_999),
        {**_verdict("c-raised", "acknowledged", ts=50, alert_ts=1), "kind": "overheat"},
    ]
    confirmed, rejected = feedback_labels(records, window_ms=60_000)
    assert confirmed[["start_ts", "end_ts"]].values.tolist() == [[720_000, 900_000]]
    assert rejected[["start_ts", "end_ts"]].values.tolist() == [[420_000, 600_000]]
    assert set(confirmed["kind"]) == {"high_consumption"}


def test_feedback_labels_cover_exactly_the_streak_windows_that_raised_the_alert() -> None:
    # Eight consecutive windows; the detector raised on the third high one in a row,
    # window 5, so the alert's ts is that window's end - 1. The label covered four.
    window_ms, t0 = 60_000, 1_767_225_600_000
    frame = pd.DataFrame(
        {
            "vehicle_id": ["car-1"] * 8,
            "window_start": [t0 + i * window_ms for i in range(8)],
            "window_end": [t0 + (i + 1) * window_ms for i in range(8)],
        }
    )
    feedback = [_verdict("e-raised", "acknowledged", ts=1, alert_ts=t0 + 6 * window_ms - 1)]
    confirmed, _ = feedback_labels(feedback, window_ms)
    assert HighConsumption.STREAK == 3
    assert frame.index[label_windows(frame, confirmed)].tolist() == [3, 4, 5]


def test_malformed_feedback_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="unknown verdict"):
        feedback_labels([_verdict("a-raised", "maybe", ts=1, alert_ts=1)], 60_000)
    with pytest.raises(DataError, match="incomplete"):
        feedback_labels([{"alert_id": "a", "ts": 1, "verdict": "acknowledged"}], 60_000)


def _feedback_from_labels(labels: Path, out: Path) -> int:
    """An operator who acknowledged every high-consumption episode once it was raised."""
    rows = [orjson.loads(line) for line in labels.read_bytes().splitlines() if line.strip()]
    feedback = [
        {
            "alert_id": f"{row['vehicle_id']}-{i}-raised",
            "episode_id": f"{row['vehicle_id']}-{i}",
            "vehicle_id": row["vehicle_id"],
            "kind": row["kind"],
            "alert_ts": min(row["start_ts"] + 3 * 60_000, row["end_ts"]),
            "verdict": "acknowledged",
            "ts": row["end_ts"],
            "source": "dashboard",
        }
        for i, row in enumerate(rows)
        if row["kind"] == "high_consumption"
    ]
    out.write_bytes(b"".join(orjson.dumps(f) + b"\n" for f in feedback))
    return len(feedback)


def test_train_learns_from_operator_feedback_alone(small_run: dict[str, Path]) -> None:
    feedback = small_run["data"].parent / "feedback.jsonl"
    acknowledged = _feedback_from_labels(small_run["labels"], feedback)
    assert acknowledged > 3
    registry = small_run["data"].parent / "registry-feedback"
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(small_run["data"]), "--feedback", str(feedback),
         "--out", str(registry)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"feedback: {acknowledged} records" in result.output
    (folder,) = [p for p in registry.iterdir() if p.is_dir()]
    meta = load(folder).metadata
    assert meta["training_data"]["labels"] is None
    assert meta["training_data"]["feedback"]["confirmed_alerts"] == acknowledged
    # Supervised families only run with labels: here the labels came from feedback.
    assert meta["candidates"]["logistic_regression"]["validation"] is not None
    # Episodes made from reviewed alerts would score the rules against their own alerts.
    assert "test_events" not in meta
    assert "only operators' feedback was given" in (folder / "report.md").read_text()


def test_feedback_labels_windows_and_never_counts_episodes_twice(
    small_run: dict[str, Path], tmp_path: Path
) -> None:
    # Every acknowledged alert's span was appended to the label file's episodes: each
    # reviewed episode was a second label in the event-level scores.
    feedback = tmp_path / "feedback.jsonl"
    _feedback_from_labels(small_run["labels"], feedback)
    outcome = workflow.run_train(
        str(small_run["data"]),
        small_run["labels"],
        tmp_path / "registry",
        show_progress=False,
        feedback=[orjson.loads(line) for line in feedback.read_bytes().splitlines()],
    )
    meta = load(outcome.folder).metadata
    labels = load_labels(small_run["labels"])
    expected = held_out(labels, [], meta["training_data"]["test_from"])
    for who in ("model", "rules"):
        events = meta["test_events"][who]
        assert events["overall"]["labels"] == expected["overall"].labels
        assert events["high_consumption"]["labels"] == expected["high_consumption"].labels
    assert expected["high_consumption"].labels > 0
    assert "only operators' feedback" not in (outcome.folder / "report.md").read_text()


def test_a_false_positive_verdict_overrides_a_label(small_run: dict[str, Path]) -> None:
    feedback = small_run["data"].parent / "feedback-fp.jsonl"
    _feedback_from_labels(small_run["labels"], feedback)
    rows = [orjson.loads(line) for line in feedback.read_bytes().splitlines()]
    wrong = [{**r, "verdict": "false_positive", "ts": r["ts"] + 1} for r in rows[:2]]
    feedback.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows + wrong))
    registry = small_run["data"].parent / "registry-fp"
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(small_run["data"]), "--labels", str(small_run["labels"]),
         "--feedback", str(feedback), "--out", str(registry)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (folder,) = [p for p in registry.iterdir() if p.is_dir()]
    info = load(folder).metadata["training_data"]["feedback"]
    assert info["false_positive_alerts"] == 2
    assert info["windows_relabelled_normal"] > 0


def test_feedback_from_a_file_and_a_topic_at_once_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(tmp_path), "--feedback", str(tmp_path / "f.jsonl"),
         "--feedback-topic", "vehicle-alerts.feedback"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "not both" in result.output


def test_archive_reports_an_unreachable_kafka_in_its_metrics(tmp_path: Path) -> None:
    """No broker at all: librdkafka reports it only to error_cb, and the metrics must say so."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics = ArchiveMetrics()
    deadline = time.monotonic() + 20

    def errors() -> float:
        return sum(
            s.value
            for family in metrics.kafka_errors.collect()
            for s in family.samples
            if s.name.endswith("_total")
        )

    report = archive_topics(
        {"bootstrap.servers": f"127.0.0.1:{port}"},
        {"vehicle-telemetry": TELEMETRY},
        tmp_path,
        stop=lambda: errors() > 0 or time.monotonic() > deadline,
        metrics=metrics,
    )
    assert errors() > 0, "no Kafka error counted while no broker answered"
    assert metrics.registry.get_sample_value("fleetstream_archive_kafka_up") == 0
    assert report.rows == {"telemetry": 0}
    assert not list(tmp_path.iterdir())


def test_iter_records_matches_pyarrow_values_types_and_nulls() -> None:
    table = pa.table(
        {
            "vehicle_id": pa.array(["a", None, "c", "d"]),
            "seq": pa.array([1, None, 2**53 + 1, -3], pa.int64()),
            "schema": pa.array([1, 1, 1, 1], pa.int16()),
            "speed_kmh": pa.array([0.1, None, 1e300, -0.0]),
            "power_kw": pa.array([1.5, 2.25, 3.0, 0.0]),
            "fuel_rate_lph": pa.array([None, None, None, None], pa.float64()),
        }
    )
    # Small batches: a batch without nulls in a column takes the other branch.
    got = list(iter_records(table, batch_rows=2))
    expected = table.to_pylist()
    assert got == expected
    for row, want in zip(got, expected, strict=True):
        assert list(row) == list(want)
        assert [type(v) for v in row.values()] == [type(v) for v in want.values()]
    assert got[2]["seq"] == 2**53 + 1  # no detour through a float
