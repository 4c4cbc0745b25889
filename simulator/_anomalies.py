"""Labelled anomaly episodes: scheduling and ground-truth labels."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final, TypedDict

import numpy as np


class Kind(IntEnum):
    """Anomaly kinds; the label ``kind`` is the lower-case name."""

    TIRE_LEAK = 0
    BATTERY_DRAIN = 1
    FUEL_LOSS = 2
    OVERHEAT = 3
    HIGH_CONSUMPTION = 4
    SENSOR_GLITCH = 5

    @property
    def label(self) -> str:
        """The label vocabulary name, e.g. ``tire_leak``."""
        return self.name.lower()


EV_KINDS: Final = (
    Kind.TIRE_LEAK,
    Kind.BATTERY_DRAIN,
    Kind.OVERHEAT,
    Kind.HIGH_CONSUMPTION,
    Kind.SENSOR_GLITCH,
)
ICE_KINDS: Final = (
    Kind.TIRE_LEAK,
    Kind.FUEL_LOSS,
    Kind.OVERHEAT,
    Kind.HIGH_CONSUMPTION,
    Kind.SENSOR_GLITCH,
)

# Episode length range in seconds per kind.
DURATION_S: Final = {
    Kind.TIRE_LEAK: (1200.0, 5400.0),
    Kind.BATTERY_DRAIN: (3600.0, 4 * 3600.0),
    Kind.FUEL_LOSS: (900.0, 3600.0),
    Kind.OVERHEAT: (900.0, 2700.0),
    Kind.HIGH_CONSUMPTION: (1200.0, 3600.0),
    Kind.SENSOR_GLITCH: (1.0, 8.0),
}
# Magnitude range per kind (units in the comments), drawn uniformly so some are subtle.
MAGNITUDE: Final = {
    Kind.TIRE_LEAK: (0.35, 1.2),  # total pressure lost over the episode, bar
    Kind.BATTERY_DRAIN: (1.2, 5.0),  # extra parked draw, kW
    Kind.FUEL_LOSS: (6.0, 30.0),  # fuel lost while parked, L/h
    Kind.OVERHEAT: (18.0, 40.0),  # temperature rise above normal, °C
    Kind.HIGH_CONSUMPTION: (1.45, 2.1),  # factor on the car's own consumption
    Kind.SENSOR_GLITCH: (0.0, 1.0),  # picks the glitch's size inside its subtype
}
# Settling time before an episode can start and gap between a car's episodes; runs
# shorter than ten margins (benchmarks, demos) use a tenth of their length instead.
_MARGIN_S: Final = 1800.0


class Label(TypedDict):
    """One ground-truth anomaly episode, as written to ``--labels``."""

    vehicle_id: str
    kind: str
    start_ts: int
    end_ts: int
    magnitude: float


@dataclass(frozen=True, slots=True)
class Episode:
    """An anomaly episode scheduled for one car, in simulated seconds from the run start."""

    car: int
    kind: Kind
    start_s: float
    end_s: float
    magnitude: float

    def label(self, vehicle_id: str, start_ms: int) -> Label:
        """The ground-truth label with absolute millisecond times."""
        return Label(
            vehicle_id=vehicle_id,
            kind=self.kind.label,
            start_ts=start_ms + round(self.start_s * 1000),
            end_ts=start_ms + round(self.end_s * 1000),
            magnitude=round(self.magnitude, 4),
        )


def schedule(
    rng: np.random.Generator,
    is_ev: np.ndarray,
    duration_s: float,
    rate_per_day: float,
    period_s: float = 1.0,
) -> list[Episode]:
    """Draw non-overlapping episodes per car: Poisson count, uniform start, uniform kind.

    Args:
        rng: The run's random generator.
        is_ev: Boolean per car.
        duration_s: Length of the run.
        rate_per_day: Expected episodes per vehicle-day.
        period_s: Publishing period; episodes last at least two periods.

    Returns:
        Episodes sorted by car, then start.
    """
    episodes: list[Episode] = []
    margin = min(_MARGIN_S, duration_s / 10.0)
    usable = duration_s - 2 * margin
    if rate_per_day <= 0 or usable <= 0:
        return episodes
    for car, ev in enumerate(is_ev.tolist()):
        kinds = EV_KINDS if ev else ICE_KINDS
        wanted = int(rng.poisson(rate_per_day * duration_s / 86400.0))
        placed: list[Episode] = []
        for _ in range(wanted * 4):
            if len(placed) == wanted:
                break
            kind = kinds[int(rng.integers(len(kinds)))]
            low, high = DURATION_S[kind]
            # At least two samples, however slow the publishing rate.
            length = max(float(rng.uniform(low, high)), 2.0 * period_s)
            if length > usable:
                # Too long for this run (e.g. a 30 min leak in a 4 h run): draw another kind.
                continue
            start = float(rng.uniform(margin, duration_s - margin - length))
            end = start + length
            if any(start < p.end_s + margin and p.start_s < end + margin for p in placed):
                continue
            magnitude = float(rng.uniform(*MAGNITUDE[kind]))
            placed.append(Episode(car, kind, start, end, magnitude))
        episodes.extend(sorted(placed, key=lambda e: e.start_s))
    return episodes
