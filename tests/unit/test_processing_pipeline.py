"""The processing pipeline without brokers: ``parse``, then every branch via ``sdf.test()``.

``define_pipeline`` is built on a real Quix Streams ``Application`` whose broker address
points nowhere; the input ``Topic`` is made by hand (``app.topic()`` would ask a broker for
its configuration), changelog topics are off, and the state stores (RocksDB in a temporary
directory) are assigned to partition 0 by hand, which is what a consumer rebalance does.
Messages are then pushed one at a time with ``StreamingDataFrame.test()``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import ValidationError
from quixstreams import Application
from quixstreams.models import TopicConfig
from quixstreams.models.messagecontext import MessageContext
from quixstreams.models.topics import Topic
from sklearn.ensemble import IsolationForest

from models.registry import SHADOW, LoadedModel, load, promote, save
from processing import ProcessingSettings
from processing._main import pipeline_config
from processing.detectors import SensorGlitch, detect, detect_window
from processing.metrics import ProcessingMetrics
from processing.outputs import record_of
from processing.pipeline import PipelineConfig, define_pipeline, parse
from processing.sessions import track
from processing.statecache import DecodedCache
from processing.stats import to_sample, window_stats
from processing.windows import spread_offset
from simulator import Fleet, FleetConfig
from telemetry.contract import QUARANTINE_MAX_BYTES, encode

from .records import make_ev

pytestmark = pytest.mark.unit

T0 = 1_767_225_600_000  # a multiple of the window
WINDOW_MS = 60_000
GRACE_MS = 10_000
MAX_FUTURE_MS = 300_000
DAY_MS = 86_400_000


def ev(s: int, **fields: Any) -> dict[str, Any]:
    """A valid EV record ``s`` seconds after T0."""
    return make_ev(T0 + s * 1000, **{"seq": s, **fields})


# ---------------------------------------------------------------------------------- parse


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not_json"),
        (b"", "not_json"),
        (b"\xff\xfe\xfd", "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (b'{"schema": 2}', "unknown_schema:schema"),
        (b'{"vehicle_id": "car-1"}', "missing:schema"),
        (orjson.dumps({**ev(0), "schema": 2}), "unknown_schema:schema"),
        (orjson.dumps({**ev(0), "speed_kmh": 1001}), "out_of_range:speed_kmh"),
        (orjson.dumps({**ev(0), "speed_kmh": True}), "wrong_type:speed_kmh"),
        (orjson.dumps({**ev(0), "state": "flying"}), "bad_value:state"),
        (orjson.dumps({**ev(0), "vehicle_id": None}), "null:vehicle_id"),
        (orjson.dumps({k: v for k, v in ev(0).items() if k != "power_kw"}), "missing:power_kw"),
        (b"{" + b'"pad": "' + b"x" * 70_000 + b'"}', "oversize"),
    ],
)
def test_parse_marks_invalid_payloads(payload: bytes, reason: str) -> None:
    result = parse(payload)
    assert result["_invalid"] == reason
    assert result["_raw"] == payload
    assert isinstance(result["_detail"], str)
    assert result["_detail"].startswith(reason.split(":", maxsplit=1)[0])


def test_parse_returns_the_record_as_a_dict() -> None:
    record = {**ev(7), "extra_field": "kept"}
    result = parse(orjson.dumps(record))
    assert type(result) is dict
    assert "_invalid" not in result
    assert result == record


def test_parse_accepts_a_record_without_seq() -> None:
    # Sources without sequence numbers (the tesla adapter) send seq: null.
    record = {**ev(7), "seq": None, "odometer_km": None}
    assert parse(orjson.dumps(record)) == record


def test_encode_is_compact_json() -> None:
    assert encode({"a": 1, "b": [None, 1.5]}) == b'{"a":1,"b":[null,1.5]}'


# ----------------------------------------------------------------------- the whole pipeline


class Harness:
    """``define_pipeline`` on a broker-less Application; ``send`` runs one message through."""

    def __init__(
        self,
        state_dir: Path,
        stats_spread_ms: int = 0,
        wall_clock: Callable[[], float] = time.time,
        model_dir: Path | None = None,
        odometer_resolution_km: float = SensorGlitch.ODOMETER_RESOLUTION_KM,
        max_future_ms: int = MAX_FUTURE_MS,
        window_ms: int = WINDOW_MS,
    ) -> None:
        self.metrics = ProcessingMetrics()
        self.app = Application(
            broker_address="127.0.0.1:1",  # never contacted: no topic is created or consumed
            consumer_group="unit",
            state_dir=state_dir,
            use_changelog_topics=False,
            loglevel=None,
        )
        self.topic = Topic("vehicle-telemetry", value_deserializer="bytes")
        self.topic.broker_config = TopicConfig(
            num_partitions=1,
            replication_factor=1,
            extra_config={"retention.ms": "-1", "retention.bytes": "-1"},
        )
        self.sdf = self.app.dataframe(self.topic)
        config = PipelineConfig(
            window_ms=window_ms,
            grace_ms=GRACE_MS,
            metrics=self.metrics,
            stats_spread_ms=stats_spread_ms,
            max_future_ms=max_future_ms,
            wall_clock=wall_clock,
            model_dir=model_dir,
            odometer_resolution_km=odometer_resolution_km,
        )
        pipeline = define_pipeline(self.sdf, config)
        # Each output as (role, its Kafka value), as the topic's serializer sees it.
        pipeline.outputs.apply(lambda output: (output[0], record_of(output)))
        self.app._state_manager.on_partition_assign(self.sdf.stream_id, 0, {})
        self.app._processing_context.init_checkpoint()  # type: ignore[no-untyped-call]
        self.offset = 0
        self.out: dict[str, list[Any]] = defaultdict(list)

    def send(self, value: bytes | dict[str, Any], key: str = "car-1") -> dict[str, list[Any]]:
        """Process one message; returns (and records) what each branch emitted."""
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        ts = orjson.loads(raw)["ts"] if not isinstance(value, bytes) else 0
        ctx = MessageContext(self.topic.name, 0, self.offset, len(raw))
        self.offset += 1
        emitted: dict[str, list[Any]] = defaultdict(list)
        for (name, result), *_ in self.sdf.test(raw, key=key.encode(), timestamp=ts, ctx=ctx):
            emitted[name].append(result)
            self.out[name].append(result)
        return emitted

    def reassign(self) -> None:
        """Revoke and assign the partition again, dropping what was not committed."""
        manager = self.app._state_manager
        manager.on_partition_revoke(self.sdf.stream_id, 0)
        manager.on_partition_assign(self.sdf.stream_id, 0, {})
        self.app._processing_context.init_checkpoint()  # type: ignore[no-untyped-call]

    def commit(self) -> None:
        """Flush the state written so far, as a checkpoint's commit does."""
        checkpoint = self.app._processing_context._checkpoint
        assert checkpoint is not None
        for transaction in checkpoint._store_transactions.values():
            transaction.prepare(processed_offsets={})
            transaction.flush()
        self.app._processing_context.init_checkpoint()  # type: ignore[no-untyped-call]

    def metric(self, name: str, **labels: str) -> float:
        """The current value of a processing metric."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        """Close the state stores."""
        self.app._state_manager.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path / "state")
    yield h
    h.close()


def test_invalid_payloads_go_to_quarantine_only(harness: Harness) -> None:
    for payload in (b"not json", b'{"schema": 2}', orjson.dumps({**ev(0), "speed_kmh": -5})):
        emitted = harness.send(payload)
        assert dict(emitted) == {"quarantine": [payload]}
    assert harness.metric("fleetstream_processing_records_in_total") == 3
    quarantined = "fleetstream_processing_quarantined_total"
    assert harness.metric(quarantined, reason="not_json") == 1
    assert harness.metric(quarantined, reason="unknown_schema") == 1
    assert harness.metric(quarantined, reason="out_of_range") == 1


def car_sequence() -> list[dict[str, Any]]:
    """180 s of one EV: driving at 36 km/h until 90 s, then parked; a speed glitch at 30 s."""
    records = []
    for s in range(180):
        driving = s < 90
        records.append(
            ev(
                s,
                state="driving" if driving else "parked",
                speed_kmh=400.0 if s == 30 else (36.0 if driving else 0.0),
                odometer_km=round(1000.0 + 0.01 * min(s, 89), 4),
                power_kw=12.0 if driving else 0.3,
                battery_level_pct=round(80.0 - 0.01 * min(s, 89), 4),
            )
        )
    return records


def test_sessions_alerts_and_windows_match_the_pure_functions(harness: Harness) -> None:
    records = car_sequence()
    stream = list(records)
    stream.insert(26, records[20])  # a redelivered duplicate, six messages late
    for record in stream:
        harness.send(record)

    # Sessions and alerts: exactly what the pure functions give for the car's records.
    car: dict[str, Any] = {}
    sessions: list[Any] = []
    alerts: list[Any] = []
    for record in stream:
        alerts += detect(car, record)
        sessions += track(car, record)
    assert [s["kind"] for s in sessions] == ["drive"]
    assert harness.out["sessions"] == sessions
    assert sessions[0]["distance_km"] == pytest.approx(0.89)
    assert [(a["kind"], a["status"], (a["ts"] - T0) // 1000) for a in alerts] == [
        ("sensor_glitch", "raised", 30),
        ("sensor_glitch", "cleared", 100),
    ]
    assert harness.out["alerts"] == alerts

    # Windows [0, 60) s and [60, 120) s have closed (partition time 179 s >= 120 + 10 s);
    # [120, 180) s has not.
    stats = harness.out["stats"]
    assert [(w["window_start"] - T0, w["window_end"] - T0) for w in stats] == [
        (0, WINDOW_MS),
        (WINDOW_MS, 2 * WINDOW_MS),
    ]
    for window in stats:
        start = window["window_start"]
        samples = [to_sample(r) for r in stream if start <= r["ts"] < start + WINDOW_MS]
        assert window == window_stats("car-1", "ev", start, start + WINDOW_MS, samples)
    assert stats[0]["duplicates"] == 1
    assert stats[0]["samples"] == 60
    assert stats[1]["duplicates"] == 0
    assert harness.out["window_alerts"] == []
    assert harness.out["quarantine"] == []
    assert harness.metric("fleetstream_processing_windows_total") == 2
    assert harness.metric("fleetstream_processing_records_in_total") == len(stream)
    assert harness.metric("fleetstream_processing_alerts_total", kind="sensor_glitch",
                          status="raised") == 1  # fmt: skip


@pytest.mark.parametrize(("resolution", "glitches"), [(None, True), (1.0, False)])
def test_the_sensor_glitch_rule_uses_the_configured_odometer_resolution(
    tmp_path: Path, resolution: float | None, glitches: bool
) -> None:
    # A car at 100 km/h whose odometer counts whole kilometres: each tick is a glitch
    # at the default 0.1 km step, normal driving at 1.0.
    if resolution is None:
        harness = Harness(tmp_path / "state")
    else:
        harness = Harness(tmp_path / "state", odometer_resolution_km=resolution)
    try:
        for s in range(120):
            harness.send(ev(s, state="driving", speed_kmh=100.0,
                            odometer_km=float(1000 + s * 100 // 3600)))  # fmt: skip
        kinds = {a["kind"] for a in harness.out["alerts"]}
        assert ("sensor_glitch" in kinds) is glitches
    finally:
        harness.close()


@pytest.mark.parametrize(("ahead_s", "quarantined"), [(9, 0), (20, 200), (240, 200)])
def test_a_car_with_a_fast_clock_costs_the_other_cars_nothing_at_the_defaults(
    tmp_path: Path, ahead_s: int, quarantined: int
) -> None:
    # At the former 300 s limit a car 240 s fast moved the partition's clock so far that
    # 399 of an on-time car's 400 records were late; 20 s fast cost it 10 s per window.
    # Within the grace (9 s) the fast car is processed and costs the others nothing.
    limit_ms = round(ProcessingSettings().processing_max_future_s * 1000)
    now = {"ms": T0}
    h = Harness(tmp_path / "state", wall_clock=lambda: now["ms"] / 1000, max_future_ms=limit_ms)
    try:
        for s in range(200):
            now["ms"] = T0 + s * 1000
            h.send(ev(s), key="car-1")
            h.send(ev(s + ahead_s, vehicle_id="car-fast"), key="car-fast")
    finally:
        h.close()
    assert h.metric("fleetstream_processing_late_total", vehicle_id="car-1") == 0
    assert [w["samples"] for w in h.out["stats"] if w["vehicle_id"] == "car-1"] == [60, 60, 60]
    future = h.metric("fleetstream_processing_quarantined_total", reason="future_ts")
    assert future == quarantined


def test_the_service_settings_reach_the_pipeline_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "WINDOW_S": "30", "GRACE_S": "5", "STATS_SPREAD_S": "2.5", "MAX_FUTURE_S": "60",
        "ODOMETER_RESOLUTION_KM": "1", "MODEL_DIR": "/srv/models",
    }.items():  # fmt: skip
        monkeypatch.setenv(f"FLEETSTREAM_PROCESSING_{name}", value)
    metrics = ProcessingMetrics()
    config = pipeline_config(ProcessingSettings(), metrics)
    assert (config.window_ms, config.grace_ms, config.stats_spread_ms) == (30_000, 5_000, 2_500)
    assert (config.max_future_ms, config.odometer_resolution_km) == (60_000, 1.0)
    assert (config.model_dir, config.metrics) == (Path("/srv/models"), metrics)
    monkeypatch.setenv("FLEETSTREAM_PROCESSING_ODOMETER_RESOLUTION_KM", "0")
    with pytest.raises(ValidationError, match="processing_odometer_resolution_km"):
        ProcessingSettings()


@pytest.mark.parametrize(("future_s", "warned"), [(None, False), ("10", False), ("11", True)])
def test_a_future_limit_above_the_grace_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, future_s: str | None,
    warned: bool,
) -> None:  # fmt: skip
    if future_s is not None:
        monkeypatch.setenv("FLEETSTREAM_PROCESSING_MAX_FUTURE_S", future_s)
    with caplog.at_level(logging.WARNING, logger="processing"):
        pipeline_config(ProcessingSettings(), ProcessingMetrics())
    assert ("exceeds FLEETSTREAM_PROCESSING_GRACE_S" in caplog.text) is warned


def test_a_record_later_than_the_grace_is_counted_not_windowed(harness: Harness) -> None:
    records = [ev(s) for s in range(0, 140)]
    for record in records:
        harness.send(record)
    assert len(harness.out["stats"]) == 2
    late = ev(5, seq=10_000)  # a new message for a window closed long ago
    emitted = harness.send(late)
    assert dict(emitted) == {}
    assert harness.metric("fleetstream_processing_late_total", vehicle_id="car-1") == 1
    # The next window closes without it.
    for s in range(140, 200):
        harness.send(ev(s))
    assert [w["samples"] for w in harness.out["stats"]] == [60, 60, 60]


def test_simulated_cars_get_per_car_windows(harness: Harness) -> None:
    config = FleetConfig(vehicles=3, duration_s=200, seed=4)
    fleet = Fleet(config)
    records = [r for _ in range(200) for r in fleet.tick()]
    for record in records:
        harness.send(record, key=record["vehicle_id"])
    stats = harness.out["stats"]
    closed = {(w["vehicle_id"], w["window_start"]) for w in stats}
    starts = {r["ts"] // WINDOW_MS * WINDOW_MS for r in records}
    latest = max(r["ts"] for r in records)
    expected = {
        (vid, start)
        for vid in fleet.vehicle_ids
        for start in starts
        if start + WINDOW_MS + GRACE_MS <= latest
    }
    assert len(expected) == 9  # 3 cars x windows [0, 60), [60, 120), [120, 180) s
    assert closed == expected
    assert len(stats) == len(closed)
    for window in stats:
        vid, start = window["vehicle_id"], window["window_start"]
        mine = [
            r for r in records if r["vehicle_id"] == vid and start <= r["ts"] < start + WINDOW_MS
        ]
        samples = [to_sample(r) for r in mine]
        assert window == window_stats(vid, mine[0]["powertrain"], start, start + WINDOW_MS, samples)


def test_a_window_closes_at_the_first_record_past_its_grace(harness: Harness) -> None:
    for s in range(70):
        assert harness.send(ev(s))["stats"] == [], s
    # The window closes here; the car is still sending, so its stats come with its next
    # record, even when that one is a late record of the closed window (left out).
    assert harness.send(ev(70))["stats"] == []
    [window] = harness.send(ev(59, seq=1_000))["stats"]
    assert harness.metric("fleetstream_processing_late_total", vehicle_id="car-1") == 1
    assert (window["window_start"] - T0, window["samples"], window["last_seq"]) == (0, 60, 59)
    assert harness.send(ev(71))["stats"] == []


@pytest.mark.parametrize(
    "car_2",
    [
        [75],  # car-2's first record of its window is the one that crosses 70 s
        [61, 62, 70],  # car-2 is in the window already: its first record past 10 s crosses
    ],
)
def test_a_quiet_car_gets_its_window_on_the_partitions_clock(
    harness: Harness, car_2: list[int]
) -> None:
    quiet = [ev(s, vehicle_id="car-3") for s in range(0, 30)]
    for record in quiet:
        harness.send(record, key="car-3")
    for s in range(69):
        harness.send(ev(s))
    for s in car_2[:-1]:
        assert harness.send(ev(s, vehicle_id="car-2"), key="car-2")["stats"] == []
    closing = harness.send(ev(car_2[-1], vehicle_id="car-2"), key="car-2")["stats"]
    # car-3 stopped sending: its window is emitted at once. car-1 is still sending (it
    # has a record after the window): its stats come with its next record.
    [window] = closing
    samples = [to_sample(r) for r in quiet]
    assert window == window_stats("car-3", "ev", T0, T0 + WINDOW_MS, samples)
    [later] = harness.send(ev(80))["stats"]
    assert (later["vehicle_id"], later["window_start"] - T0, later["samples"]) == ("car-1", 0, 60)


def test_results_carry_the_window_start_and_no_headers(harness: Harness) -> None:
    captured: list[tuple[Any, ...]] = []
    for s in range(72):
        raw = orjson.dumps(ev(s))
        ctx = MessageContext("vehicle-telemetry", 0, s, len(raw))
        headers = [("received_at", b"1")]
        captured += [
            (name, ts, hdrs)
            for (name, _), _key, ts, hdrs in harness.sdf.test(
                raw, key=b"car-1", timestamp=T0 + s * 1000, headers=headers, ctx=ctx
            )
            if name == "stats"
        ]
    assert captured == [("stats", T0, [])]


def test_two_windows_closing_at_one_record_both_come_out_in_order(harness: Harness) -> None:
    # The newer window's first record came first, so Quix may hand the newer one over
    # first when both close at car-2's record (found by a differential review).
    for s in (65, 5, 6):
        harness.send(ev(s))
    closing = harness.send(ev(200, vehicle_id="car-2"), key="car-2")["stats"]
    assert [(w["window_start"] - T0, w["samples"]) for w in closing] == [(0, 2), (WINDOW_MS, 1)]
    assert harness.metric("fleetstream_processing_late_total", vehicle_id="car-1") == 0


def test_an_invalid_record_does_not_move_the_clock(harness: Harness) -> None:
    for s in range(3):
        harness.send(ev(s))
    bad = orjson.dumps({**ev(500), "speed_kmh": -5})  # invalid, far in the future
    ctx = MessageContext(harness.topic.name, 0, harness.offset, len(bad))
    harness.offset += 1
    harness.sdf.test(bad, key=b"car-1", timestamp=T0 + 500_000, ctx=ctx)
    harness.send(ev(3))
    assert harness.metric("fleetstream_processing_late_total", vehicle_id="car-1") == 0
    [window] = harness.send(ev(70, vehicle_id="car-2"), key="car-2")["stats"]
    assert window["samples"] == 4


def test_a_record_from_the_future_is_quarantined_and_does_not_make_others_late(
    harness: Harness,
) -> None:
    ahead = make_ev(int(time.time() * 1000) + DAY_MS, vehicle_id="car-3")  # clock a day ahead
    for s in range(200):
        harness.send(ev(s), key="car-1")
        harness.send(ev(s, vehicle_id="car-2"), key="car-2")
        if s == 100:
            assert dict(harness.send(ahead, key="car-3")) == {"quarantine": [orjson.dumps(ahead)]}
    windows = sorted((w["vehicle_id"], w["window_start"] - T0) for w in harness.out["stats"])
    assert windows == [(car, i * WINDOW_MS) for car in ("car-1", "car-2") for i in range(3)]
    assert harness.metric("fleetstream_processing_late_total", vehicle_id="car-1") == 0
    quarantined = "fleetstream_processing_quarantined_total"
    assert harness.metric(quarantined, reason="future_ts") == 1


def test_the_future_is_judged_by_the_wall_clock_with_a_tolerance(tmp_path: Path) -> None:
    now = [T0 / 1000]  # the wall clock stands at T0
    h = Harness(tmp_path / "state", wall_clock=lambda: now[0])
    try:
        assert "quarantine" not in h.send(ev(MAX_FUTURE_MS // 1000))  # just within
        emitted = h.send(ev(MAX_FUTURE_MS // 1000 + 1))
        assert list(emitted) == ["quarantine"]
        now[0] += 1.0  # a second later it is within the tolerance
        assert "quarantine" not in h.send(ev(MAX_FUTURE_MS // 1000 + 1))
    finally:
        h.close()


def test_quarantined_future_records_carry_their_reason_headers(harness: Harness) -> None:
    record = make_ev(int(time.time() * 1000) + DAY_MS)
    raw = orjson.dumps(record)
    ctx = MessageContext(harness.topic.name, 0, harness.offset, len(raw))
    harness.offset += 1
    [(result, _key, _ts, headers)] = [
        out for out in harness.sdf.test(raw, key=b"car-1", timestamp=record["ts"], ctx=ctx)
        if out[0][0] == "quarantine"
    ]  # fmt: skip
    assert result == ("quarantine", raw)
    assert dict(headers)["reason"] == b"future_ts"
    assert dict(headers)["detail"].startswith(b"future_ts: ts ")


def test_late_records_are_logged_in_summary_not_one_line_each(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    for s in range(140):
        harness.send(ev(s))
    with caplog.at_level(logging.INFO, logger="processing"):
        for i in range(50):
            harness.send(ev(5, seq=10_000 + i))  # late: its window closed long ago
    assert harness.metric("fleetstream_processing_late_total", vehicle_id="car-1") == 50
    late_lines = [r for r in caplog.records if "late record" in r.getMessage()]
    assert len(late_lines) == 1


def test_a_model_that_raises_while_scoring_falls_back_to_the_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tmp_path / "registry"
    rng = np.random.default_rng(0)
    forest = IsolationForest(n_estimators=5, random_state=0).fit(rng.random((50, 2)))
    features = ["consumption_ratio", "avg_speed_kmh"]
    meta = {"features": features, "threshold": 0.6, "score": "neg_score_samples"}
    save(forest, meta, registry, version="v1")
    promote(registry, "v1")

    def broken(_self: LoadedModel, _row: Any) -> float:
        msg = "scoring failed"
        raise RuntimeError(msg)

    monkeypatch.setattr(LoadedModel, "score_one", broken)
    h = Harness(tmp_path / "state", model_dir=registry)
    try:
        for s in range(10 * 60 + 15):  # ten driving windows: the model is asked from the 7th
            h.send(ev(s, state="driving", speed_kmh=36.0, power_kw=12.0,
                      odometer_km=round(1000.0 + 0.01 * s, 4),
                      battery_level_pct=round(80.0 - 0.002 * s, 4)))  # fmt: skip
        assert len(h.out["stats"]) == 10
        assert h.metric("fleetstream_processing_model_errors_total", pointer="current") >= 1
    finally:
        h.close()


def test_a_model_trained_on_other_windows_is_refused_by_the_pipeline(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    rng = np.random.default_rng(0)
    forest = IsolationForest(n_estimators=5, random_state=0).fit(rng.random((50, 2)))
    meta = {"features": ["consumption_ratio", "avg_speed_kmh"], "threshold": 0.6,
            "score": "neg_score_samples"}  # fmt: skip
    save(forest, meta, registry, version="v1")  # no window_ms: trained on 60 s windows
    promote(registry, "v1")
    refused = "fleetstream_processing_models_refused_total"
    h = Harness(tmp_path / "state", model_dir=registry, window_ms=5 * WINDOW_MS)
    try:
        # Both watchers (current and shadow) start when the pipeline is defined.
        assert h.metric(refused) == 1
        h.send(ev(0))
    finally:
        h.close()
    h = Harness(tmp_path / "state-60", model_dir=registry)
    try:
        assert h.metric(refused) == 0
    finally:
        h.close()


@pytest.mark.parametrize("key", [None, b""])
def test_a_message_without_a_key_is_quarantined_before_it_touches_state(
    harness: Harness, key: bytes | None
) -> None:
    # Quix's windows skip key-less messages: their samples piled up and never got stats.
    for s in range(140):
        raw = orjson.dumps(ev(s))
        ctx = MessageContext(harness.topic.name, 0, harness.offset, len(raw))
        harness.offset += 1
        results = harness.sdf.test(raw, key=key, timestamp=T0 + s * 1000, ctx=ctx)
        assert [(name, value) for (name, value), *_ in results] == [("quarantine", raw)]
        [(_value, _key, _ts, headers)] = results
        assert dict(headers)["reason"] == b"no_key"
    quarantined = "fleetstream_processing_quarantined_total"
    assert harness.metric(quarantined, reason="no_key") == 140
    # Nothing was kept for the key-less car: a keyed car's windows are its own.
    for s in range(140):
        harness.send(ev(s))
    assert [w["samples"] for w in harness.out["stats"]] == [60, 60]


def _send_raw(harness: Harness, raw: bytes | None, key: bytes | None, ts: int) -> list[Any]:
    ctx = MessageContext(harness.topic.name, 0, harness.offset, len(raw or b""))
    harness.offset += 1
    return list(harness.sdf.test(raw, key=key, timestamp=ts, ctx=ctx))


def test_a_tombstone_and_a_non_utf8_key_are_quarantined_and_crash_nothing(
    harness: Harness,
) -> None:
    # Both crashed the app (len(None); the key's decode at its window's close), and again
    # at every replay of the record.
    for s in range(140):
        for raw, key, reason in (
            (None, b"car-1", b"null_value"),
            (None, None, b"null_value"),
            (orjson.dumps(ev(s)), b"\xffcar", b"bad_key"),
        ):
            results = _send_raw(harness, raw, key, T0 + s * 1000)
            assert [(name, value) for (name, value), *_ in results] == [("quarantine", raw or b"")]
            [(_value, _key, _ts, headers)] = results
            assert dict(headers)["reason"] == reason
    quarantined = "fleetstream_processing_quarantined_total"
    assert harness.metric(quarantined, reason="null_value") == 280
    assert harness.metric(quarantined, reason="bad_key") == 140
    # A car with a non-ASCII UTF-8 key is a car like any other.
    for s in range(140):
        harness.send(ev(s), key="car-é")
    assert [w["vehicle_id"] for w in harness.out["stats"]] == ["car-é", "car-é"]


def test_a_quarantined_record_near_kafkas_limit_is_cut_as_ingest_cuts_it(
    harness: Harness,
) -> None:
    # With its reason headers, a 999 KB record went over the producer's 1 MB limit: the
    # app failed at the record, and again at every replay.
    raw = b'{"x": "' + b"a" * 999_000 + b'"}'
    [((name, value), _key, _ts, headers)] = _send_raw(harness, raw, b"car-1", T0)
    assert name == "quarantine"
    assert value == raw[:QUARANTINE_MAX_BYTES]
    assert dict(headers)["truncated_from_bytes"] == str(len(raw)).encode()
    assert dict(headers)["reason"] == b"oversize"


def test_stats_name_the_car_by_its_key_on_both_paths(harness: Harness) -> None:
    for s in range(70):
        harness.send(ev(s), key="key-1")  # a rule may key by something else than vehicle_id
    for s in range(20):
        harness.send(ev(s, vehicle_id="car-9"), key="key-9")
    harness.send(ev(70), key="key-1")  # closes both; key-9 stopped: its stats at once
    harness.send(ev(71), key="key-1")  # key-1 is still sending: its stats with this record
    assert sorted(w["vehicle_id"] for w in harness.out["stats"]) == ["key-1", "key-9"]


def test_stats_spread_delays_a_sending_cars_stats_by_its_own_offset(tmp_path: Path) -> None:
    spread = 10_000
    h = Harness(tmp_path / "spread", stats_spread_ms=spread)
    cars = [f"car-{i}" for i in range(8)]
    offsets = {car: spread_offset(car, spread) for car in cars}
    assert len(set(offsets.values())) > 1  # the offsets differ between cars
    emitted_at: dict[str, int] = {}
    for s in range(0, 85):
        for car in cars:
            for stats in h.send(ev(s, vehicle_id=car), key=car)["stats"]:
                assert stats["window_start"] == T0
                emitted_at[stats["vehicle_id"]] = s
    # The window [0 s, 60 s) closes at car-0's record at 70 s (after that record's own
    # step); each car's stats come with its first later record at or after 70 s + its
    # offset, and are what the window held either way.
    for car in cars:
        first = 70 + -(-offsets[car] // 1000)
        assert emitted_at[car] == max(first, 71 if car == "car-0" else 70), car
    assert {s["samples"] for s in h.out["stats"]} == {60}
    h.close()


def test_a_car_that_stops_before_its_offset_gets_its_stats_at_the_next_close(
    tmp_path: Path,
) -> None:
    spread = 10_000
    car = next(f"car-{i}" for i in range(100) if spread_offset(f"car-{i}", spread) > 2_000)
    h = Harness(tmp_path / "stops", stats_spread_ms=spread)
    for s in range(0, 71):  # one record after the close, then silence
        h.send(ev(s, vehicle_id=car), key=car)
    assert h.out["stats"] == []
    # Another car moves the partition's clock past the next window's close.
    for s in range(60, 131):
        h.send(ev(s, vehicle_id="other"), key="other")
    mine = [
        (s["window_start"] - T0, s["samples"]) for s in h.out["stats"] if s["vehicle_id"] == car
    ]
    assert mine == [(0, 60), (WINDOW_MS, 11)]
    h.close()


def test_the_close_writes_the_state_of_stopped_cars_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writing every sending car's state at the one closing record stalled the
    # partition; those cars close their window with their own next record instead.
    written: list[Any] = []
    store = DecodedCache.store

    def counting_store(self: DecodedCache, state: Any, name: str, ident: Any, value: Any) -> None:
        if name == "car":
            written.append(ident[-1])
        store(self, state, name, ident, value)

    monkeypatch.setattr(DecodedCache, "store", counting_store)
    h = Harness(tmp_path / "close", stats_spread_ms=10_000)
    sending = [f"car-{i}" for i in range(5)]
    for s in range(0, 30):
        h.send(ev(s, vehicle_id="quiet"), key="quiet")
    for s in range(0, 70):
        for car in sending:
            h.send(ev(s, vehicle_id=car), key=car)
    written.clear()
    [quiet] = h.send(ev(70, vehicle_id="car-0"), key="car-0")["stats"]
    assert quiet["vehicle_id"] == "quiet"
    assert sorted(written) == [b"car-0", b"quiet"]  # the record's own car, the stopped one
    for s in range(70, 81):
        for car in sending[1:] if s == 70 else sending:
            h.send(ev(s, vehicle_id=car), key=car)
    by_car = {w["vehicle_id"]: w for w in h.out["stats"]}
    assert sorted(by_car) == sorted([*sending, "quiet"])
    assert {by_car[car]["samples"] for car in sending} == {60}
    assert {w["window_start"] for w in by_car.values()} == {T0}
    h.close()


def test_a_partition_assigned_again_replays_with_a_fresh_clock(harness: Harness) -> None:
    # A rebalance whose checkpoint was not committed gives the partition back to the
    # same process, which replays from the last commit (here: from the start). The
    # clock of the discarded pass made every replayed record late and kept the record
    # that crosses the close from sending its marker (found by a review).
    quiet = [ev(s, vehicle_id="car-3") for s in range(30)]
    records = [(r, "car-3") for r in quiet] + [(ev(s), "car-1") for s in range(71)]
    first = [w for r, key in records for w in harness.send(r, key=key)["stats"]]
    harness.reassign()
    again = [w for r, key in records for w in harness.send(r, key=key)["stats"]]
    assert [w["vehicle_id"] for w in first] == ["car-3"]
    assert again == first
    assert harness.metric("fleetstream_processing_late_total", vehicle_id="car-3") == 0


@pytest.mark.parametrize("restart", [False, True])
def test_a_late_record_right_after_a_restart_is_late_as_without_one(
    tmp_path: Path, restart: bool
) -> None:
    # The clock lived only in memory: after a kill -9 behind a commit it started at 0,
    # so a buffered record of an already closed window went into that window's stats
    # (61 samples, not late) and a car's first late record opened a one-sample window.
    h = Harness(tmp_path / "state")
    stats = [w for s in range(20) for w in h.send(ev(s, vehicle_id="car-2"), key="car-2")["stats"]]
    stats += [w for s in range(71) for w in h.send(ev(s))["stats"]]  # car-2's window closes
    h.commit()
    if restart:
        h.close()  # every in-memory cache and clock is lost; the state on disk stays
        h = Harness(tmp_path / "state")
    try:
        stats += h.send(ev(55, seq=1000))["stats"]
        stats += h.send(ev(30, vehicle_id="car-2", seq=1000), key="car-2")["stats"]
        for s in range(71, 75):
            stats += h.send(ev(s))["stats"]
        windows = sorted((w["vehicle_id"], w["window_start"] - T0, w["samples"]) for w in stats)
        assert windows == [("car-1", 0, 60), ("car-2", 0, 20)]
        assert h.metric("fleetstream_processing_late_total", vehicle_id="car-1") == 1
        assert h.metric("fleetstream_processing_late_total", vehicle_id="car-2") == 1
    finally:
        h.close()


def test_each_role_keeps_its_records_timestamp_and_headers_or_the_windows(
    harness: Harness,
) -> None:
    # Alerts and sessions carry their record's time and headers; a window's results its
    # start and none; quarantine its record's headers plus its reason (one stream out).
    seen: dict[str, set[tuple[int, tuple[tuple[str, bytes], ...]]]] = defaultdict(set)
    bad = orjson.dumps({**ev(31), "speed_kmh": -5})
    stream = [orjson.dumps(r) for r in car_sequence()]
    stream.insert(31, bad)
    for offset, raw in enumerate(stream):
        ts = T0 + offset * 1000 if raw is bad else orjson.loads(raw)["ts"]
        headers = [("received_at", str(offset).encode())]
        ctx = MessageContext(harness.topic.name, 0, offset, len(raw))
        for (name, _), _key, out_ts, out_headers in harness.sdf.test(
            raw, key=b"car-1", timestamp=ts, headers=headers, ctx=ctx
        ):
            relative = (out_ts - T0, tuple(out_headers or ()))
            seen[name].add(relative if name != "quarantine" else (relative[0], relative[1][:2]))
    assert seen["alerts"] == {
        (30_000, (("received_at", b"30"),)),
        (100_000, (("received_at", b"101"),)),
    }
    assert seen["sessions"] == {(90_000, (("received_at", b"91"),))}
    assert seen["stats"] == {(0, ()), (WINDOW_MS, ())}
    reason = ("reason", b"out_of_range:speed_kmh")
    assert seen["quarantine"] == {(31_000, (("received_at", b"31"), reason))}


def _drive(s: int, power_kw: float) -> dict[str, Any]:
    return ev(s, state="driving", speed_kmh=36.0, power_kw=power_kw,
              odometer_km=round(1000.0 + 0.01 * s, 4),
              battery_level_pct=round(80.0 - 0.002 * s, 4))  # fmt: skip


def test_window_alerts_and_shadow_alerts_come_out_under_their_roles(tmp_path: Path) -> None:
    # Seven windows at 12 kW, then five at 30 kW: the rule raises high consumption on the
    # third high window. A shadow model that flags every window above the baseline scores
    # the same windows from its own memory.
    registry = tmp_path / "registry"
    rng = np.random.default_rng(0)
    forest = IsolationForest(n_estimators=5, random_state=0).fit(rng.random((50, 2)))
    meta = {"features": ["consumption_ratio", "avg_speed_kmh"], "threshold": -1e9,
            "score": "neg_score_samples"}  # fmt: skip
    save(forest, meta, registry, version="v1")
    promote(registry, "v1", pointer=SHADOW)
    h = Harness(tmp_path / "state", model_dir=registry)
    try:
        for s in range(12 * 60 + 15):
            h.send(_drive(s, 12.0 if s < 7 * 60 else 30.0))
        stats = h.out["stats"]
        assert len(stats) == 12
        # The pure functions on the same windows, each detector with its own memory.
        rules_memory: dict[str, Any] = {}
        shadow_memory: dict[str, Any] = {}
        model = load(registry / "v1")
        expected: list[Any] = []
        expected_shadow: list[Any] = []
        for window in stats:
            expected += detect_window(rules_memory, window)
            expected_shadow += detect_window(shadow_memory, window, model)
        assert [(a["kind"], a["status"], a["detector"]) for a in expected] == [
            ("high_consumption", "raised", "rule:v1")
        ]
        assert expected[0]["ts"] == stats[9]["window_end"] - 1
        assert h.out["window_alerts"] == expected
        assert {a["detector"] for a in expected_shadow} == {"model:v1"}
        assert h.out["shadow_alerts"] == expected_shadow
        # Window alerts are alerts: counted by the metric; the shadow's are not.
        assert h.metric("fleetstream_processing_alerts_total", kind="high_consumption",
                        status="raised") == 1  # fmt: skip
    finally:
        h.close()
