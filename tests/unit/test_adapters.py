"""The `tesla` and `v1` adapters."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import FleetConfig, iter_records, to_tesla
from telemetry.adapters import ADAPTERS, TESLA_ABSENT, adapt_tesla, get_adapter, tesla_state
from telemetry.contract import ContractError, Problem

pytestmark = pytest.mark.unit

# Shape of one message from MQTTX CLI `simulate -sc tesla` (values as its generator draws them,
# latitude/longitude as the strings older faker versions return).
MQTTX_SAMPLE: dict[str, Any] = {
    "car_id": "1FTEW1E51JKD12345",
    "display_name": "Ana's Tesla",
    "model": "3",
    "trim_badging": "lorem",
    "exterior_color": "red",
    "wheel_type": "ipsum",
    "spoiler_type": "dolor",
    "geofence": "Springfield",
    "state": "online",
    "since": "2026-11-20T10:00:00.000Z",
    "healthy": True,
    "version": "1.2.3",
    "update_available": False,
    "update_version": "1.2.4",
    "latitude": "-23.4567",
    "longitude": "151.2093",
    "shift_state": "D",
    "power": -4312,
    "speed": 87,
    "heading": 120,
    "elevation": 40,
    "locked": True,
    "sentry_mode": False,
    "windows_open": False,
    "doors_open": False,
    "trunk_open": False,
    "frunk_open": False,
    "is_user_present": True,
    "is_climate_on": True,
    "inside_temp": 21.5,
    "outside_temp": 12.1,
    "is_preconditioning": False,
    "odometer": 43210,
    "est_battery_range_km": 321.4,
    "rated_battery_range_km": 330.0,
    "ideal_battery_range_km": 340.0,
    "battery_level": 66,
    "usable_battery_level": 65,
    "plugged_in": False,
    "charge_energy_added": 12.34,
    "charge_limit_soc": 90,
    "charge_port_door_open": False,
    "charger_actual_current": 16.0,
    "charger_power": 11,
    "charger_voltage": 230,
    "charge_current_request": 16,
    "charge_current_request_max": 32,
    "scheduled_charging_start_time": "2026-11-25T01:00:00.000Z",
    "time_to_full_charge": 2.5,
    "tpms_pressure_fl": 2.9,
    "tpms_pressure_fr": 2.8,
    "tpms_pressure_rl": 3.0,
    "tpms_pressure_rr": 2.7,
    "timestamp": 1_795_000_000_000,
}


def test_mqttx_payload_maps_to_v1() -> None:
    record = adapt_tesla(orjson.dumps(MQTTX_SAMPLE))
    assert record["vehicle_id"] == "1FTEW1E51JKD12345"
    assert record["ts"] == 1_795_000_000_000
    assert record["seq"] is None
    assert record["powertrain"] == "ev"
    assert record["state"] == "driving"
    assert record["lat"] == pytest.approx(-23.4567)
    assert record["lon"] == pytest.approx(151.2093)
    assert record["power_kw"] == -4312
    assert record["speed_kmh"] == 87
    assert record["odometer_km"] == 43210
    assert record["battery_level_pct"] == 66
    assert record["range_est_km"] == 321.4
    assert record["tpms_rl_bar"] == 3.0
    assert record["charge_energy_added_kwh"] == 12.34
    assert record["charger_power_kw"] == 11
    for name in TESLA_ABSENT:
        assert record[name] is None  # never invented


@pytest.mark.parametrize(
    ("state", "shift", "expected"),
    [
        ("charging", "D", "charging"),
        ("online", "D", "driving"),
        ("online", "R", "driving"),
        ("asleep", "N", "driving"),
        ("asleep", "P", "asleep"),
        ("online", "P", "parked"),
        ("online", None, "parked"),
        (None, None, "parked"),
    ],
)
def test_state_derivation(state: object, shift: object, expected: str) -> None:
    assert tesla_state(state, shift) == expected


def test_missing_fields_become_null() -> None:
    sparse = {"car_id": "CAR1", "timestamp": 1_795_000_000_000, "state": "asleep"}
    record = adapt_tesla(orjson.dumps(sparse))
    assert record["state"] == "asleep"
    assert record["speed_kmh"] is None
    assert record["battery_level_pct"] is None


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"car_id": None}, "car_id", Problem.MISSING),
        ({"timestamp": None}, "timestamp", Problem.MISSING),
        ({"car_id": "has space"}, "vehicle_id", Problem.BAD_VALUE),
        ({"latitude": "north"}, "lat", Problem.WRONG_TYPE),
        ({"latitude": "nan"}, "lat", Problem.NOT_FINITE),
        ({"speed": True}, "speed_kmh", Problem.WRONG_TYPE),
        ({"battery_level": 140}, "battery_level_pct", Problem.OUT_OF_RANGE),
    ],
)
def test_bad_tesla_payloads_are_rejected_with_reason(
    change: dict[str, Any], field: str, problem: Problem
) -> None:
    with pytest.raises(ContractError) as info:
        adapt_tesla(orjson.dumps({**MQTTX_SAMPLE, **change}))
    assert info.value.field == field
    assert info.value.problem is problem


def test_simulated_tesla_payloads_round_trip_through_the_adapter() -> None:
    config = FleetConfig(
        vehicles=5, duration_s=300, seed=4, ev_share=1.0, id_prefix="5YJSIM", id_width=11
    )
    for record in iter_records(config):
        normalised = adapt_tesla(orjson.dumps(to_tesla(record)))
        assert normalised["vehicle_id"] == record["vehicle_id"]
        assert normalised["ts"] == record["ts"]
        assert normalised["state"] in {record["state"], "parked"}
        assert normalised["battery_level_pct"] == round(record["battery_level_pct"])


def test_registry() -> None:
    assert set(ADAPTERS) == {"v1", "tesla"}
    assert get_adapter("tesla") is adapt_tesla
    with pytest.raises(KeyError, match="unknown adapter"):
        get_adapter("nope")


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=200))
def test_tesla_adapter_never_crashes_on_bytes(payload: bytes) -> None:
    try:
        adapt_tesla(payload)
    except ContractError as exc:
        assert exc.reason


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(sorted(MQTTX_SAMPLE)),
    value=st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.lists(st.integers()),
)
def test_tesla_adapter_any_field_value(key: str, value: object) -> None:
    try:
        adapt_tesla(orjson.dumps({**MQTTX_SAMPLE, key: value}, option=orjson.OPT_SERIALIZE_NUMPY))
    except ContractError as exc:
        assert exc.reason
    except orjson.JSONEncodeError:
        pass
