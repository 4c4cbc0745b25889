"""Compact per-car history: rows of floats in one flat array per car and record kind.

A stats window kept as the record's dict took ~1.7 KB, a telemetry sample ~0.9 KB: with
the default bounds full (10,000 cars x 720 windows + 900 samples) about 19 GiB. Here a
record is one row of 8-byte floats holding only the fields the pages use (``None`` is NaN,
text fields are codes): 104 bytes per window and per sample, 112 per session, no Python
object per row. JSON has no NaN, so NaN never stands for a value.

The row layouts (``*_COLUMNS``) are the column order of the tables the fleet-wide readers
return (numpy arrays, one row per record); ``WINDOW``, ``SESSION`` map a name to its column.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypedDict, cast

import numpy as np
import numpy.typing as npt

from processing.sessions import ACTIVITY
from telemetry.contract import POWERTRAINS, STATES

Table = npt.NDArray[np.float64]
"""A copy of kept rows, one per record, columns in the order of a ``*_COLUMNS`` layout."""

# The kinds processing emits (drive, charge, refuel, idle), in a fixed order: the codes.
SESSION_KINDS: Final = tuple(dict.fromkeys(ACTIVITY.values()))

WINDOW_COLUMNS: Final = (
    "window_end",
    "powertrain",  # index in POWERTRAINS
    "samples",
    "missing",
    "distance_km",
    "energy_used_kwh",
    "fuel_used_l",
    "consumption_wh_per_km",
    "consumption_l_per_100km",
    "avg_outside_temp_c",
    "level_end_pct",
    "avg_speed_kmh",
    "max_speed_kmh",
)
# A sample's powertrain and state, one code: the index in this list.
POWERTRAIN_STATES: Final = tuple((p, s) for p in POWERTRAINS for s in STATES)
SAMPLE_COLUMNS: Final = (
    "ts",
    "powertrain_state",  # index in POWERTRAIN_STATES
    "lat",
    "lon",
    "speed_kmh",
    "level_pct",
    "temp_c",
    "inside_temp_c",
    "outside_temp_c",
    "tpms_fl_bar",
    "tpms_fr_bar",
    "tpms_rl_bar",
    "tpms_rr_bar",
)
SESSION_COLUMNS: Final = (
    "id_hash",  # 52 bits of the session_id's hash: replays are recognised by it
    "start_ts",
    "kind",  # index in SESSION_KINDS
    "duration_s",
    "distance_km",
    "energy_used_kwh",
    "energy_added_kwh",
    "fuel_used_l",
    "fuel_added_l",
    "consumption_wh_per_km",
    "consumption_l_per_100km",
    "level_start_pct",
    "level_end_pct",
    "drain_pct_per_h",
)
WINDOW: Final = {name: i for i, name in enumerate(WINDOW_COLUMNS)}
SAMPLE: Final = {name: i for i, name in enumerate(SAMPLE_COLUMNS)}
SESSION: Final = {name: i for i, name in enumerate(SESSION_COLUMNS)}
_HASH_MASK: Final = (1 << 52) - 1  # exact in a float


class CarSample(TypedDict):
    """The part of one telemetry record the dashboard keeps."""

    ts: int
    powertrain: str
    state: str
    lat: float | None
    lon: float | None
    speed_kmh: float | None
    level_pct: float | None
    temp_c: float | None
    inside_temp_c: float | None
    outside_temp_c: float | None
    tpms_fl_bar: float | None
    tpms_fr_bar: float | None
    tpms_rl_bar: float | None
    tpms_rr_bar: float | None


class KeptWindow(TypedDict):
    """The part of one ``vehicle-stats`` window the dashboard keeps (names as there)."""

    window_end: int
    powertrain: str
    samples: int
    missing: int | None
    distance_km: float | None
    energy_used_kwh: float | None
    fuel_used_l: float | None
    consumption_wh_per_km: float | None
    consumption_l_per_100km: float | None
    avg_outside_temp_c: float | None
    level_end_pct: float | None
    avg_speed_kmh: float | None
    max_speed_kmh: float | None


class KeptSession(TypedDict):
    """The part of one ``vehicle-sessions`` record the dashboard keeps (names as there)."""

    start_ts: int
    kind: str
    duration_s: float
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


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _opt(value: float) -> float | None:
    return None if math.isnan(value) else value


def _code(value: str, names: Sequence[str], what: str) -> float:
    if value not in names:
        msg = f"{what} is {value!r}, not one of {', '.join(names)}"
        raise ValueError(msg)
    return float(names.index(value))


def session_hash(session_id: str) -> float:
    """The session id as it is kept: 52 bits of its hash (this process's), as a float."""
    return float(hash(session_id) & _HASH_MASK)


def sample_row(record: Mapping[str, Any]) -> array[float]:
    """The row of a validated v1 telemetry record (EV level/temp or ICE level/temp).

    Raises:
        ValueError: Its powertrain or state is not one of the contract's.
    """
    ev = record["powertrain"] == "ev"
    powertrain = _code(record["powertrain"], POWERTRAINS, "telemetry powertrain")
    state = _code(record["state"], STATES, "telemetry state")
    return array(
        "d",
        (
            float(record["ts"]),
            powertrain * len(STATES) + state,
            _float(record.get("lat")),
            _float(record.get("lon")),
            _float(record.get("speed_kmh")),
            _float(record.get("battery_level_pct" if ev else "fuel_level_pct")),
            _float(record.get("battery_temp_c" if ev else "coolant_temp_c")),
            *(_float(record.get(name)) for name in SAMPLE_COLUMNS[7:]),
        ),
    )


def window_row(record: Mapping[str, Any]) -> array[float]:
    """The row of a ``vehicle-stats`` record of the right shape.

    Raises:
        ValueError: Its powertrain is not one of the contract's.
    """
    return array(
        "d",
        (
            float(record["window_end"]),
            _code(record["powertrain"], POWERTRAINS, "stats powertrain"),
            *(_float(record[name]) for name in WINDOW_COLUMNS[2:]),
        ),
    )


def session_row(record: Mapping[str, Any]) -> array[float]:
    """The row of a ``vehicle-sessions`` record of the right shape.

    Raises:
        ValueError: Its kind is not one of the session kinds.
    """
    return array(
        "d",
        (
            session_hash(record["session_id"]),
            float(record["start_ts"]),
            _code(record["kind"], SESSION_KINDS, "session kind"),
            *(_float(record[name]) for name in SESSION_COLUMNS[3:]),
        ),
    )


def sample_of(row: Sequence[float]) -> CarSample:
    """The sample a row holds."""
    powertrain, state = POWERTRAIN_STATES[int(row[1])]
    return CarSample(
        ts=int(row[0]),
        powertrain=powertrain,
        state=state,
        lat=_opt(row[2]),
        lon=_opt(row[3]),
        speed_kmh=_opt(row[4]),
        level_pct=_opt(row[5]),
        temp_c=_opt(row[6]),
        inside_temp_c=_opt(row[7]),
        outside_temp_c=_opt(row[8]),
        tpms_fl_bar=_opt(row[9]),
        tpms_fr_bar=_opt(row[10]),
        tpms_rl_bar=_opt(row[11]),
        tpms_rr_bar=_opt(row[12]),
    )


def _plain(row: Sequence[float], columns: Sequence[str]) -> dict[str, Any]:
    """The row's values by column name, NaN as None (coded columns decoded by callers)."""
    return {name: _opt(value) for name, value in zip(columns, row, strict=True)}


def window_of(row: Sequence[float]) -> KeptWindow:
    """The window a row holds."""
    window = _plain(row, WINDOW_COLUMNS)
    missing = window["missing"]
    window.update(
        window_end=int(row[WINDOW["window_end"]]),
        powertrain=POWERTRAINS[int(row[WINDOW["powertrain"]])],
        samples=int(row[WINDOW["samples"]]),
        missing=None if missing is None else int(missing),
    )
    return cast("KeptWindow", window)


def session_of(row: Sequence[float]) -> KeptSession:
    """The session a row holds."""
    session = _plain(row, SESSION_COLUMNS)
    del session["id_hash"]
    session.update(
        start_ts=int(row[SESSION["start_ts"]]),
        kind=SESSION_KINDS[int(row[SESSION["kind"]])],
        duration_s=row[SESSION["duration_s"]],
    )
    return cast("KeptSession", session)


def table(flat: array[float], width: int) -> Table:
    """A flat copy of rows as a 2-D table (no further copy)."""
    return np.frombuffer(flat, dtype=np.float64).reshape(-1, width)


class Rows:
    """Up to ``capacity`` rows of ``width`` floats in one flat ``array('d')``, oldest first.

    A ring once full: a new row overwrites the oldest. The array grows as rows come
    (a car with few records takes little) and is trimmed to its exact size once full.
    Not thread-safe: the view's lock guards it.
    """

    __slots__ = ("_capacity", "_count", "_data", "_start", "_width")

    def __init__(self, width: int, capacity: int) -> None:
        self._width = width
        self._capacity = capacity
        self._data: array[float] = array("d")
        self._start = 0  # the oldest row's place once full
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _at(self, i: int) -> int:
        """Offset of row ``i`` (0 the oldest, -1 the newest) in the flat array."""
        if i < 0:
            i += self._count
        return (self._start + i) % self._capacity * self._width

    def append(self, row: array[float]) -> None:
        """Add a row as the newest, dropping the oldest when full."""
        if self._count < self._capacity:
            self._data.extend(row)
            self._count += 1
            if self._count == self._capacity:
                self._data = array("d", self._data)  # without the growth reserve
            return
        at = self._start * self._width
        self._data[at : at + self._width] = row
        self._start = (self._start + 1) % self._capacity

    def replace(self, i: int, row: array[float]) -> None:
        """Overwrite row ``i``."""
        at = self._at(i)
        self._data[at : at + self._width] = row

    def row(self, i: int) -> array[float]:
        """A copy of row ``i``."""
        at = self._at(i)
        return self._data[at : at + self._width]

    def value(self, i: int, column: int) -> float:
        """One value of row ``i``."""
        return self._data[self._at(i) + column]

    def first_at_least(self, column: int, value: float) -> int:
        """The first row whose ``column`` is >= value, the rows being sorted by it."""
        low, high = 0, self._count
        while low < high:
            mid = (low + high) // 2
            if self.value(mid, column) < value:
                low = mid + 1
            else:
                high = mid
        return low

    def find(self, column: int, value: float) -> int | None:
        """The last row whose ``column`` equals value (rows in any order), or None."""
        for i in range(self._count - 1, -1, -1):
            if self.value(i, column) == value:
                return i
        return None

    def copy(self, first: int = 0) -> array[float]:
        """Rows ``first`` to the newest, oldest first, as one flat array."""
        n = self._count - first
        if n <= 0:
            return array("d")
        width = self._width
        begin = (self._start + first) % self._capacity
        end = begin + n
        if end <= self._capacity:
            return self._data[begin * width : end * width]
        return self._data[begin * width :] + self._data[: (end - self._capacity) * width]
