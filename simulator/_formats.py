"""Output formats: v1 (the contract) and MQTTX-style `tesla` payloads."""

from __future__ import annotations

import zlib
from enum import StrEnum
from typing import Any, Final

import orjson

DEFAULT_V1_TOPIC: Final = "fleet/{vehicle_id}/telemetry"
DEFAULT_TESLA_TOPIC: Final = "mqttx/simulate/tesla/{vehicle_id}"
_MODELS: Final = ("S", "3", "X", "Y")


class Format(StrEnum):
    """Payload format published by the simulator."""

    V1 = "v1"
    TESLA = "tesla"


def default_topic(fmt: Format) -> str:
    """MQTT topic template for a format."""
    return DEFAULT_TESLA_TOPIC if fmt is Format.TESLA else DEFAULT_V1_TOPIC


def to_tesla(record: dict[str, Any]) -> dict[str, Any]:
    """Render a v1 EV record as an MQTTX `tesla` scenario payload, consistently.

    Unlike MQTTX, every value follows from the simulated car, so ``state``,
    ``shift_state``, ``speed`` and ``power`` agree with each other.
    """
    state = record["state"]
    charging = state == "charging"
    vid = record["vehicle_id"]
    return {
        "car_id": vid,
        "display_name": f"Sim {vid}",
        "model": _MODELS[zlib.crc32(vid.encode()) % len(_MODELS)],
        "state": "charging" if charging else ("asleep" if state == "asleep" else "online"),
        "healthy": True,
        "latitude": record["lat"],
        "longitude": record["lon"],
        "shift_state": "D" if state == "driving" else "P",
        "power": round(record["power_kw"]),
        "speed": round(record["speed_kmh"]),
        "heading": round(record["heading_deg"]),
        "elevation": round(record["elevation_m"]),
        "inside_temp": round(record["inside_temp_c"], 1),
        "outside_temp": round(record["outside_temp_c"], 1),
        "odometer": round(record["odometer_km"], 2),
        "est_battery_range_km": record["range_est_km"],
        "battery_level": round(record["battery_level_pct"]),
        "usable_battery_level": round(record["battery_level_pct"]),
        "plugged_in": charging,
        "charge_energy_added": round(record["charge_energy_added_kwh"], 2),
        "charger_power": round(record["charger_power_kw"]),
        "charger_voltage": 230 if charging else 0,
        "tpms_pressure_fl": round(record["tpms_fl_bar"], 1),
        "tpms_pressure_fr": round(record["tpms_fr_bar"], 1),
        "tpms_pressure_rl": round(record["tpms_rl_bar"], 1),
        "tpms_pressure_rr": round(record["tpms_rr_bar"], 1),
        "timestamp": record["ts"],
    }


def render(record: dict[str, Any], fmt: Format) -> bytes:
    """Serialise one record in the given format."""
    if fmt is Format.TESLA:
        return orjson.dumps(to_tesla(record))
    return orjson.dumps(record)
