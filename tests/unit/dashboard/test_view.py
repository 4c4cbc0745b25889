"""FleetView: records in, bounded copies out, thread-safe."""

from __future__ import annotations

import threading
from typing import Any, Literal

import pytest

from dashboard.view import FleetView

from ..records import make_ev
from .fleet_data import T0, Recording, _alert, _drive, _stats, filled_view

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
    # Feedback read before its alert (another topic) waits for it.
    view.ingest("feedback", {"alert_id": "ep1-raised", "verdict": "false_positive", "ts": 5})
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
