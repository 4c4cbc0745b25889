"""Pure computations behind the dashboard's numbers, maps and tables.

Nothing here touches Streamlit or Kafka: every function takes copies from
:class:`dashboard.view.FleetView` and an explicit ``now_ms``, so the tests can pin time.
Stats windows and sessions come as tables of floats (:mod:`dashboard.rows`: NaN is null)
and are computed on with numpy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TypedDict

import numpy as np
import numpy.typing as npt

from dashboard.rows import SESSION, SESSION_KINDS, WINDOW, CarSample, Table
from dashboard.view import AlertEntry, FleetSnapshot, SessionTable
from processing.detectors import KINDS, SEVERITY
from telemetry.contract import POWERTRAINS

SEVERITIES: Final = ("critical", "high", "warning", "info")
ALERT_KINDS: Final = KINDS
SEVERITY_OF_KIND: Final = SEVERITY
STATES_DRIVING: Final = frozenset({"driving"})
STATES_ENERGY: Final = frozenset({"charging", "refueling"})
VERDICTS: Final = ("acknowledged", "false_positive")
_EV: Final = float(POWERTRAINS.index("ev"))
_ICE: Final = float(POWERTRAINS.index("ice"))
_IDLE: Final = float(SESSION_KINDS.index("idle"))

Mask = npt.NDArray[np.bool_]

# RGBA map colours: an active alert's severity wins over the car's state.
SEVERITY_COLOURS: Final = {
    "critical": (214, 39, 40, 230),
    "high": (255, 127, 14, 230),
    "warning": (230, 190, 0, 230),
    "info": (31, 119, 180, 230),
}
STATE_COLOURS: Final = {
    "driving": (44, 160, 44, 200),
    "charging": (148, 103, 189, 200),
    "refueling": (23, 190, 207, 200),
    "parked": (127, 127, 127, 200),
    "asleep": (90, 90, 90, 160),
}
OFFLINE_COLOUR: Final = (200, 200, 200, 120)


@dataclass(frozen=True, slots=True)
class FleetKpis:
    """The fleet overview's headline numbers.

    Attributes:
        cars: Cars the dashboard knows.
        online: Cars whose latest telemetry is at most ``online_ms`` old.
        driving: Online cars driving.
        charging: Online cars charging or refuelling.
        active_alerts: Active alert episodes by severity, false positives left out.
        ev_wh_per_km: Fleet EV consumption over the KPI period, distance-weighted.
        ice_l_per_100km: Fleet ICE consumption over the KPI period, distance-weighted.
        completeness_pct: Received / expected records (by ``seq``) over the KPI period.
    """

    cars: int
    online: int
    driving: int
    charging: int
    active_alerts: dict[str, int]
    ev_wh_per_km: float | None
    ice_l_per_100km: float | None
    completeness_pct: float | None

    @property
    def active_total(self) -> int:
        """All active alerts."""
        return sum(self.active_alerts.values())


class MapPoint(TypedDict):
    """One car on the map.

    ``position`` is empty when the point is the latest sample's position, else it says
    since when the car's position is unknown (the point is its last known one).
    """

    vehicle_id: str
    lat: float
    lon: float
    state: str
    alert: str
    colour: list[int]
    online: bool
    position: str


class TemperatureBin(TypedDict):
    """Consumption of one powertrain in one outside-temperature bin."""

    powertrain: str
    temp_c: float
    consumption: float
    unit: str
    windows: int
    distance_km: float


class IdleDrain(TypedDict):
    """Idle (vampire) drain of one car over its kept idle sessions."""

    vehicle_id: str
    powertrain: str
    idle_h: float
    drain_pct_per_h: float
    sessions: int


def is_online(sample: CarSample, now_ms: int, online_ms: int) -> bool:
    """Whether a car's latest sample is recent enough to call the car online."""
    return now_ms - sample["ts"] <= online_ms


def active_alerts(alerts: Iterable[AlertEntry]) -> list[AlertEntry]:
    """Active episodes that no operator marked as false positive."""
    return [a for a in alerts if a["active"] and a["verdict"] != "false_positive"]


def worst_alert_by_car(alerts: Iterable[AlertEntry]) -> dict[str, str]:
    """The most severe active alert severity of each car."""
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    worst: dict[str, str] = {}
    for alert in active_alerts(alerts):
        vid, sev = alert["vehicle_id"], alert["severity"]
        if vid not in worst or rank.get(sev, 99) < rank.get(worst[vid], 99):
            worst[vid] = sev
    return worst


def _moved(windows: Table) -> Mask:
    """Windows with a distance other than 0 (and not null)."""
    distance = windows[:, WINDOW["distance_km"]]
    moved: Mask = (distance != 0) & ~np.isnan(distance)
    return moved


def _consuming(windows: Table, powertrain: float) -> Mask:
    """Windows of a powertrain with a distance and that powertrain's consumption value."""
    column = "consumption_wh_per_km" if powertrain == _EV else "consumption_l_per_100km"
    chosen: Mask = (
        (windows[:, WINDOW["powertrain"]] == powertrain)
        & _moved(windows)
        & ~np.isnan(windows[:, WINDOW[column]])
    )
    return chosen


def _used(windows: Table, powertrain: float, chosen: Mask) -> Table:
    """Energy (kWh) or fuel (L) used in the chosen windows, null as 0."""
    column = "energy_used_kwh" if powertrain == _EV else "fuel_used_l"
    used: Table = windows[chosen, WINDOW[column]]
    used[np.isnan(used)] = 0.0
    return used


def fleet_consumption(windows: Table) -> tuple[float | None, float | None]:
    """Distance-weighted EV Wh/km and ICE L/100 km over windows with a consumption value.

    A ratio of sums, not a mean of per-window ratios, so short windows do not dominate.
    """
    distance = windows[:, WINDOW["distance_km"]]
    out: list[float | None] = []
    for powertrain, factor in ((_EV, 1000.0), (_ICE, 100.0)):
        chosen = _consuming(windows, powertrain)
        km = float(distance[chosen].sum())
        used = float(_used(windows, powertrain, chosen).sum())
        out.append(factor * used / km if km > 0 else None)
    return out[0], out[1]


def completeness(windows: Table) -> float | None:
    """Percent of the records the cars numbered (seq) that arrived, or None without seqs."""
    missing = windows[:, WINDOW["missing"]]
    numbered = ~np.isnan(missing)
    got = float(windows[numbered, WINDOW["samples"]].sum())
    expected = got + float(missing[numbered].sum())
    return 100.0 * got / expected if expected else None


def fleet_kpis(snapshot: FleetSnapshot, now_ms: int, online_ms: int, period_ms: int) -> FleetKpis:
    """Headline numbers of the fleet at ``now_ms``.

    Args:
        snapshot: A view snapshot.
        now_ms: The time to judge "online" and the KPI period against.
        online_ms: A car is online if its latest telemetry is at most this old.
        period_ms: Consumption and completeness cover windows ending in the last period.
    """
    online = [s for s in snapshot.latest.values() if is_online(s, now_ms, online_ms)]
    windows = snapshot.recent_windows
    in_period = windows[:, WINDOW["window_end"]] >= now_ms - period_ms
    # Usually all are (the snapshot was taken for the period): no copy of the table then.
    recent = windows if in_period.all() else windows[in_period]
    ev, ice = fleet_consumption(recent)
    by_severity = Counter(a["severity"] for a in active_alerts(snapshot.alerts))
    return FleetKpis(
        cars=len(snapshot.powertrains),
        online=len(online),
        driving=sum(1 for s in online if s["state"] in STATES_DRIVING),
        charging=sum(1 for s in online if s["state"] in STATES_ENERGY),
        active_alerts={sev: by_severity.get(sev, 0) for sev in SEVERITIES},
        ev_wh_per_km=ev,
        ice_l_per_100km=ice,
        completeness_pct=completeness(recent),
    )


def map_points(snapshot: FleetSnapshot, now_ms: int, online_ms: int) -> list[MapPoint]:
    """One point per car with a known position, coloured by active alert, else by state.

    A car whose latest sample has no position (a GPS gap; null is valid) is drawn at its
    last known position, marked stale: it used to vanish from the map with its alerts.
    """
    worst = worst_alert_by_car(snapshot.alerts)
    points: list[MapPoint] = []
    for vid, sample in sorted(snapshot.latest.items()):
        lat, lon = sample["lat"], sample["lon"]
        position = ""
        # pydeck and st.map reject NaN/None positions.
        if lat is None or lon is None or not (math.isfinite(lat) and math.isfinite(lon)):
            fix = snapshot.last_fixes.get(vid)
            if fix is None:
                continue  # never had a position: listed under the map if it has an alert
            fix_ts, lat, lon = fix
            since = datetime.fromtimestamp(fix_ts / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
            position = f"stale: last known position at {since} UTC"
        online = is_online(sample, now_ms, online_ms)
        alert = worst.get(vid, "")
        if alert:
            colour = SEVERITY_COLOURS.get(alert, SEVERITY_COLOURS["info"])
        elif online:
            colour = STATE_COLOURS.get(sample["state"], OFFLINE_COLOUR)
        else:
            colour = OFFLINE_COLOUR
        points.append(
            MapPoint(
                vehicle_id=vid,
                lat=float(lat),
                lon=float(lon),
                state=sample["state"] if online else f"offline ({sample['state']})",
                alert=alert,
                colour=list(colour),
                online=online,
                position=position,
            )
        )
    return points


def alerts_off_the_map(snapshot: FleetSnapshot, points: Iterable[MapPoint]) -> dict[str, str]:
    """Cars with an active alert that the map cannot show (no known position), by severity.

    Sorted by car id: the worst active severity of each car.
    """
    drawn = {p["vehicle_id"] for p in points}
    worst = worst_alert_by_car(snapshot.alerts)
    return {vid: worst[vid] for vid in sorted(worst) if vid not in drawn}


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything the fleet overview page shows, computed once for every browser session.

    Attributes:
        kpis: The headline numbers.
        points: The map's points.
        off_map: Cars with an active alert and no known position, with its severity.
        newest_active: The newest active alerts (not false positives), newest first.
    """

    kpis: FleetKpis
    points: list[MapPoint]
    off_map: dict[str, str]
    newest_active: list[AlertEntry]


def overview(
    snapshot: FleetSnapshot, now_ms: int, online_ms: int, period_ms: int, newest: int = 10
) -> Overview:
    """The fleet overview page's content at ``now_ms`` (see :func:`fleet_kpis`)."""
    points = map_points(snapshot, now_ms, online_ms)
    return Overview(
        kpis=fleet_kpis(snapshot, now_ms, online_ms, period_ms),
        points=points,
        off_map=alerts_off_the_map(snapshot, points),
        newest_active=active_alerts(snapshot.alerts)[:newest],
    )


def filter_alerts(
    alerts: Iterable[AlertEntry],
    *,
    kinds: Sequence[str] = (),
    severities: Sequence[str] = (),
    cars: Sequence[str] = (),
    active_only: bool = False,
) -> list[AlertEntry]:
    """Alerts matching every given filter (an empty filter matches all), order kept."""
    return [
        a
        for a in alerts
        if (not kinds or a["kind"] in kinds)
        and (not severities or a["severity"] in severities)
        and (not cars or a["vehicle_id"] in cars)
        and (not active_only or a["active"])
    ]


def consumption_by_temperature(tables: Iterable[Table], bin_c: float = 5.0) -> list[TemperatureBin]:
    """Distance-weighted consumption per powertrain and outside-temperature bin (TeslaMate).

    Only driving windows with a consumption value and an outside temperature count. A bin
    is labelled by its lower edge (5 °C bins: -5 means [-5, 0) °C). The windows come in
    tables (the view's chunks), summed up one at a time.
    """
    used: dict[tuple[float, float], list[float]] = {}
    for windows in tables:
        temp = windows[:, WINDOW["avg_outside_temp_c"]]
        for powertrain in (_EV, _ICE):
            chosen = _consuming(windows, powertrain) & ~np.isnan(temp)
            if not chosen.any():
                continue
            bins, which = np.unique(np.floor(temp[chosen] / bin_c) * bin_c, return_inverse=True)
            amounts = np.bincount(which, weights=_used(windows, powertrain, chosen))
            distances = np.bincount(which, weights=windows[chosen, WINDOW["distance_km"]])
            counts = np.bincount(which)
            for i, temp_bin in enumerate(bins.tolist()):
                acc = used.setdefault((powertrain, temp_bin), [0.0, 0.0, 0.0])
                acc[0] += float(amounts[i])
                acc[1] += float(distances[i])
                acc[2] += float(counts[i])
    rows: list[TemperatureBin] = []
    for (powertrain, temp_bin), (amount, distance, windows_n) in sorted(used.items()):
        if distance == 0:
            continue
        ev = powertrain == _EV
        rows.append(
            TemperatureBin(
                powertrain=POWERTRAINS[int(powertrain)],
                temp_c=temp_bin,
                consumption=(1000.0 if ev else 100.0) * amount / distance,
                unit="Wh/km" if ev else "L/100 km",
                windows=int(windows_n),
                distance_km=distance,
            )
        )
    return rows


def idle_drain_per_car(tables: Iterable[SessionTable]) -> list[IdleDrain]:
    """Level lost per hour while parked or asleep, per car, weighted by idle duration.

    Sessions without a level or shorter than a minute are left out (too noisy). A car's
    sessions are all in one table (the view's chunks are by car).
    """
    rows: list[IdleDrain] = []
    for sessions in tables:
        data = sessions.rows
        drain = data[:, SESSION["drain_pct_per_h"]]
        duration = data[:, SESSION["duration_s"]]
        chosen = (data[:, SESSION["kind"]] == _IDLE) & ~np.isnan(drain) & (duration >= 60)
        if not chosen.any():
            continue
        cars = len(sessions.vehicle_ids)
        hours = duration[chosen] / 3600.0
        car = sessions.car[chosen]
        drained = np.bincount(car, weights=drain[chosen] * hours, minlength=cars)
        idle_h = np.bincount(car, weights=hours, minlength=cars)
        count = np.bincount(car, minlength=cars)
        for i in np.flatnonzero(idle_h > 0).tolist():
            rows.append(
                IdleDrain(
                    vehicle_id=sessions.vehicle_ids[i],
                    powertrain=sessions.powertrains[i] or "",
                    idle_h=float(idle_h[i]),
                    drain_pct_per_h=float(drained[i] / idle_h[i]),
                    sessions=int(count[i]),
                )
            )
    rows.sort(key=lambda r: r["drain_pct_per_h"], reverse=True)
    return rows


@dataclass(frozen=True, slots=True)
class Efficiency:
    """The efficiency page's tables, computed once for every browser session."""

    by_temperature: list[TemperatureBin]
    idle_drain: list[IdleDrain]
