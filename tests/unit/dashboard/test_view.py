"""FleetView: records in, bounded copies out, thread-safe."""

from __future__ import annotations

import threading
import tracemalloc
from typing import Any, Literal

import orjson
import pytest

from dashboard.errors import FeedbackError
from dashboard.feedback import feedback_record
from dashboard.runtime import view_for
from dashboard.settings import DashboardSettings
from dashboard.view import FleetView, RecordKind

from ..records import make_ev
from .fleet_data import MIN_MS, T0, Recording, _alert, _drive, _stats, filled_view

pytestmark = pytest.mark.unit


def test_recorded_fleet_fills_the_view_within_its_bounds(recorded: Recording) -> None:
    view = filled_view(recorded, windows_per_car=100, samples_per_car=50, max_alerts=10)
    snapshot = view.snapshot()
    assert len(snapshot.powertrains) == 10
    assert len(snapshot.latest) == 10
    assert len(snapshot.alerts) == 10  # 19 episodes recorded, the 10 newest kept
    assert [a["ts"] for a in snapshot.alerts] == sorted(
        (a["ts"] for a in snapshot.alerts), reverse=True
    )
    for vid in snapshot.vehicle_ids:
        car = view.car(vid)
        assert car is not None
        assert len(car.stats) == 100
        assert len(car.samples) == 50
        assert car.samples[-1]["ts"] == max(
            r["ts"] for r in recorded.of("telemetry") if r["vehicle_id"] == vid
        )
    status = view.status()
    assert status.connected is True
    assert status.records["telemetry"] == recorded.count("telemetry")
    assert status.skipped == 0


def test_car_count_is_bounded_oldest_car_goes_first() -> None:
    view = FleetView(max_cars=2)
    for i, vid in enumerate(("a", "b", "c")):
        view.ingest("telemetry", make_ev(T0 + i, vehicle_id=vid))
    assert view.snapshot().vehicle_ids == ["b", "c"]
    assert view.car("a") is None


def test_alert_episode_lifecycle_and_feedback_in_any_order() -> None:
    view = FleetView()
    # Feedback read before its alert (another topic) waits for it; the latest by its time
    # wins, whatever the order it is read in.
    view.ingest("feedback", {"alert_id": "ep1-raised", "verdict": "false_positive", "ts": 5})
    view.ingest("feedback", {"alert_id": "ep1-raised", "verdict": "acknowledged", "ts": 4})
    view.ingest("alerts", _alert("ep1", "car-1", "overheat", "critical", T0))
    view.ingest("alerts", _alert("ep1", "car-1", "overheat", "critical", T0 + 1, "cleared"))
    view.ingest("alerts", _alert("ep2", "car-1", "tire_leak", "warning", T0 + 2))
    view.ingest(
        "feedback",
        {"alert_id": "ep2-raised", "episode_id": "ep2", "verdict": "acknowledged", "ts": 9},
    )
    view.ingest(
        "feedback",
        {"alert_id": "ep2-raised", "episode_id": "ep2", "verdict": "false_positive", "ts": 8},
    )  # older than the verdict already taken: ignored
    first, second = sorted(view.snapshot().alerts, key=lambda a: a["ts"])
    assert (first["active"], first["cleared_ts"], first["verdict"]) == (
        False,
        T0 + 1,
        "false_positive",
    )
    assert (second["active"], second["verdict"]) == (True, "acknowledged")
    car = view.car("car-1")
    assert car is not None
    assert [a["episode_id"] for a in car.alerts] == ["ep1", "ep2"]


def test_replayed_records_do_not_duplicate() -> None:
    view = FleetView()
    window = _stats("car-1", "ev", T0, 1.0, 5.0, samples=60, missing=0)
    view.ingest("stats", window)
    view.ingest("stats", {**window, "samples": 59})
    session = _drive("car-1", T0)
    view.ingest("sessions", session)
    view.ingest("sessions", session)
    view.ingest("telemetry", make_ev(T0 + 1000))
    view.ingest("telemetry", make_ev(T0 + 1000))
    view.ingest("telemetry", make_ev(T0 + 500))
    car = view.car("car-1")
    assert car is not None
    assert [s["samples"] for s in car.stats] == [59]  # the replay replaced its first copy
    assert len(car.sessions) == 1
    assert [s["ts"] for s in car.samples] == [T0 + 1000]


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("stats", {"window_end": None}),
        ("stats", {"window_end": str(T0 + 60_000)}),
        ("stats", {"samples": "60"}),
        ("stats", {"distance_km": "1.0"}),
        ("stats", {"distance_km": True}),
        ("stats", {"vehicle_id": 7}),
        ("sessions", {"duration_s": "900"}),
        ("sessions", {"start_ts": None}),
        ("sessions", {"kind": None}),
    ],
)
def test_stats_and_sessions_of_the_wrong_shape_are_refused(
    kind: Literal["stats", "sessions"], change: dict[str, Any]
) -> None:
    # Stored, they made every later page render raise (KPIs, charts, snapshot).
    view = FleetView()
    good = (
        _stats("car-1", "ev", T0, 1.0, 5.0, samples=60, missing=0)
        if kind == "stats"
        else _drive("car-1", T0)
    )
    view.ingest(kind, good)
    with pytest.raises(TypeError):
        view.ingest(kind, {**good, **change})
    car = view.car("car-1")
    assert car is not None
    assert len(car.stats if kind == "stats" else car.sessions) == 1


@pytest.mark.parametrize("missing", ["window_end", "samples", "avg_outside_temp_c"])
def test_stats_missing_a_field_are_refused(missing: str) -> None:
    view = FleetView()
    window = _stats("car-1", "ev", T0, 1.0, 5.0, samples=60, missing=0)
    with pytest.raises(KeyError):
        view.ingest("stats", {k: v for k, v in window.items() if k != missing})
    assert view.car("car-1") is None


@pytest.mark.parametrize("missing", ["kind", "duration_s"])
def test_sessions_missing_a_field_are_refused(missing: str) -> None:
    view = FleetView()
    session = _drive("car-1", T0)
    with pytest.raises(KeyError):
        view.ingest("sessions", {k: v for k, v in session.items() if k != missing})
    assert view.car("car-1") is None


def test_malformed_records_raise_for_the_feed_to_count() -> None:
    view = FleetView()
    with pytest.raises(KeyError):
        view.ingest("alerts", {"episode_id": "x"})
    view.count_skipped()
    assert view.status().skipped == 1


def test_snapshots_are_copies() -> None:
    view = FleetView()
    view.ingest("alerts", _alert("ep1", "car-1", "overheat", "critical", T0))
    snapshot = view.snapshot()
    snapshot.alerts[0]["active"] = False
    assert view.snapshot().alerts[0]["active"] is True


def test_concurrent_writer_and_readers() -> None:
    view = FleetView(samples_per_car=100, max_alerts=50)
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        for i in range(5000):
            view.ingest("telemetry", make_ev(T0 + i * 1000, vehicle_id=f"car-{i % 20}"))
            if i % 10 == 0:
                view.ingest("alerts", _alert(f"ep{i}", f"car-{i % 20}", "overheat", "high", i))
        stop.set()

    def read() -> None:
        try:
            while not stop.is_set():
                snapshot = view.snapshot(since_ms=0)
                assert len(snapshot.alerts) <= 50
                for vid in snapshot.vehicle_ids:
                    car = view.car(vid)
                    assert car is None or len(car.samples) <= 100
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, name="writer")] + [
        threading.Thread(target=read, name=f"reader-{i}") for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert view.status().records["telemetry"] == 5000
    assert len(view.snapshot().alerts) == 50


def test_an_alert_first_read_as_cleared_takes_no_feedback_until_its_raise_is_read() -> None:
    # Its raise is older than the backfill: the entry's time is the clear's, and feedback
    # with that alert_ts would label the windows before the clear, not before the raise.
    view = FleetView()
    view.ingest("alerts", _alert("ep1", "car-1", "overheat", "critical", T0 + 600_000, "cleared"))
    [entry] = view.snapshot().alerts
    assert (entry["raised_seen"], entry["active"], entry["ts"]) == (False, False, T0 + 600_000)
    with pytest.raises(FeedbackError, match="raise time is unknown"):
        feedback_record(entry, "acknowledged", T0 + 700_000)
    # A replay from further back brings the raise: the entry becomes the episode's.
    view.ingest("alerts", _alert("ep1", "car-1", "overheat", "critical", T0))
    [entry] = view.snapshot().alerts
    assert (entry["raised_seen"], entry["active"], entry["ts"]) == (True, False, T0)
    assert entry["message"] == "car-1: overheat"
    assert entry["cleared_ts"] == T0 + 600_000
    assert feedback_record(entry, "acknowledged", T0 + 700_000)["alert_ts"] == T0


@pytest.mark.parametrize(
    ("kind", "record"),
    [
        ("alerts", _alert("ep1", "car-1", "overheat", "critical", 10**16)),
        ("alerts", _alert("ep1", "car-1", "overheat", "critical", -1)),
        ("stats", {**_stats("car-1", "ev", T0, 1.0, 5.0, samples=60, missing=0),
                   "window_end": 2**62}),
        ("sessions", {**_drive("car-1", T0), "start_ts": 10**16}),
        ("feedback", {"alert_id": "ep1-raised", "verdict": "acknowledged", "ts": 10**17}),
    ],
)  # fmt: skip
def test_times_no_date_can_show_are_refused(kind: RecordKind, record: dict[str, Any]) -> None:
    # Stored, they made every later render of the alerts or car page raise.
    view = FleetView()
    with pytest.raises(ValueError, match="not a time in ms since 1970 up to 2100"):
        view.ingest(kind, record)
    snapshot = view.snapshot()
    assert snapshot.alerts == []
    assert len(snapshot.recent_windows) == 0


@pytest.mark.parametrize("max_future_s", [None, "90"])
def test_a_sample_far_ahead_of_the_wall_clock_is_refused_and_hides_nothing(
    max_future_s: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limit is processing's setting: both skip the same records.
    if max_future_s is not None:
        monkeypatch.setenv("FLEETSTREAM_PROCESSING_MAX_FUTURE_S", max_future_s)
    limit_ms = int(float(max_future_s or 10) * 1000)
    now_ms = T0 + 3_600_000
    view = view_for(DashboardSettings(), clock=lambda: now_ms / 1000)
    view.ingest("telemetry", make_ev(now_ms - 1000, seq=1))
    with pytest.raises(ValueError, match="ahead of the wall clock"):
        view.ingest("telemetry", make_ev(now_ms + limit_ms + 1000, seq=2, lat=10.0))
    view.ingest("telemetry", make_ev(now_ms, seq=3))
    view.ingest("telemetry", make_ev(now_ms + limit_ms - 1000, seq=4))  # a clock a bit fast
    car = view.car("car-1")
    assert car is not None
    assert [s["ts"] for s in car.samples] == [now_ms - 1000, now_ms, now_ms + limit_ms - 1000]
    assert car.samples[-1]["lat"] == 48.1


def test_an_evicted_episode_read_again_is_listed_once_for_its_car() -> None:
    # Its id stayed in the car's list; the clear re-created the episode and appended it
    # again, and the car page made two cards with one Streamlit key on every refresh.
    view = FleetView(max_alerts=3)
    episodes = [("ep1", "car-1"), *((f"x{i}", f"other-{i}") for i in range(3))]
    for i, (episode, vid) in enumerate(episodes):
        view.ingest("alerts", _alert(episode, vid, "overheat", "critical", T0 + i))
        view.ingest("alerts", _alert(episode, vid, "overheat", "critical", T0 + 9, "cleared"))
    assert "ep1" not in {a["episode_id"] for a in view.snapshot().alerts}
    # A replay from further back: the episode's records again.
    view.ingest("alerts", _alert("ep1", "car-1", "overheat", "critical", T0))
    view.ingest("alerts", _alert("ep1", "car-1", "overheat", "critical", T0 + 9, "cleared"))
    car = view.car("car-1")
    assert car is not None
    assert [a["episode_id"] for a in car.alerts] == ["ep1"]


def test_cleared_episodes_are_evicted_before_active_ones() -> None:
    # A long-running critical alert was evicted by newer short glitches and vanished from
    # the KPIs and the map.
    view = FleetView(max_alerts=3)
    view.ingest("alerts", _alert("hot", "car-1", "overheat", "critical", T0))
    for i in range(250):  # the same car: its own list must not lose the active episode
        view.ingest("alerts", _alert(f"g{i}", "car-1", "sensor_glitch", "info", T0 + 2 * i + 1))
        view.ingest(
            "alerts", _alert(f"g{i}", "car-1", "sensor_glitch", "info", T0 + 2 * i + 2, "cleared")
        )
    kept = {a["episode_id"]: a["active"] for a in view.snapshot().alerts}
    assert kept == {"hot": True, "g248": False, "g249": False}
    car = view.car("car-1")
    assert car is not None
    assert [a["episode_id"] for a in car.alerts] == ["hot", "g248", "g249"]
    assert view.status().evicted_active == 0


def test_an_active_episode_is_evicted_only_when_all_are_active(
    caplog: pytest.LogCaptureFixture,
) -> None:
    view = FleetView(max_alerts=2)
    with caplog.at_level("WARNING", logger="dashboard.view"):
        view.ingest("alerts", _alert("c", "car-1", "overheat", "critical", T0, "cleared"))
        for i in range(6):
            view.ingest("alerts", _alert(f"a{i}", "car-1", "overheat", "critical", T0 + i + 1))
    assert [a["episode_id"] for a in view.snapshot().alerts] == ["a5", "a4"]
    assert view.status().evicted_active == 4  # "c" went first, then a0 to a3
    # Logged once: the later evictions within the minute are counted, not logged.
    assert len([r for r in caplog.records if "active alert episodes" in r.getMessage()]) == 1


class _CountingLock:
    """A lock that counts how often it was taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.holds = 0

    def __enter__(self) -> None:
        self._lock.acquire()
        self.holds += 1

    def __exit__(self, *_: object) -> None:
        self._lock.release()


def test_fleet_wide_readers_hold_the_lock_for_a_chunk_of_cars_at_a_time() -> None:
    # One hold over every car (0.2 s at 10,000 cars x 60 windows) stalled the feed thread
    # for every browser session's refresh.
    view = FleetView()
    for i in range(1000):
        vid = f"car-{i}"
        view.ingest("telemetry", make_ev(T0, vehicle_id=vid))
        view.ingest("stats", _stats(vid, "ev", T0 + i, 1.0, 5.0, samples=60, missing=0))
    lock = _CountingLock()
    view._lock = lock  # type: ignore[assignment]
    snapshot = view.snapshot(since_ms=T0 + 500 + MIN_MS)
    assert len(snapshot.latest) == 1000
    assert len(snapshot.recent_windows) == 500
    assert lock.holds >= 4
    lock.holds = 0
    assert len(view.windows()) == 1000
    assert lock.holds >= 4


def test_kept_windows_and_samples_are_compact() -> None:
    # As the records' dicts, a window took ~1.7 KB and a sample ~0.9 KB: 19 GiB with the
    # default bounds full at 10,000 cars.
    cars, rows = 20, 100
    windows = [
        orjson.loads(orjson.dumps(_stats(f"car-{c}", "ev", T0 + w * MIN_MS, 1.0, 5.0,
                                         samples=60, missing=0)))
        for w in range(rows) for c in range(cars)
    ]  # fmt: skip
    samples = [
        orjson.loads(orjson.dumps(make_ev(T0 + i * 2000, vehicle_id=f"car-{c}")))
        for i in range(rows) for c in range(cars)
    ]  # fmt: skip
    for kind, records in (("stats", windows), ("telemetry", samples)):
        view = FleetView(windows_per_car=rows, samples_per_car=rows, clock=lambda: T0 / 1000)
        tracemalloc.start()
        try:
            for record in records:
                view.ingest(kind, record)  # type: ignore[arg-type]
            kept, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        per_record = kept / len(records)  # the car's own overhead included
        assert per_record < 160, (kind, per_record)
