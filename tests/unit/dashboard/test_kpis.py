"""KPIs, map points, filters and efficiency numbers, checked by hand on a small fleet."""

from __future__ import annotations

import math
from typing import cast

import pytest

from dashboard import kpis
from dashboard.feedback import feedback_record
from processing.stats import WindowStats, consumption

from ..records import make_ev
from .fleet_data import MIN_MS, Recording, _alert, filled_view

pytestmark = pytest.mark.unit

ONLINE_MS = 120_000
HOUR_MS = 3_600_000


def test_fleet_kpis_by_hand(small: Recording) -> None:
    snapshot = filled_view(small).snapshot()
    k = kpis.fleet_kpis(snapshot, small.end_ms, ONLINE_MS, HOUR_MS)
    assert (k.cars, k.online, k.driving, k.charging) == (3, 2, 1, 1)
    assert k.active_alerts == {"critical": 1, "high": 0, "warning": 0, "info": 1}
    assert k.active_total == 2
    assert k.ev_wh_per_km == pytest.approx(150.0)
    assert k.ice_l_per_100km == pytest.approx(6.0)
    assert k.completeness_pct == pytest.approx(100 * 178 / 180)


def test_kpi_period_leaves_old_windows_out(small: Recording) -> None:
    snapshot = filled_view(small).snapshot()
    k = kpis.fleet_kpis(snapshot, small.end_ms, ONLINE_MS, int(1.5 * MIN_MS))
    # Windows ending in the last 90 s: EV 0.5 kWh / 5 km, and the ICE window.
    assert k.ev_wh_per_km == pytest.approx(100.0)
    assert k.ice_l_per_100km == pytest.approx(6.0)
    assert k.completeness_pct == pytest.approx(100 * 118 / 120)
    k = kpis.fleet_kpis(snapshot, small.end_ms + MIN_MS, ONLINE_MS, int(1.5 * MIN_MS))
    assert (k.ev_wh_per_km, k.ice_l_per_100km, k.completeness_pct) == (None, None, None)


def test_false_positive_is_not_an_active_alert(small: Recording) -> None:
    view = filled_view(small)
    glitch = next(a for a in view.snapshot().alerts if a["kind"] == "sensor_glitch")
    view.ingest("feedback", dict(feedback_record(glitch, "false_positive", small.end_ms)))
    k = kpis.fleet_kpis(view.snapshot(), small.end_ms, ONLINE_MS, HOUR_MS)
    assert k.active_alerts["info"] == 0


def test_map_points_colour_by_alert_then_state(small: Recording) -> None:
    points = {
        p["vehicle_id"]: p
        for p in kpis.map_points(filled_view(small).snapshot(), small.end_ms, ONLINE_MS)
    }
    assert points["ev-1"]["colour"] == list(kpis.SEVERITY_COLOURS["critical"])
    assert points["ice-1"]["colour"] == list(kpis.STATE_COLOURS["refueling"])  # alert cleared
    assert points["ev-2"]["colour"] == list(kpis.SEVERITY_COLOURS["info"])
    assert points["ev-2"]["state"] == "offline (parked)"
    assert points["ice-1"]["lat"] == 48.2


def test_a_car_without_a_position_now_is_drawn_at_its_last_known_one(small: Recording) -> None:
    # A GPS gap (null is valid): the car vanished from the map with its active alert.
    view = filled_view(small)
    view.ingest("telemetry", {**small.of("telemetry")[0], "ts": small.end_ms, "lat": None})
    view.ingest("telemetry", {**small.of("telemetry")[1], "ts": small.end_ms, "lon": math.nan})
    points = {p["vehicle_id"]: p for p in kpis.map_points(view.snapshot(), small.end_ms, ONLINE_MS)}
    assert sorted(points) == ["ev-1", "ev-2", "ice-1"]
    ev1 = points["ev-1"]
    assert (ev1["lat"], ev1["lon"], ev1["alert"]) == (48.1, 11.5, "critical")
    assert ev1["position"] == "stale: last known position at 2026-01-01 00:59:55 UTC"
    assert (points["ice-1"]["lat"], points["ice-1"]["lon"]) == (48.2, 11.5)
    assert points["ev-2"]["position"] == ""  # its latest sample has a position


def test_active_alerts_of_cars_never_placed_are_listed(small: Recording) -> None:
    view = filled_view(small)
    view.ingest("telemetry", make_ev(small.end_ms, vehicle_id="no-gps", lat=None, lon=None))
    view.ingest("alerts", _alert("ep-x", "no-gps", "overheat", "critical", small.end_ms))
    view.ingest("alerts", _alert("ep-y", "no-telemetry", "tire_leak", "warning", small.end_ms))
    snapshot = view.snapshot()
    points = kpis.map_points(snapshot, small.end_ms, ONLINE_MS)
    assert "no-gps" not in {p["vehicle_id"] for p in points}
    assert kpis.alerts_off_the_map(snapshot, points) == {
        "no-gps": "critical",
        "no-telemetry": "warning",
    }


def test_filter_alerts_combines_filters(small: Recording) -> None:
    alerts = filled_view(small).snapshot().alerts
    assert [a["kind"] for a in alerts] == ["overheat", "sensor_glitch", "fuel_loss"]
    assert [a["kind"] for a in kpis.filter_alerts(alerts, severities=["high", "info"])] == [
        "sensor_glitch",
        "fuel_loss",
    ]
    assert [a["kind"] for a in kpis.filter_alerts(alerts, cars=["ice-1"])] == ["fuel_loss"]
    assert kpis.filter_alerts(alerts, cars=["ice-1"], active_only=True) == []
    assert [a["kind"] for a in kpis.filter_alerts(alerts, kinds=["overheat"])] == ["overheat"]


def test_consumption_by_temperature_bins(small: Recording) -> None:
    rows = kpis.consumption_by_temperature(filled_view(small).window_chunks())
    assert [(r["powertrain"], r["temp_c"], r["windows"]) for r in rows] == [
        ("ev", 10.0, 2),
        ("ice", -5.0, 1),
    ]
    assert rows[0]["consumption"] == pytest.approx(150.0)
    assert rows[1]["consumption"] == pytest.approx(6.0)
    assert rows[1]["unit"] == "L/100 km"


def test_idle_drain_per_car(small: Recording) -> None:
    rows = kpis.idle_drain_per_car(filled_view(small).session_chunks())
    assert rows == [
        {
            "vehicle_id": "ice-1",
            "powertrain": "ice",
            "idle_h": 2.0,
            "drain_pct_per_h": 2.0,
            "sessions": 1,
        }
    ]


def test_recorded_fleet_consumption_agrees_with_window_ratios(recorded: Recording) -> None:
    view = filled_view(recorded)
    stats = recorded.of("stats")
    ev, ice = kpis.fleet_consumption(view.windows())
    # A distance-weighted mean lies between the smallest and largest window values.
    for powertrain, value in (("ev", ev), ("ice", ice)):
        values = [
            c
            for s in stats
            if s["powertrain"] == powertrain
            if (c := consumption(cast("WindowStats", s))) is not None
        ]
        assert value is not None
        assert min(values) <= value <= max(values)
    snapshot = view.snapshot(since_ms=recorded.end_ms - HOUR_MS)
    k = kpis.fleet_kpis(snapshot, recorded.end_ms, ONLINE_MS, HOUR_MS)
    assert k.online == 10
    assert k.completeness_pct == pytest.approx(100.0)  # the simulator loses nothing
    assert kpis.consumption_by_temperature([view.windows()])
    assert kpis.idle_drain_per_car(view.session_chunks())
