"""Sessions: drives, charges, refuels and idle periods from hand-made record sequences."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from processing.sessions import MAX_GAP_MS, SessionRecord, track

from .records import make_ev, make_ice

pytestmark = pytest.mark.unit

T0 = 1_767_225_600_000
MIN_MS = 60_000
HOUR_MS = 3_600_000


def ev(ts: int, state: str, **fields: Any) -> dict[str, Any]:
    """A valid v1 EV record; ``fields`` override the defaults."""
    return make_ev(ts, **{"state": state, "seq": (ts - T0) // 1000, "power_kw": 0.0, **fields})


def ice(ts: int, state: str, **fields: Any) -> dict[str, Any]:
    """A valid v1 ICE record; ``fields`` override the defaults."""
    return make_ice(ts, **{"state": state, "seq": (ts - T0) // 1000, **fields})


def feed(records: list[dict[str, Any]]) -> list[SessionRecord]:
    """Track every record with one state; returns every emitted session."""
    state: dict[str, Any] = {}
    out: list[SessionRecord] = []
    for record in records:
        out += track(state, record)
    return out


def ev_drive() -> list[dict[str, Any]]:
    """A 30-minute EV drive of 18 km, then the car parks (same odometer)."""
    return [
        ev(T0, "driving", odometer_km=100.0, power_kw=20.0, battery_level_pct=80.0,
           outside_temp_c=8.0),
        ev(T0 + 10 * MIN_MS, "driving", odometer_km=110.0, power_kw=15.0,
           battery_level_pct=78.0, outside_temp_c=10.0),
        ev(T0 + 20 * MIN_MS, "driving", odometer_km=118.0, power_kw=10.0,
           battery_level_pct=76.5, outside_temp_c=12.0),
        ev(T0 + 30 * MIN_MS, "parked", odometer_km=118.0, power_kw=0.5, battery_level_pct=76.0),
    ]  # fmt: skip


def test_a_drive_followed_by_idle_emits_one_drive_session() -> None:
    state: dict[str, Any] = {}
    emitted = [track(state, r) for r in ev_drive()]
    assert emitted[:3] == [[], [], []]  # nothing until the activity changes
    assert len(emitted[3]) == 1
    assert emitted[3][0] == pytest.approx(
        {
            "session_id": f"car-1-drive-{T0}",
            "vehicle_id": "car-1",
            "powertrain": "ev",
            "kind": "drive",
            "start_ts": T0,
            "end_ts": T0 + 30 * MIN_MS,  # the first record of the next session
            "duration_s": 1800.0,
            "samples": 3,
            "distance_km": 18.0,  # 118 - 100
            # (20 + 15 + 10) kW x 1/6 h: each rate holds until the next record.
            "energy_used_kwh": 7.5,
            "energy_added_kwh": None,
            "fuel_used_l": None,
            "fuel_added_l": None,
            "consumption_wh_per_km": 7500.0 / 18.0,
            "consumption_l_per_100km": None,
            "level_start_pct": 80.0,
            "level_end_pct": 76.5,
            "drain_pct_per_h": None,
            "avg_outside_temp_c": 10.0,
        }
    )
    assert state["session"]["kind"] == "idle"


def test_ice_drive_reports_fuel_and_litres_per_100km() -> None:
    records = [
        ice(T0, "driving", odometer_km=50.0, fuel_rate_lph=6.0),
        ice(T0 + 30 * MIN_MS, "driving", odometer_km=80.0, fuel_rate_lph=12.0),
        ice(T0 + HOUR_MS, "parked", odometer_km=80.0),
    ]
    [session] = feed(records)
    assert session["kind"] == "drive"
    assert session["distance_km"] == pytest.approx(30.0)
    assert session["fuel_used_l"] == pytest.approx(9.0)  # 6 x 0.5 + 12 x 0.5
    assert session["consumption_l_per_100km"] == pytest.approx(30.0)
    assert session["energy_used_kwh"] is None
    assert session["consumption_wh_per_km"] is None


def test_a_drive_shorter_than_a_tenth_of_a_kilometre_has_no_consumption() -> None:
    records = [
        ev(T0, "driving", odometer_km=10.0, power_kw=5.0),
        ev(T0 + MIN_MS, "driving", odometer_km=10.05, power_kw=5.0),
        ev(T0 + 2 * MIN_MS, "parked", odometer_km=10.05),
    ]
    [session] = feed(records)
    assert session["distance_km"] == pytest.approx(0.05)
    assert session["energy_used_kwh"] == pytest.approx(5.0 * 2 / 60)
    assert session["consumption_wh_per_km"] is None


def test_charge_session_energy_added_comes_from_the_counter() -> None:
    records = [
        ev(T0, "parked", battery_level_pct=30.0),
        ev(T0 + MIN_MS, "charging", power_kw=-22.0, charge_energy_added_kwh=0.0,
           battery_level_pct=30.0),
        ev(T0 + 11 * MIN_MS, "charging", power_kw=-22.0, charge_energy_added_kwh=2.0,
           battery_level_pct=33.0),
        ev(T0 + 21 * MIN_MS, "charging", power_kw=-22.0, charge_energy_added_kwh=5.5,
           battery_level_pct=37.0),
        ev(T0 + 31 * MIN_MS, "parked", battery_level_pct=40.0, charge_energy_added_kwh=5.5),
    ]  # fmt: skip
    sessions = feed(records)
    assert [s["kind"] for s in sessions] == ["idle", "charge"]
    charge = sessions[1]
    # The counter says 5.5 kWh; integrating -22 kW over 30 min would give 11 kWh.
    assert charge["energy_added_kwh"] == pytest.approx(5.5)
    assert charge["energy_used_kwh"] is None
    assert charge["distance_km"] is None
    assert (charge["start_ts"], charge["end_ts"], charge["samples"]) == (
        T0 + MIN_MS, T0 + 31 * MIN_MS, 3,
    )  # fmt: skip
    assert (charge["level_start_pct"], charge["level_end_pct"]) == (30.0, 37.0)


def test_charge_without_counter_integrates_the_charging_power() -> None:
    records = [
        ev(T0, "charging", power_kw=-22.0, charge_energy_added_kwh=None),
        ev(T0 + 15 * MIN_MS, "charging", power_kw=-11.0, charge_energy_added_kwh=None),
        ev(T0 + 45 * MIN_MS, "parked"),
    ]
    [charge] = feed(records)
    assert charge["energy_added_kwh"] == pytest.approx(22.0 / 4 + 11.0 / 2)


def test_refuel_session_fuel_added_comes_from_the_counter() -> None:
    records = [
        ice(T0, "refueling", fuel_added_l=0.0, fuel_level_pct=10.0),
        ice(T0 + MIN_MS, "refueling", fuel_added_l=10.0, fuel_level_pct=30.0),
        ice(T0 + 2 * MIN_MS, "refueling", fuel_added_l=25.0, fuel_level_pct=60.0),
        ice(T0 + 3 * MIN_MS, "parked", fuel_added_l=25.0, fuel_level_pct=60.0),
    ]
    [refuel] = feed(records)
    assert refuel["kind"] == "refuel"
    assert refuel["fuel_added_l"] == pytest.approx(25.0)
    assert refuel["fuel_used_l"] is None
    assert (refuel["level_start_pct"], refuel["level_end_pct"]) == (10.0, 60.0)


def test_idle_session_drain_rate_and_vampire_energy() -> None:
    records = [
        ev(T0, "parked", battery_level_pct=80.0, power_kw=0.5, outside_temp_c=4.0),
        ev(T0 + HOUR_MS, "asleep", battery_level_pct=79.5, power_kw=0.25, outside_temp_c=6.0),
        ev(T0 + 2 * HOUR_MS, "asleep", battery_level_pct=79.0, power_kw=0.25,
           outside_temp_c=8.0),
        ev(T0 + 4 * HOUR_MS, "driving", battery_level_pct=79.0, power_kw=15.0),
    ]  # fmt: skip
    [idle] = feed(records)  # parked and asleep are one idle session
    assert idle["kind"] == "idle"
    assert idle["session_id"] == f"car-1-idle-{T0}"
    assert idle["samples"] == 3
    assert idle["duration_s"] == 4 * 3600.0
    # 1 % lost over the session's 4 h.
    assert idle["drain_pct_per_h"] == pytest.approx(0.25)
    assert idle["energy_used_kwh"] == pytest.approx(0.5 + 0.25 + 0.25 * 2)
    assert idle["avg_outside_temp_c"] == pytest.approx(6.0)
    assert idle["distance_km"] is None
    assert idle["consumption_wh_per_km"] is None


def test_ice_idle_reports_neither_fuel_nor_energy_used() -> None:
    [idle] = feed([ice(T0, "parked"), ice(T0 + MIN_MS, "parked"), ice(T0 + 2 * MIN_MS, "driving")])
    assert idle["fuel_used_l"] is None
    assert idle["energy_used_kwh"] is None
    assert idle["drain_pct_per_h"] == 0.0


def test_every_change_of_activity_ends_a_session() -> None:
    records = [
        ev(T0, "parked"),
        ev(T0 + MIN_MS, "driving"),
        ev(T0 + 2 * MIN_MS, "charging"),
        ev(T0 + 3 * MIN_MS, "charging"),
        ev(T0 + 4 * MIN_MS, "asleep"),
        ev(T0 + 5 * MIN_MS, "parked"),
        ev(T0 + 6 * MIN_MS, "driving"),
    ]
    sessions = feed(records)
    assert [(s["kind"], s["start_ts"] - T0, s["end_ts"] - T0) for s in sessions] == [
        ("idle", 0, MIN_MS),
        ("drive", MIN_MS, 2 * MIN_MS),
        ("charge", 2 * MIN_MS, 4 * MIN_MS),
        ("idle", 4 * MIN_MS, 6 * MIN_MS),
    ]


def test_duplicate_and_out_of_order_records_are_ignored() -> None:
    drive = ev_drive()
    state: dict[str, Any] = {}
    out: list[SessionRecord] = []
    for record in drive[:2]:
        out += track(state, record)
    before = copy.deepcopy(state)
    assert track(state, dict(drive[1])) == []  # redelivered duplicate
    # An older record (even of another activity) must not end the session.
    assert track(state, ev(T0 + 5 * MIN_MS, "parked", odometer_km=500.0, power_kw=99.0)) == []
    assert track(state, drive[0]) == []
    assert state == before
    for record in drive[2:]:
        out += track(state, record)
    assert out == feed(ev_drive())
    assert len(out) == 1


def test_the_first_record_starts_a_session_and_emits_nothing() -> None:
    state: dict[str, Any] = {}
    assert track(state, ev(T0, "charging")) == []
    assert state["session"]["kind"] == "charge"
    assert state["session"]["start_ts"] == T0


def test_null_outside_temperatures_do_not_pull_the_average_down() -> None:
    records = [
        ev(T0, "parked", outside_temp_c=10.0),
        ev(T0 + MIN_MS, "parked", outside_temp_c=None),
        ev(T0 + 2 * MIN_MS, "parked", outside_temp_c=10.0),
        ev(T0 + 3 * MIN_MS, "driving"),
    ]
    [idle] = feed(records)
    assert idle["avg_outside_temp_c"] == pytest.approx(10.0)


def test_a_null_odometer_on_the_first_record_does_not_lose_the_distance() -> None:
    records = [
        ev(T0, "driving", odometer_km=None, power_kw=10.0),
        ev(T0 + MIN_MS, "driving", odometer_km=100.0, power_kw=10.0),
        ev(T0 + 2 * MIN_MS, "driving", odometer_km=101.5, power_kw=10.0),
        ev(T0 + 3 * MIN_MS, "parked", odometer_km=101.5),
    ]
    [drive] = feed(records)
    assert drive["distance_km"] == pytest.approx(1.5)


def test_a_long_silence_ends_a_drive_at_its_last_record() -> None:
    # Two silent days held the 30 kW: one 48-hour drive of 1,440 kWh. Now the drive ends
    # at its last record, and the car's next drive is a session of its own.
    drive = [ev(T0 + i * MIN_MS, "driving", power_kw=30.0, odometer_km=10.0 + i) for i in range(3)]
    later = T0 + 2 * MIN_MS + MAX_GAP_MS + 1
    records = [
        *drive,
        ev(later, "driving", power_kw=30.0, odometer_km=20.0),
        ev(later + MIN_MS, "parked", odometer_km=21.0),
    ]
    first, second = feed(records)
    assert (first["kind"], first["end_ts"], first["duration_s"]) == (
        "drive",
        T0 + 2 * MIN_MS,
        120.0,
    )
    assert first["energy_used_kwh"] == pytest.approx(30.0 * 2 / 60)
    assert (second["kind"], second["start_ts"]) == ("drive", later)
    assert second["energy_used_kwh"] == pytest.approx(30.0 / 60)
    # A parked car that reports rarely keeps one idle session (and its held power).
    idle = [ev(T0 + i * 2 * HOUR_MS, "asleep", power_kw=0.1) for i in range(3)]
    [session] = feed([*idle, ev(T0 + 6 * HOUR_MS, "driving")])
    assert session["energy_used_kwh"] == pytest.approx(0.6)


def test_a_null_counter_at_the_end_of_a_charge_keeps_the_last_reading() -> None:
    records = [
        ev(T0 + i * MIN_MS, "charging", power_kw=-11.0,
           charge_energy_added_kwh=i * 0.18 if i < 9 else None)
        for i in range(10)
    ]  # fmt: skip
    [charge] = feed([*records, ev(T0 + 10 * MIN_MS, "parked")])
    # The integrated power (1.83 kWh) replaced the counter's 1.44 at a null last reading.
    assert charge["energy_added_kwh"] == pytest.approx(1.44)


@pytest.mark.parametrize("kind", ["ev", "ice"])
def test_a_drive_without_a_known_rate_has_no_energy_and_no_consumption(kind: str) -> None:
    # Before 2026-12-05 a source reporting no power or fuel rate (a Tesla payload
    # without power) gave drives of 0 kWh and 0 Wh/km.
    make = ev if kind == "ev" else ice
    rate = "power_kw" if kind == "ev" else "fuel_rate_lph"
    records = [
        make(T0, "driving", odometer_km=100.0, **{rate: None}),
        make(T0 + 10 * MIN_MS, "driving", odometer_km=110.0, **{rate: 12.0}),
        make(T0 + 20 * MIN_MS, "driving", odometer_km=118.0, **{rate: None}),
        make(T0 + 30 * MIN_MS, "parked", odometer_km=118.0),
    ]
    [drive] = feed(records)  # the rate known for 10 of 30 minutes
    assert drive["distance_km"] == 18.0
    assert drive["energy_used_kwh"] is None
    assert drive["fuel_used_l"] is None
    assert drive["consumption_wh_per_km"] is None
    assert drive["consumption_l_per_100km"] is None


def test_a_charge_without_counter_or_power_has_no_energy_added() -> None:
    records = [
        ev(T0, "charging", power_kw=None, charge_energy_added_kwh=None),
        ev(T0 + 15 * MIN_MS, "charging", power_kw=None, charge_energy_added_kwh=None),
        ev(T0 + 45 * MIN_MS, "parked"),
    ]
    [charge] = feed(records)
    assert charge["energy_added_kwh"] is None


def test_a_session_kept_in_state_before_the_coverage_field_still_integrates() -> None:
    # State written by an older build has no "covered": its span so far counts as known.
    state: dict[str, Any] = {}
    drive = ev_drive()
    for record in drive[:2]:
        assert track(state, record) == []
    del state["session"]["covered"]
    state = copy.deepcopy(state)
    out = track(state, drive[2]) + track(state, drive[3])
    assert out[0]["energy_used_kwh"] == pytest.approx(7.5)
