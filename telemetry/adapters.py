"""Payload adapters: normalise incoming payloads to telemetry contract v1.

An adapter is a pure function ``bytes -> TelemetryRecord`` that raises ``ContractError``
for anything it cannot normalise. The ingest mapping rules select one by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from telemetry.contract import (
    SCHEMA_VERSION,
    ContractError,
    Problem,
    TelemetryRecord,
    decode,
    parse,
    validate,
)

Adapter = Callable[[bytes], TelemetryRecord]

# MQTTX `tesla` field -> v1 field. Fields v1 has and Tesla does not are set to null.
TESLA_NUMBERS: Final = {
    "latitude": "lat",
    "longitude": "lon",
    "speed": "speed_kmh",
    "odometer": "odometer_km",
    "heading": "heading_deg",
    "elevation": "elevation_m",
    "outside_temp": "outside_temp_c",
    "inside_temp": "inside_temp_c",
    "tpms_pressure_fl": "tpms_fl_bar",
    "tpms_pressure_fr": "tpms_fr_bar",
    "tpms_pressure_rl": "tpms_rl_bar",
    "tpms_pressure_rr": "tpms_rr_bar",
    "battery_level": "battery_level_pct",
    "power": "power_kw",
    "est_battery_range_km": "range_est_km",
    "charger_power": "charger_power_kw",
    "charge_energy_added": "charge_energy_added_kwh",
}
TESLA_ABSENT: Final = ("battery_capacity_kwh", "battery_temp_c")
_DRIVING_SHIFTS: Final = frozenset({"D", "R", "N"})


def tesla_state(state: object, shift_state: object) -> str:
    """Derive the v1 ``state`` from Tesla's ``state`` and ``shift_state``.

    charging -> charging; shift D/R/N -> driving; asleep -> asleep; else parked.
    """
    if state == "charging":
        return "charging"
    if shift_state in _DRIVING_SHIFTS:
        return "driving"
    if state == "asleep":
        return "asleep"
    return "parked"


def _tesla_number(source: Mapping[str, Any], key: str, target: str) -> float | int | None:
    value = source.get(key)
    if value is None:
        return None
    # Older faker versions in MQTTX emit latitude/longitude as numeric strings.
    if type(value) is str:
        try:
            number = float(value)
        except ValueError:
            detail = f"Tesla '{key}' {value!r} is not a number"
            raise ContractError(Problem.WRONG_TYPE, target, detail) from None
        if not math.isfinite(number):
            detail = f"Tesla '{key}' {value!r} is not finite"
            raise ContractError(Problem.NOT_FINITE, target, detail)
        return number
    if type(value) in (int, float):
        return value  # type: ignore[no-any-return]
    detail = f"Tesla '{key}' must be a number, got {type(value).__name__}"
    raise ContractError(Problem.WRONG_TYPE, target, detail)


def tesla_to_v1(source: Mapping[str, Any]) -> TelemetryRecord:
    """Map one decoded MQTTX `tesla` payload to a v1 record (``seq`` is null).

    Raises:
        ContractError: The payload cannot be normalised or the result breaks the contract.
    """
    car_id = source.get("car_id")
    if car_id is None:
        raise ContractError(Problem.MISSING, "car_id", "Tesla payload has no car_id")
    if type(car_id) is int:
        car_id = str(car_id)
    timestamp = source.get("timestamp")
    if timestamp is None:
        raise ContractError(Problem.MISSING, "timestamp", "Tesla payload has no timestamp")
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "vehicle_id": car_id,
        "ts": timestamp,
        "seq": None,
        "powertrain": "ev",
        "state": tesla_state(source.get("state"), source.get("shift_state")),
    }
    for key, target in TESLA_NUMBERS.items():
        record[target] = _tesla_number(source, key, target)
    for target in TESLA_ABSENT:
        record[target] = None
    record["source"] = "tesla"
    return validate(record, require_seq=False)


def adapt_tesla(payload: bytes) -> TelemetryRecord:
    """The ``tesla`` adapter: MQTTX CLI `tesla` scenario JSON -> v1."""
    source = decode(payload)
    if type(source) is not dict:
        detail = f"payload must be a JSON object, got {type(source).__name__}"
        raise ContractError(Problem.NOT_OBJECT, None, detail)
    return tesla_to_v1(source)


ADAPTERS: Final[Mapping[str, Adapter]] = {"v1": parse, "tesla": adapt_tesla}
# Adapters whose record is the decoded payload itself, unchanged (for contract.encode_decoded).
DECODING_ADAPTERS: Final = frozenset({"v1"})


def get_adapter(name: str) -> Adapter:
    """Look up an adapter by name.

    Raises:
        KeyError: No adapter has that name.
    """
    try:
        return ADAPTERS[name]
    except KeyError:
        msg = f"unknown adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}"
        raise KeyError(msg) from None
