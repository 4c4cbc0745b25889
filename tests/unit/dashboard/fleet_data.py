"""Data for the dashboard tests: a small hand-made fleet and a recorded simulated fleet.

The recorded fleet is the simulator's output run through processing's own functions
(``detect``, ``track``, ``window_stats``, ``detect_window``: the code the Quix pipeline
calls), so its stats, sessions and alerts have the exact shapes of the Kafka topics.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from dashboard.feedback import ListFeedbackSink
from dashboard.runtime import Runtime
from dashboard.settings import DashboardSettings
from dashboard.view import FleetView, RecordKind
from processing.detectors import detect, detect_window
from processing.sessions import track
from processing.stats import to_sample, window_stats
from simulator import FleetConfig, iter_records

from ..records import make_ev, make_ice

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN_MS = 60_000


@dataclass
class Recording:
    """Records per topic kind, in arrival order, and the time the recording ends."""

    records: list[tuple[RecordKind, dict[str, Any]]] = field(default_factory=list)
    end_ms: int = 0

    def count(self, kind: RecordKind) -> int:
        return sum(1 for k, _ in self.records if k == kind)

    def of(self, kind: RecordKind) -> list[dict[str, Any]]:
        return [r for k, r in self.records if k == kind]


def record_simulated_fleet(
    vehicles: int = 10, hours: float = 8.0, seed: int = 3, anomaly_rate: float = 6.0
) -> Recording:
    """A simulated fleet at 0.2 Hz through processing's per-record and window functions."""
    config = FleetConfig(
        vehicles=vehicles,
        rate_hz=0.2,
        seed=seed,
        anomaly_rate=anomaly_rate,
        duration_s=hours * 3600,
        start_ms=T0,
    )
    out = Recording()
    cars: dict[str, dict[str, Any]] = defaultdict(dict)
    window_memory: dict[str, dict[str, Any]] = defaultdict(dict)
    open_windows: dict[str, tuple[int, str, list[list[Any]]]] = {}
    for record in iter_records(config):
        vid, ts = record["vehicle_id"], record["ts"]
        start = ts - ts % MIN_MS
        current = open_windows.get(vid)
        if current is not None and current[0] != start:
            stats = window_stats(vid, current[1], current[0], current[0] + MIN_MS, current[2])
            out.records.append(("stats", dict(stats)))
            for alert in detect_window(window_memory[vid], dict(stats)):
                out.records.append(("alerts", dict(alert)))
            current = None
        if current is None:
            current = (start, record["powertrain"], [])
            open_windows[vid] = current
        current[2].append(to_sample(record))
        out.records.append(("telemetry", record))
        for alert in detect(cars[vid], record):
            out.records.append(("alerts", dict(alert)))
        for session in track(cars[vid], record):
            out.records.append(("sessions", dict(session)))
        out.end_ms = ts
    return out


def small_fleet() -> Recording:
    """Three cars with hand-checked numbers.

    - ``ev-1`` driving, 2 stats windows: 1.0 kWh over 5 km and 0.5 kWh over 5 km
      (fleet EV = 1500 Wh / 10 km = 150 Wh/km); samples 60 + 58 with 2 missing
      (completeness 118 / 120 = 98.33 %); an active critical overheat alert.
    - ``ice-1`` refuelling, one window: 0.6 L over 10 km = 6 L/100 km; a cleared high
      fuel_loss alert; an idle session draining 2 %/h for 2 h.
    - ``ev-2`` parked, last seen 10 minutes ago (offline); an active info glitch alert.
    """
    now = T0 + 60 * MIN_MS
    out = Recording(end_ms=now)
    add = out.records.append
    add(("telemetry", make_ev(now - 5000, vehicle_id="ev-1", state="driving", speed_kmh=50.0)))
    add(("telemetry", make_ice(now - 2000, vehicle_id="ice-1", state="refueling", lat=48.2)))
    add(("telemetry", make_ev(now - 10 * MIN_MS, vehicle_id="ev-2", lon=11.6)))
    for i, (used, missing) in enumerate(((1.0, 0), (0.5, 2))):
        start = now - (3 - i) * MIN_MS
        add(
            ("stats", _stats("ev-1", "ev", start, used, 5.0, samples=60 - missing, missing=missing))
        )
    add(("stats", _stats("ice-1", "ice", now - 2 * MIN_MS, 0.6, 10.0, samples=60, missing=0)))
    add(("alerts", _alert("ep-overheat", "ev-1", "overheat", "critical", now - 4 * MIN_MS)))
    add(("alerts", _alert("ep-fuel", "ice-1", "fuel_loss", "high", now - 30 * MIN_MS)))
    add(("alerts", _alert("ep-fuel", "ice-1", "fuel_loss", "high", now - 20 * MIN_MS, "cleared")))
    add(("alerts", _alert("ep-glitch", "ev-2", "sensor_glitch", "info", now - 12 * MIN_MS)))
    add(("sessions", _idle("ice-1", "ice", now - 180 * MIN_MS, hours=2.0, drain=2.0)))
    add(("sessions", _drive("ev-1", now - 40 * MIN_MS)))
    return out


def _stats(
    vid: str, powertrain: str, start: int, used: float, km: float, *, samples: int, missing: int
) -> dict[str, Any]:
    ev = powertrain == "ev"
    return {
        "vehicle_id": vid, "powertrain": powertrain, "window_start": start,
        "window_end": start + MIN_MS, "samples": samples, "first_seq": 0,
        "last_seq": samples + missing - 1, "missing": missing, "duplicates": 0,
        "distance_km": km, "avg_speed_kmh": 50.0, "max_speed_kmh": 70.0,
        "energy_used_kwh": used if ev else None, "energy_added_kwh": 0.0 if ev else None,
        "consumption_wh_per_km": 1000 * used / km if ev else None,
        "fuel_used_l": None if ev else used,
        "consumption_l_per_100km": None if ev else 100 * used / km,
        "level_start_pct": 80.0, "level_end_pct": 79.0, "level_min_pct": 79.0,
        "level_max_pct": 80.0, "max_temp_c": 30.0, "min_tpms_bar": 2.4,
        "avg_outside_temp_c": 12.0 if ev else -3.0,
    }  # fmt: skip


def _alert(
    episode: str, vid: str, kind: str, severity: str, ts: int, status: str = "raised"
) -> dict[str, Any]:
    return {
        "alert_id": f"{episode}-{status}", "episode_id": episode, "vehicle_id": vid,
        "kind": kind, "severity": severity, "ts": ts, "status": status,
        "message": f"{vid}: {kind.replace('_', ' ')}" + (" is over" if status == "cleared" else ""),
        "evidence": {"value": 42}, "detector": "rule:v1",
    }  # fmt: skip


def _session_base(vid: str, powertrain: str, kind: str, start: int, hours: float) -> dict[str, Any]:
    return {
        "session_id": f"{vid}-{kind}-{start}", "vehicle_id": vid, "powertrain": powertrain,
        "kind": kind, "start_ts": start, "end_ts": start + int(hours * 3_600_000),
        "duration_s": hours * 3600, "samples": 100, "distance_km": None,
        "energy_used_kwh": None, "energy_added_kwh": None, "fuel_used_l": None,
        "fuel_added_l": None, "consumption_wh_per_km": None, "consumption_l_per_100km": None,
        "level_start_pct": 50.0, "level_end_pct": 46.0, "drain_pct_per_h": None,
        "avg_outside_temp_c": 10.0,
    }  # fmt: skip


def _idle(vid: str, powertrain: str, start: int, hours: float, drain: float) -> dict[str, Any]:
    return {**_session_base(vid, powertrain, "idle", start, hours), "drain_pct_per_h": drain}


def _drive(vid: str, start: int) -> dict[str, Any]:
    return {
        **_session_base(vid, "ev", "drive", start, 0.25),
        "distance_km": 12.0,
        "energy_used_kwh": 2.0,
        "consumption_wh_per_km": 166.7,
    }


def filled_view(recording: Recording, **bounds: int) -> FleetView:
    """A view that has taken every record of the recording, connected."""
    view = FleetView(clock=lambda: recording.end_ms / 1000, **bounds)
    for kind, record in recording.records:
        view.ingest(kind, record)
    view.set_connected(True)
    return view


def runtime_for(recording: Recording, view: FleetView | None = None) -> Runtime:
    """A runtime over the recording, its clock pinned to the recording's end."""
    return Runtime(
        settings=DashboardSettings(),
        view=view or filled_view(recording),
        feedback=ListFeedbackSink(),
        clock=lambda: recording.end_ms / 1000,
    )
