"""Builders of valid v1 records for unit tests (one copy of the field defaults)."""

from __future__ import annotations

from typing import Any

from telemetry.contract import validate

_EV_ONLY = (
    "battery_level_pct", "battery_capacity_kwh", "power_kw", "range_est_km",
    "battery_temp_c", "charger_power_kw", "charge_energy_added_kwh",
)  # fmt: skip


def make_ev(ts: int, **fields: Any) -> dict[str, Any]:
    """A valid parked EV record at ``ts``; ``fields`` override the defaults."""
    record: dict[str, Any] = {
        "schema": 1, "vehicle_id": "car-1", "ts": ts, "seq": 0,
        "powertrain": "ev", "state": "parked", "lat": 48.1, "lon": 11.5, "speed_kmh": 0.0,
        "odometer_km": 1000.0, "heading_deg": 0.0, "elevation_m": 500.0,
        "outside_temp_c": 10.0, "inside_temp_c": 20.0, "tpms_fl_bar": 2.5, "tpms_fr_bar": 2.5,
        "tpms_rl_bar": 2.5, "tpms_rr_bar": 2.5, "battery_level_pct": 80.0,
        "battery_capacity_kwh": 75.0, "power_kw": 0.3, "range_est_km": 300.0,
        "battery_temp_c": 20.0, "charger_power_kw": 0.0, "charge_energy_added_kwh": 0.0,
    }  # fmt: skip
    record.update(fields)
    return dict(validate(record))


def make_ice(ts: int, **fields: Any) -> dict[str, Any]:
    """A valid parked ICE record at ``ts``; ``fields`` override the defaults."""
    record = make_ev(ts)
    for name in _EV_ONLY:
        del record[name]
    record.update(
        vehicle_id="car-2", powertrain="ice", fuel_level_pct=50.0, fuel_tank_l=50.0,
        fuel_rate_lph=0.0, engine_rpm=0.0, coolant_temp_c=20.0, fuel_added_l=0.0,
    )  # fmt: skip
    record.update(fields)
    return dict(validate(record))
