"""A vectorised fleet of EV and combustion cars, each a state machine with physics.

All cars advance together with numpy: one tick updates every car's state, so a simulated
day of a hundred cars takes seconds. Every field follows from the state (odometer grows
by speed x dt, levels fall with use and rise only while charging or refuelling); noise
only perturbs slowly-varying processes, nothing is drawn independently per tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np

from simulator._anomalies import Episode, Kind, Label, schedule
from telemetry.contract import COMMON_FIELDS, EV_FIELDS, ICE_FIELDS, SCHEMA_VERSION

PARKED, DRIVING, CHARGING, REFUELING, ASLEEP = range(5)
STATE_NAMES: Final = ("parked", "driving", "charging", "refueling", "asleep")
_NO_EPISODE: Final = -1
# Plain ints: numpy compares IntEnum members far slower than ints.
_TIRE_LEAK: Final = int(Kind.TIRE_LEAK)
_BATTERY_DRAIN: Final = int(Kind.BATTERY_DRAIN)
_FUEL_LOSS: Final = int(Kind.FUEL_LOSS)
_OVERHEAT: Final = int(Kind.OVERHEAT)
_HIGH_CONSUMPTION: Final = int(Kind.HIGH_CONSUMPTION)
_SENSOR_GLITCH: Final = int(Kind.SENSOR_GLITCH)
_GLITCH_GPS, _GLITCH_ODOMETER, _GLITCH_SPEED = range(3)
EV_KEYS: Final = (*COMMON_FIELDS, *EV_FIELDS)
ICE_KEYS: Final = (*COMMON_FIELDS, *ICE_FIELDS)


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """What to simulate.

    Attributes:
        vehicles: Number of cars.
        rate_hz: Messages per car per second.
        seed: Seed of the run; the same seed gives the same messages.
        ev_share: Fraction of cars that are EVs.
        anomaly_rate: Expected anomaly episodes per vehicle-day.
        duration_s: Length of the run (anomalies are scheduled inside it).
        start_ms: Event time of the first tick.
        city: (lat_min, lat_max, lon_min, lon_max) box the cars drive in.
        id_prefix: Prefix of vehicle ids.
    """

    vehicles: int
    rate_hz: float = 1.0
    seed: int = 0
    ev_share: float = 0.6
    anomaly_rate: float = 0.0
    duration_s: float = 3600.0
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    city: tuple[float, float, float, float] = (48.05, 48.25, 11.40, 11.75)
    id_prefix: str = "veh"
    id_width: int = field(default=5)


def _is_night(start_ms: int, t: float) -> bool:
    """Whether ``t`` simulated seconds after ``start_ms`` is night (UTC 22:00-06:00)."""
    hour = (start_ms / 3_600_000.0 + t / 3600.0) % 24.0
    return hour < 6.0 or hour >= 22.0


class Fleet:
    """The simulated fleet; call :meth:`tick` repeatedly to get each tick's records."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        n = config.vehicles
        rng = np.random.default_rng(config.seed)
        self._rng = rng
        self.dt = 1.0 / config.rate_hz
        self.n = n
        self.is_ev = rng.random(n) < config.ev_share
        self.ev_idx = np.flatnonzero(self.is_ev)
        self.ice_idx = np.flatnonzero(~self.is_ev)
        self.vehicle_ids = [f"{config.id_prefix}-{i:0{config.id_width}d}" for i in range(n)]
        # EVs publish first in each tick, then ICE cars; each at its own phase.
        order = np.concatenate([self.ev_idx, self.ice_idx])
        self.phase_s = np.empty(n)
        self.phase_s[order] = np.arange(n) / max(n, 1) * self.dt
        self.tick_index = 0
        self.seq = np.zeros(n, dtype=np.int64)

        lat0, lat1, lon0, lon1 = config.city
        self.lat = rng.uniform(lat0, lat1, n)
        self.lon = rng.uniform(lon0, lon1, n)
        self.heading = rng.uniform(0, 360, n)
        self.elevation = rng.uniform(480, 560, n)
        self.speed = np.zeros(n)
        self.target_speed = rng.uniform(30, 100, n)
        self.odometer = rng.uniform(2_000, 150_000, n)
        self.state = np.full(n, PARKED)
        self.t_left = rng.uniform(0, 1800, n)
        self.climate_base = rng.uniform(-2, 24, n)
        self.outside = self.climate_base.copy()
        self.inside = self.outside + rng.uniform(0, 3, n)

        self.tpms_base = rng.uniform(2.3, 2.9, (n, 4))
        self.tyre_temp = self.outside.copy()
        self.leak = np.zeros((n, 4))

        # EV
        self.capacity = rng.choice([55.0, 64.0, 75.0, 82.0, 100.0], n)
        self.ev_cons = rng.uniform(140, 220, n)  # Wh/km at 15 °C, 80 km/h
        self.vampire_kw = rng.uniform(0.015, 0.06, n)
        self.level = rng.uniform(35, 95, n)
        self.power = np.zeros(n)
        self.batt_temp = self.outside + 5
        self.charger_kw = np.zeros(n)
        self.charge_kw = np.zeros(n)
        self.charge_limit = rng.uniform(80, 95, n)
        self.energy_added = np.zeros(n)
        # ICE
        self.tank = rng.choice([40.0, 50.0, 55.0, 65.0, 80.0], n)
        self.ice_cons = rng.uniform(5.0, 9.5, n)  # L/100 km
        self.fuel_rate = np.zeros(n)
        self.rpm = np.zeros(n)
        self.coolant = self.outside.copy()
        self.fuel_added = np.zeros(n)
        self.refuel_target = np.full(n, 100.0)

        # Anomaly episodes, one active at a time per car.
        self.episodes = schedule(rng, self.is_ev, config.duration_s, config.anomaly_rate, self.dt)
        self._pending: list[list[Episode]] = [[] for _ in range(n)]
        for ep in reversed(self.episodes):
            self._pending[ep.car].append(ep)  # stack: the soonest on top
        self.next_start = np.array([p[-1].start_s if p else math.inf for p in self._pending])
        self.ep_kind = np.full(n, _NO_EPISODE)
        self.ep_start = np.zeros(n)
        self.ep_end = np.zeros(n)
        self.ep_mag = np.zeros(n)
        self.ep_tyre = np.zeros(n, dtype=np.int64)
        self.glitch_type = np.zeros(n, dtype=np.int64)
        self.glitch_size = np.zeros(n)
        self.overheat = np.zeros(n)

        # A fleet is met mid-life, not with every car just parked: some cars start on the
        # road (fewer at night), so a demo or a test has traffic from its first minute.
        # Drawn last so that the anomaly schedule of a seed stays the same.
        on_road = 0.06 if _is_night(config.start_ms, 0.0) else 0.3
        self._set_state(np.flatnonzero(rng.random(n) < on_road), DRIVING, 240, 2400)

    # ------------------------------------------------------------------ public
    def anchor(self, start_ms: int) -> None:
        """Set the event time of the first tick, before it runs.

        A real-time run anchors the fleet when publishing starts: building a large fleet
        and its anomaly schedule takes a while (~0.1 s for 6,000 cars), and event times
        counted from before that made every message look that much older.

        Raises:
            ValueError: A tick already ran.
        """
        if self.tick_index:
            msg = "anchor() must be called before the first tick"
            raise ValueError(msg)
        self.config = replace(self.config, start_ms=start_ms)

    def labels(self) -> list[Label]:
        """Ground truth for every scheduled episode."""
        start = self.config.start_ms
        return [ep.label(self.vehicle_ids[ep.car], start) for ep in self.episodes]

    def tick(self) -> list[dict[str, Any]]:
        """Advance every car by one period and return one v1 record per car."""
        t = self.tick_index * self.dt
        self._start_and_end_episodes(t)
        self._transitions(t)
        self._physics(t)
        records = self._records(t)
        self.tick_index += 1
        self.seq += 1
        return records

    # ------------------------------------------------------------ state machine
    def _set_state(self, cars: np.ndarray, state: int, low_s: float, high_s: float) -> None:
        if cars.size == 0:
            return
        self.state[cars] = state
        # Log-uniform durations: many short stays, a few long ones.
        self.t_left[cars] = np.exp(self._rng.uniform(math.log(low_s), math.log(high_s), cars.size))
        if state == DRIVING:
            self.target_speed[cars] = self._rng.uniform(25, 110, cars.size)
            self.heading[cars] = self._rng.uniform(0, 360, cars.size)
        elif state == CHARGING:
            self.energy_added[cars] = 0.0
            self.charger_kw[cars] = self._rng.choice([7.4, 11.0, 11.0, 50.0, 150.0], cars.size)
            self.t_left[cars] = 12 * 3600
        elif state == REFUELING:
            self.fuel_added[cars] = 0.0
            self.refuel_target[cars] = self._rng.uniform(92, 100, cars.size)
            self.t_left[cars] = 900

    def _forced(self) -> np.ndarray:
        """Cars whose active episode pins them to a state."""
        k = self.ep_kind
        forced: np.ndarray = (k == _BATTERY_DRAIN) | (k == _FUEL_LOSS) | (k == _HIGH_CONSUMPTION)
        return forced

    def _transitions(self, t: float) -> None:
        dt = self.dt
        self.t_left -= dt
        rng = self._rng
        forced = self._forced()
        state = self.state
        # Sessions that end on a level, not a timer.
        full = (state == CHARGING) & (self.level >= self.charge_limit)
        topped = (state == REFUELING) & (self.level >= self.refuel_target)
        empty = (
            (state == DRIVING)
            & (self.is_ev & (self.level < 8) | ~self.is_ev & (self.level < 6))
            & ~forced
        )
        due = ((self.t_left <= 0) & ~forced) | full | topped | empty
        if not due.any():
            return
        cars = np.flatnonzero(due)
        current = state[cars]
        u = rng.random(cars.size)
        low_ev = self.is_ev[cars] & (self.level[cars] < 40)
        mid_ev = self.is_ev[cars] & (self.level[cars] < 70)
        low_ice = ~self.is_ev[cars] & (self.level[cars] < 22)
        from_idle = (current == PARKED) | (current == ASLEEP)
        to_charge = from_idle & (low_ev | (mid_ev & (u < 0.2)))
        to_refuel = from_idle & low_ice
        rest = from_idle & ~to_charge & ~to_refuel
        night = _is_night(self.config.start_ms, t)
        to_sleep = rest & (current == PARKED) & (u < (0.6 if night else 0.25))
        to_drive = rest & ~to_sleep
        self._set_state(cars[to_charge], CHARGING, 1, 2)
        self._set_state(cars[to_refuel], REFUELING, 1, 2)
        self._set_state(cars[to_sleep], ASLEEP, 3600, 8 * 3600)
        self._set_state(cars[to_drive], DRIVING, 240, 2400)
        ended_drive = current == DRIVING
        self._set_state(cars[ended_drive], PARKED, 120, 4 * 3600)
        ended_session = (current == CHARGING) | (current == REFUELING)
        self._set_state(cars[ended_session], PARKED, 120, 1800)

    def _start_and_end_episodes(self, t: float) -> None:
        # Each car's own clock includes its publishing phase, so every affected sample's
        # ts lies inside [start_ts, end_ts) of the label.
        car_t = t + self.phase_s
        ending = np.flatnonzero((self.ep_kind != _NO_EPISODE) & (self.ep_end <= car_t))
        for car in ending.tolist():
            kind = int(self.ep_kind[car])
            if kind == _TIRE_LEAK:
                self.leak[car, :] = 0.0  # repaired at the end of the episode
            self.ep_kind[car] = _NO_EPISODE
            # Give a pinned car a short stay before it moves on.
            self.t_left[car] = min(self.t_left[car], 300.0)
        starting = np.flatnonzero(self.next_start <= car_t)
        for car in starting.tolist():
            ep = self._pending[car].pop()
            self.next_start[car] = (
                self._pending[car][-1].start_s if self._pending[car] else math.inf
            )
            self.ep_kind[car] = int(ep.kind)
            self.ep_start[car] = ep.start_s
            self.ep_end[car] = ep.end_s
            self.ep_mag[car] = ep.magnitude
            one = np.array([car])
            if ep.kind in (Kind.BATTERY_DRAIN, Kind.FUEL_LOSS):
                self._set_state(one, PARKED, 60, 61)
                self.speed[car] = 0.0
            elif ep.kind == _HIGH_CONSUMPTION:
                if self.state[car] != DRIVING:
                    self._set_state(one, DRIVING, 60, 61)
                self.target_speed[car] = self._rng.uniform(50, 110)
            elif ep.kind == _TIRE_LEAK:
                self.ep_tyre[car] = int(self._rng.integers(4))
            elif ep.kind == _SENSOR_GLITCH:
                kinds = [_GLITCH_GPS, _GLITCH_ODOMETER]
                if self.state[car] == DRIVING:
                    kinds.append(_GLITCH_SPEED)
                self.glitch_type[car] = kinds[int(self._rng.integers(len(kinds)))]
                self.glitch_size[car] = ep.magnitude

    # ------------------------------------------------------------------ physics
    def _physics(self, t: float) -> None:
        dt = self.dt
        rng = self._rng
        n = self.n
        state = self.state
        driving = state == DRIVING
        charging = state == CHARGING
        refueling = state == REFUELING
        asleep = state == ASLEEP
        ev = self.is_ev
        kind = self.ep_kind
        hours = dt / 3600.0

        # Weather: each car's local climate plus a daily cycle peaking mid-afternoon.
        hour_of_day = ((self.config.start_ms / 3_600_000.0) + t / 3600.0) % 24.0
        self.outside = self.climate_base + 5.0 * math.sin(2 * math.pi * (hour_of_day - 9.0) / 24.0)
        relax_10min = 1.0 - math.exp(-dt / 600.0)
        climate_on = driving | charging
        self.inside += (
            np.where(climate_on, 21.0 - self.inside, self.outside - self.inside) * relax_10min
        )

        # Speed follows a per-drive target with slow random changes (traffic).
        change = rng.random(n) < dt / 90.0
        self.target_speed = np.where(change & driving, rng.uniform(20, 120, n), self.target_speed)
        alpha = 1.0 - math.exp(-dt / 8.0)
        noise = rng.normal(0.0, 1.2 * math.sqrt(dt), n)
        self.speed = np.where(
            driving,
            np.clip(self.speed + alpha * (self.target_speed - self.speed) + noise, 0, 170),
            0.0,
        )
        dist_km = self.speed * hours
        self.odometer += dist_km

        # Position: heading wanders; cars leaving the city box turn back toward its centre.
        lat0, lat1, lon0, lon1 = self.config.city
        self.heading = np.where(
            driving, (self.heading + rng.normal(0, 4.0 * math.sqrt(dt), n)) % 360.0, self.heading
        )
        outside_box = (self.lat < lat0) | (self.lat > lat1) | (self.lon < lon0) | (self.lon > lon1)
        if outside_box.any():
            back = (
                np.degrees(np.arctan2((lon0 + lon1) / 2 - self.lon, (lat0 + lat1) / 2 - self.lat))
                % 360.0
            )
            self.heading = np.where(outside_box & driving, back, self.heading)
        rad = np.radians(self.heading)
        self.lat += dist_km * np.cos(rad) / 111.32
        self.lon += dist_km * np.sin(rad) / (111.32 * np.cos(np.radians(self.lat)))
        self.elevation = np.clip(
            self.elevation + np.where(driving, rng.normal(0, 0.3 * math.sqrt(dt), n), 0.0), 300, 800
        )

        # Consumption: the car's own baseline, worse in the cold and at high speed.
        cold = 1.0 + 0.012 * np.maximum(0.0, 15.0 - self.outside)
        fast = 1.0 + 0.006 * np.maximum(0.0, self.speed - 80.0)
        anomaly_factor = np.where(kind == _HIGH_CONSUMPTION, self.ep_mag, 1.0)
        jitter = 1.0 + rng.normal(0, 0.03, n)

        # EV energy balance.
        taper = np.where(self.level < 80, 1.0, np.maximum(0.15, (100.0 - self.level) / 20.0))
        charge_kw = np.where(charging, self.charger_kw * taper, 0.0)
        self.charge_kw = charge_kw
        drain_kw = np.where(kind == _BATTERY_DRAIN, self.ep_mag, 0.0)
        drive_kw = self.ev_cons * cold * fast * anomaly_factor * jitter * self.speed / 1000.0 + 0.6
        idle_kw = np.where(asleep, 0.4 * self.vampire_kw, self.vampire_kw)
        self.power = np.where(driving, drive_kw, np.where(charging, -charge_kw, idle_kw + drain_kw))
        ev_level = self.level - self.power * hours / self.capacity * 100.0
        self.energy_added += np.where(charging, charge_kw * hours, 0.0)
        heat = 15.0 + 0.3 * self.outside + 0.08 * np.abs(self.power)
        self.batt_temp += (heat - self.batt_temp) * relax_10min

        # ICE fuel balance.
        burn = np.where(
            driving,
            self.ice_cons * cold**0.5 * anomaly_factor * jitter * self.speed / 100.0 + 0.8,
            0.0,
        )
        self.fuel_rate = burn
        loss_lph = np.where(kind == _FUEL_LOSS, self.ep_mag, 0.0)
        pump_lps = 0.5
        self.fuel_added += np.where(refueling, pump_lps * dt, 0.0)
        ice_level = (
            self.level
            - (burn + loss_lph) * hours / self.tank * 100.0
            + np.where(refueling, pump_lps * dt / self.tank * 100.0, 0.0)
        )
        self.level = np.clip(np.where(ev, ev_level, ice_level), 0.0, 100.0)
        self.rpm = np.where(driving, 750.0 + self.speed * 24.0 + rng.normal(0, 40, n), 0.0)
        coolant_target = np.where(driving, 90.0, self.outside)
        self.coolant += (coolant_target - self.coolant) * np.where(
            driving, 1.0 - math.exp(-dt / 300.0), relax_10min / 2
        )

        # Overheat adds a rise that builds over the episode and cools off afterwards.
        active_heat = kind == _OVERHEAT
        span = np.maximum(self.ep_end - self.ep_start, 1.0)
        progress = np.clip((t - self.ep_start) / np.minimum(span, 600.0), 0.0, 1.0)
        self.overheat = np.where(
            active_heat, self.ep_mag * progress, self.overheat * math.exp(-dt / 20.0)
        )

        # Tyres: pressure follows tyre temperature (ideal gas); a leak bleeds one tyre.
        tyre_target = self.outside + np.where(driving, 12.0, 0.0)
        self.tyre_temp += (tyre_target - self.tyre_temp) * relax_10min
        leaking = np.flatnonzero(kind == _TIRE_LEAK)
        if leaking.size:
            rate = self.ep_mag[leaking] / np.maximum(
                self.ep_end[leaking] - self.ep_start[leaking], 1.0
            )
            self.leak[leaking, self.ep_tyre[leaking]] += rate * dt

    def _records(self, t: float) -> list[dict[str, Any]]:
        ts = (self.config.start_ms + np.round((t + self.phase_s) * 1000.0)).astype(np.int64)
        speed = self.speed.copy()
        odometer = self.odometer.copy()
        lat = self.lat.copy()
        # Glitches corrupt what is reported, never the car's real state.
        glitching = np.flatnonzero(self.ep_kind == _SENSOR_GLITCH)
        for car in glitching.tolist():
            size = float(self.glitch_size[car])
            kind = int(self.glitch_type[car])
            if kind == _GLITCH_GPS:
                lat[car] = float(np.clip(lat[car] + 0.3 + 2.0 * size, -90, 90))
            elif kind == _GLITCH_ODOMETER:
                odometer[car] = max(0.0, odometer[car] - (5.0 + 200.0 * size))
            else:
                speed[car] = 320.0 + 500.0 * size
        pressure_scale = (273.15 + self.tyre_temp) / 293.15
        tpms = np.round(np.maximum(self.tpms_base * pressure_scale[:, None] - self.leak, 0.0), 3)
        common: list[np.ndarray] = [
            ts,
            self.seq,
            np.round(lat, 6),
            np.round(self.lon, 6),
            np.round(speed, 2),
            np.round(odometer, 4),
            np.round(self.heading, 1),
            np.round(self.elevation, 1),
            np.round(self.outside, 2),
            np.round(self.inside, 2),
            tpms[:, 0],
            tpms[:, 1],
            tpms[:, 2],
            tpms[:, 3],
        ]
        level = np.round(self.level, 4)
        overheat = self.overheat
        ev_specific = [
            level,
            self.capacity,
            np.round(self.power, 4),
            np.round(self.level / 100.0 * self.capacity * 1000.0 / self.ev_cons, 1),
            np.round(self.batt_temp + overheat, 2),
            np.round(self.charge_kw, 3),
            np.round(self.energy_added, 4),
        ]
        ice_specific = [
            level,
            self.tank,
            np.round(self.fuel_rate, 4),
            np.round(self.rpm, 0),
            np.round(self.coolant + overheat, 2),
            np.round(self.fuel_added, 3),
        ]
        out: list[dict[str, Any]] = []
        groups: tuple[tuple[np.ndarray, tuple[str, ...], list[np.ndarray], str], ...] = (
            (self.ev_idx, EV_KEYS, ev_specific, "ev"),
            (self.ice_idx, ICE_KEYS, ice_specific, "ice"),
        )
        for idx, keys, specific, powertrain in groups:
            if idx.size == 0:
                continue
            ids = [self.vehicle_ids[i] for i in idx.tolist()]
            states = [STATE_NAMES[s] for s in self.state[idx].tolist()]
            size = idx.size
            columns = [
                [SCHEMA_VERSION] * size,
                ids,
                common[0][idx].tolist(),
                common[1][idx].tolist(),
                [powertrain] * size,
                states,
                *(col[idx].tolist() for col in common[2:]),
                *(col[idx].tolist() for col in specific),
            ]
            out.extend(dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True))
        return out
