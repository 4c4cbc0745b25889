"""Drives, charging and refuelling sessions and idle periods (TeslaMate-style).

A session is a run of consecutive records of one activity: ``drive`` (driving),
``charge`` (charging), ``refuel`` (refueling) and ``idle`` (parked or asleep). It is emitted
when the next record belongs to another activity. Pure functions over a dict state.
"""

from __future__ import annotations

from typing import Any, Final, TypedDict

from processing.stats import MIN_DISTANCE_KM, rate_covered

ACTIVITY: Final = {
    "driving": "drive",
    "charging": "charge",
    "refueling": "refuel",
    "parked": "idle",
    "asleep": "idle",
}
_MS_PER_HOUR: Final = 3_600_000.0
# A car silent for longer than this ends its drive, charge or refuel at its last record:
# what happened in between is not known. A drive at 30 kW followed by two silent days was
# one 48-hour, 1,440 kWh drive. A parked car may report once an hour or less; its idle
# session goes on, the last power held as before.
MAX_GAP_MS: Final = 3_600_000


class SessionRecord(TypedDict):
    """One ``vehicle-sessions`` record."""

    session_id: str
    vehicle_id: str
    powertrain: str
    kind: str
    start_ts: int
    end_ts: int
    duration_s: float
    samples: int
    distance_km: float | None
    energy_used_kwh: float | None
    energy_added_kwh: float | None
    fuel_used_l: float | None
    fuel_added_l: float | None
    consumption_wh_per_km: float | None
    consumption_l_per_100km: float | None
    level_start_pct: float | None
    level_end_pct: float | None
    drain_pct_per_h: float | None
    avg_outside_temp_c: float | None


def _level(r: dict[str, Any]) -> float | None:
    value = r["battery_level_pct"] if r["powertrain"] == "ev" else r["fuel_level_pct"]
    return float(value) if value is not None else None


def _start(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": ACTIVITY[r["state"]],
        "start_ts": r["ts"],
        "last_ts": r["ts"],
        "samples": 1,
        "odo_start": r["odometer_km"],
        "odo_end": r["odometer_km"],
        "level_start": _level(r),
        "level_end": _level(r),
        "used": 0.0,
        "added": 0.0,
        "covered": 0.0,  # hours of the session the rate was known for
        "counter": r["charge_energy_added_kwh"] if r["powertrain"] == "ev" else r["fuel_added_l"],
        "temp_sum": r["outside_temp_c"] or 0.0,
        "temp_n": 0 if r["outside_temp_c"] is None else 1,
        "rate": r["power_kw"] if r["powertrain"] == "ev" else r["fuel_rate_lph"],
    }


def _finish(vid: str, powertrain: str, s: dict[str, Any], end_ts: int) -> SessionRecord:
    ev = powertrain == "ev"
    kind = s["kind"]
    hours = (end_ts - s["start_ts"]) / _MS_PER_HOUR
    distance = None
    if s["odo_start"] is not None and s["odo_end"] is not None:
        distance = max(0.0, s["odo_end"] - s["odo_start"])
    drive = kind == "drive"
    # Energy and fuel are integrated only from a rate known over most of the session.
    known = rate_covered(s.get("covered", hours), hours)
    long_enough = known and drive and distance is not None and distance >= MIN_DISTANCE_KM
    level_drop = (
        s["level_start"] - s["level_end"]
        if s["level_start"] is not None and s["level_end"] is not None
        else None
    )
    # Session counters (energy/fuel added) restart at each session; otherwise integrate.
    counter = s["counter"]
    return SessionRecord(
        session_id=f"{vid}-{kind}-{s['start_ts']}",
        vehicle_id=vid,
        powertrain=powertrain,
        kind=kind,
        start_ts=s["start_ts"],
        end_ts=end_ts,
        duration_s=(end_ts - s["start_ts"]) / 1000.0,
        samples=s["samples"],
        distance_km=distance if drive else None,
        energy_used_kwh=s["used"] if ev and known and kind in ("drive", "idle") else None,
        energy_added_kwh=(counter if counter is not None else s["added"] if known else None)
        if ev and kind == "charge"
        else None,
        fuel_used_l=s["used"] if not ev and known and drive else None,
        fuel_added_l=(counter if counter is not None else None)
        if not ev and kind == "refuel"
        else None,
        consumption_wh_per_km=1000.0 * s["used"] / distance
        if ev and long_enough and distance
        else None,
        consumption_l_per_100km=100.0 * s["used"] / distance
        if not ev and long_enough and distance
        else None,
        level_start_pct=s["level_start"],
        level_end_pct=s["level_end"],
        drain_pct_per_h=level_drop / hours
        if kind == "idle" and level_drop is not None and hours > 0
        else None,
        avg_outside_temp_c=s["temp_sum"] / s["temp_n"] if s.get("temp_n") else None,
    )


def track(state: dict[str, Any], r: dict[str, Any]) -> list[SessionRecord]:
    """Feed one record (in ts order for the car); returns the sessions it ended."""
    current = state.get("session")
    if current is not None and r["ts"] <= current["last_ts"]:
        return []  # duplicate or out-of-order record: sessions follow the car's own clock
    kind = ACTIVITY[r["state"]]
    if current is None:
        state["session"] = _start(r)
        return []
    out: list[SessionRecord] = []
    ev = r["powertrain"] == "ev"
    gap = r["ts"] - current["last_ts"]
    if gap > MAX_GAP_MS and current["kind"] != "idle":
        out.append(_finish(r["vehicle_id"], r["powertrain"], current, current["last_ts"]))
        state["session"] = _start(r)
        return out
    # The rate reported at the previous record holds until this one.
    hours = gap / _MS_PER_HOUR
    if current["rate"] is not None:
        current["used"] += max(current["rate"], 0.0) * hours
        current["added"] += max(-current["rate"], 0.0) * hours
        covered = current.get("covered")
        if covered is None:  # kept in state before the field: covered so far
            covered = (current["last_ts"] - current["start_ts"]) / _MS_PER_HOUR
        current["covered"] = covered + hours
    if kind != current["kind"]:
        out.append(_finish(r["vehicle_id"], r["powertrain"], current, r["ts"]))
        state["session"] = _start(r)
        return out
    current["last_ts"] = r["ts"]
    current["samples"] += 1
    # The first non-null reading starts the session's odometer and level.
    if r["odometer_km"] is not None:
        current["odo_end"] = r["odometer_km"]
        if current["odo_start"] is None:
            current["odo_start"] = r["odometer_km"]
    level = _level(r)
    if level is not None:
        current["level_end"] = level
        if current["level_start"] is None:
            current["level_start"] = level
    counter = r["charge_energy_added_kwh"] if ev else r["fuel_added_l"]
    if counter is not None:
        # A null reading keeps the last one: the session otherwise fell back to the
        # integrated power (charge) or to nothing (refuel) at its last record.
        current["counter"] = counter
    if r["outside_temp_c"] is not None:
        current["temp_sum"] += r["outside_temp_c"]
        current["temp_n"] = current.get("temp_n", 0) + 1
    current["rate"] = r["power_kw"] if ev else r["fuel_rate_lph"]
    return out
