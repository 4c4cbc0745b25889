"""The simulator's physics and labels, on a seeded simulated day."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from simulator import (
    FleetConfig,
    Format,
    Kind,
    MqttTarget,
    SimulatorError,
    check_format,
    iter_records,
    run_to_file,
    run_to_mqtt,
)
from simulator._anomalies import schedule
from simulator._fleet import Fleet
from telemetry.contract import parse

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def day(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A simulated day of 20 cars through the real CLI (the documented command, smaller).

    One message per car every 4 s: a day (every state, charging at night) in a quarter of
    the records of 1 Hz, which took this unit module ~85 s to simulate.
    """
    out = tmp_path_factory.mktemp("sim")
    data, labels = out / "out.jsonl", out / "labels.jsonl"
    result = subprocess.run(
        [
            sys.executable, "-m", "fleetstream", "simulate", "--vehicles", "20",
            "--duration", "86400", "--rate", "0.25", "--seed", "7", "--anomaly-rate", "1.5",
            "--output", str(data), "--labels", str(labels),
        ],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [dict(parse(line)) for line in data.read_bytes().splitlines()]
    return records, [orjson.loads(line) for line in labels.read_bytes().splitlines()]


def test_every_line_is_valid_v1_and_complete(
    day: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    records, _ = day
    assert len(records) == 20 * 86400 // 4
    assert {r["powertrain"] for r in records} == {"ev", "ice"}


def test_per_car_invariants(day: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    records, labels = day
    glitches = defaultdict(list)
    for label in labels:
        if label["kind"] == "sensor_glitch":
            glitches[label["vehicle_id"]].append((label["start_ts"], label["end_ts"]))
    last: dict[str, dict[str, Any]] = {}
    seen_states: set[str] = set()
    for r in records:
        vid = r["vehicle_id"]
        seen_states.add(r["state"])
        level = r["battery_level_pct"] if r["powertrain"] == "ev" else r["fuel_level_pct"]
        assert 0 <= level <= 100
        if r["state"] != "driving":
            assert r["speed_kmh"] == 0
        prev = last.get(vid)
        if prev is not None:
            assert r["seq"] == prev["seq"] + 1
            assert r["ts"] > prev["ts"]
            if r["odometer_km"] < prev["odometer_km"]:
                assert any(s <= r["ts"] < e for s, e in glitches[vid]), (vid, r["ts"])
            if r["powertrain"] == "ev" and r["state"] == "charging" and prev["state"] == "charging":
                assert r["charge_energy_added_kwh"] >= prev["charge_energy_added_kwh"]
                assert r["battery_level_pct"] >= prev["battery_level_pct"]
            if (
                r["powertrain"] == "ice"
                and r["state"] == "refueling"
                and prev["state"] == "refueling"
            ):
                assert r["fuel_added_l"] > prev["fuel_added_l"]
        last[vid] = r
    assert {"parked", "driving", "asleep", "charging"} <= seen_states


def test_levels_rise_only_while_charging_or_refuelling(
    day: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    records, _ = day
    last: dict[str, dict[str, Any]] = {}
    for r in records:
        prev = last.get(r["vehicle_id"])
        key = "battery_level_pct" if r["powertrain"] == "ev" else "fuel_level_pct"
        if prev is not None and r[key] > prev[key] + 1e-9:
            assert r["state"] in {"charging", "refueling"} or prev["state"] in {
                "charging",
                "refueling",
            }
        last[r["vehicle_id"]] = r


def test_labels_name_existing_cars_and_lie_inside_the_run(
    day: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    records, labels = day
    vehicles = {r["vehicle_id"] for r in records}
    first = min(r["ts"] for r in records)
    last = max(r["ts"] for r in records)
    assert labels
    for label in labels:
        assert label["vehicle_id"] in vehicles
        assert first <= label["start_ts"] < label["end_ts"] <= last
        assert label["kind"] in {k.label for k in Kind}
    by_vehicle = {r["vehicle_id"]: r["powertrain"] for r in records}
    for label in labels:
        if label["kind"] == "battery_drain":
            assert by_vehicle[label["vehicle_id"]] == "ev"
        if label["kind"] == "fuel_loss":
            assert by_vehicle[label["vehicle_id"]] == "ice"


def test_injected_anomalies_are_visible_in_the_data(
    day: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    records, labels = day
    by_car: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_car[r["vehicle_id"]].append(r)
    for label in labels:
        inside = [
            r for r in by_car[label["vehicle_id"]] if label["start_ts"] <= r["ts"] < label["end_ts"]
        ]
        assert inside, label
        kind = label["kind"]
        if kind == "tire_leak":
            low = min(
                min(r["tpms_fl_bar"], r["tpms_fr_bar"], r["tpms_rl_bar"], r["tpms_rr_bar"])
                for r in inside
            )
            start = min(
                inside[0]["tpms_fl_bar"],
                inside[0]["tpms_fr_bar"],
                inside[0]["tpms_rl_bar"],
                inside[0]["tpms_rr_bar"],
            )
            assert low < start - 0.2
        elif kind == "battery_drain":
            assert all(r["state"] == "parked" for r in inside)
            assert inside[0]["battery_level_pct"] - inside[-1]["battery_level_pct"] > 0.5
        elif kind == "fuel_loss":
            assert all(r["state"] == "parked" for r in inside)
            assert inside[0]["fuel_level_pct"] > inside[-1]["fuel_level_pct"]
        elif kind == "high_consumption":
            assert all(r["state"] == "driving" for r in inside)


def test_same_seed_same_messages_different_seed_different() -> None:
    def run(seed: int) -> list[bytes]:
        return [
            orjson.dumps(r) for r in iter_records(FleetConfig(vehicles=4, duration_s=30, seed=seed))
        ]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_tesla_format_file(tmp_path: Path) -> None:
    out = tmp_path / "tesla.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "fleetstream", "simulate", "-n", "3", "--duration", "10",
         "--format", "tesla", "--output", str(out)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(rows) == 30
    assert {"car_id", "shift_state", "power", "tpms_pressure_fl", "timestamp"} <= set(rows[0])


def test_the_tesla_format_with_combustion_cars_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    # The library's callers are not forced to ev_share 1 as the CLI is: a KeyError came
    # mid-run, after the output file had been truncated.
    out = tmp_path / "tesla.jsonl"
    out.write_bytes(b"kept\n")
    config = FleetConfig(vehicles=3, duration_s=10, ev_share=0.6)
    with pytest.raises(SimulatorError, match="tesla format renders EVs only"):
        run_to_file(config, out, Format.TESLA, None)
    assert out.read_bytes() == b"kept\n"
    unreachable = MqttTarget.parse("mqtt://127.0.0.1:1")
    with pytest.raises(SimulatorError, match="tesla format renders EVs only"):
        run_to_mqtt(config, target=unreachable, fmt=Format.TESLA, topic="t/{vehicle_id}",
                    qos=1, labels=None)  # fmt: skip
    check_format(Format.TESLA, FleetConfig(vehicles=1, ev_share=1.0))
    check_format(Format.V1, config)


@pytest.mark.parametrize("duration_s", [60.0, 600.0, 4 * 3600.0, 5 * 3600.0])
def test_short_runs_with_anomalies_schedule_only_what_fits(duration_s: float) -> None:
    rng = np.random.default_rng(3)
    is_ev = np.array([True, False] * 50)
    episodes = schedule(rng, is_ev, duration_s, rate_per_day=5000.0)
    assert episodes, "a high rate must place some episodes even in a short run"
    margin = min(1800.0, duration_s / 10)
    for e in episodes:
        assert margin <= e.start_s < e.end_s <= duration_s - margin


def test_anchor_moves_event_time_of_the_run() -> None:
    fleet = Fleet(FleetConfig(vehicles=5, duration_s=10, seed=3, anomaly_rate=50.0))
    fleet.anchor(1_800_000_000_000)
    first = fleet.tick()
    # Each car's event time is the new start plus its publishing phase (< 1 period).
    assert all(0 <= r["ts"] - 1_800_000_000_000 < 1000 for r in first)
    assert all(lab["start_ts"] >= 1_800_000_000_000 for lab in fleet.labels())
    with pytest.raises(ValueError, match="before the first tick"):
        fleet.anchor(0)
