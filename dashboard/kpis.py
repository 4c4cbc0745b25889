"""Pure computations behind the dashboard's numbers, maps and tables.

Nothing here touches Streamlit or Kafka: every function takes copies from
:class:`dashboard.view.FleetView` and an explicit ``now_ms``, so the tests can pin time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TypedDict

from dashboard.view import AlertEntry, CarSample, FleetSnapshot
from processing.detectors import KINDS, SEVERITY
from processing.sessions import SessionRecord
from processing.stats import WindowStats

SEVERITIES: Final = ("critical", "high", "warning", "info")
ALERT_KINDS: Final = KINDS
SEVERITY_OF_KIND: Final = SEVERITY
STATES_DRIVING: Final = frozenset({"driving"})
STATES_ENERGY: Final = frozenset({"charging", "refueling"})
VERDICTS: Final = ("acknowledged", "false_positive")

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


def fleet_consumption(stats: Iterable[WindowStats]) -> tuple[float | None, float | None]:
    """Distance-weighted EV Wh/km and ICE L/100 km over windows with a consumption value.

    A ratio of sums, not a mean of per-window ratios, so short windows do not dominate.
    """
    ev_used = ev_km = ice_used = ice_km = 0.0
    for s in stats:
        distance = s["distance_km"]
        if not distance:
            continue
        if s["powertrain"] == "ev" and s["consumption_wh_per_km"] is not None:
            ev_used += s["energy_used_kwh"] or 0.0
            ev_km += distance
        elif s["powertrain"] == "ice" and s["consumption_l_per_100km"] is not None:
            ice_used += s["fuel_used_l"] or 0.0
            ice_km += distance
    ev = 1000.0 * ev_used / ev_km if ev_km > 0 else None
    ice = 100.0 * ice_used / ice_km if ice_km > 0 else None
    return ev, ice


def completeness(stats: Iterable[WindowStats]) -> float | None:
    """Percent of the records the cars numbered (seq) that arrived, or None without seqs."""
    got = expected = 0
    for s in stats:
        if s["missing"] is None:
            continue
        got += s["samples"]
        expected += s["samples"] + s["missing"]
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
    recent = [s for s in snapshot.recent_stats if s["window_end"] >= now_ms - period_ms]
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


def consumption_by_temperature(
    stats: Iterable[WindowStats], bin_c: float = 5.0
) -> list[TemperatureBin]:
    """Distance-weighted consumption per powertrain and outside-temperature bin (TeslaMate).

    Only driving windows with a consumption value and an outside temperature count. A bin
    is labelled by its lower edge (5 °C bins: -5 means [-5, 0) °C).
    """
    used: dict[tuple[str, float], list[float]] = {}
    for s in stats:
        temp, distance = s["avg_outside_temp_c"], s["distance_km"]
        if temp is None or not distance:
            continue
        ev = s["powertrain"] == "ev"
        if (s["consumption_wh_per_km"] if ev else s["consumption_l_per_100km"]) is None:
            continue
        amount = (s["energy_used_kwh"] if ev else s["fuel_used_l"]) or 0.0
        key = (s["powertrain"], math.floor(temp / bin_c) * bin_c)
        acc = used.setdefault(key, [0.0, 0.0, 0.0])
        acc[0] += amount
        acc[1] += distance
        acc[2] += 1
    rows: list[TemperatureBin] = []
    for (powertrain, temp_bin), (amount, distance, windows) in sorted(used.items()):
        ev = powertrain == "ev"
        rows.append(
            TemperatureBin(
                powertrain=powertrain,
                temp_c=temp_bin,
                consumption=(1000.0 if ev else 100.0) * amount / distance,
                unit="Wh/km" if ev else "L/100 km",
                windows=int(windows),
                distance_km=distance,
            )
        )
    return rows


def idle_drain_per_car(sessions: Iterable[SessionRecord]) -> list[IdleDrain]:
    """Level lost per hour while parked or asleep, per car, weighted by idle duration.

    Sessions without a level or shorter than a minute are left out (too noisy).
    """
    acc: dict[str, list[float]] = {}
    powertrains: dict[str, str] = {}
    for s in sessions:
        if s["kind"] != "idle" or s["drain_pct_per_h"] is None or s["duration_s"] < 60:
            continue
        hours = s["duration_s"] / 3600.0
        row = acc.setdefault(s["vehicle_id"], [0.0, 0.0, 0.0])
        row[0] += s["drain_pct_per_h"] * hours
        row[1] += hours
        row[2] += 1
        powertrains[s["vehicle_id"]] = s["powertrain"]
    rows = [
        IdleDrain(
            vehicle_id=vid,
            powertrain=powertrains[vid],
            idle_h=hours,
            drain_pct_per_h=drained / hours,
            sessions=int(n),
        )
        for vid, (drained, hours, n) in acc.items()
        if hours > 0
    ]
    rows.sort(key=lambda r: r["drain_pct_per_h"], reverse=True)
    return rows


@dataclass(frozen=True, slots=True)
class Efficiency:
    """The efficiency page's tables, computed once for every browser session."""

    by_temperature: list[TemperatureBin]
    idle_drain: list[IdleDrain]
