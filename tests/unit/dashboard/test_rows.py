"""Compact rows: the ring of floats per car and the record <-> row conversions."""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

import pytest

from dashboard.rows import (
    SESSION_COLUMNS,
    WINDOW_COLUMNS,
    Rows,
    sample_of,
    sample_row,
    session_of,
    session_row,
    window_of,
    window_row,
)
from processing.sessions import SessionRecord
from processing.stats import WindowStats

from ..records import make_ev, make_ice
from .fleet_data import T0, _drive, _idle, _stats

pytestmark = pytest.mark.unit


def _row(*values: float) -> array[float]:
    return array("d", values)


def test_rows_keep_the_newest_in_order_once_full() -> None:
    rows = Rows(2, 3)
    for i in range(5):
        rows.append(_row(i, 10 * i))
    assert len(rows) == 3
    assert list(rows.copy()) == [2, 20, 3, 30, 4, 40]  # oldest first, across the wrap
    assert list(rows.copy(2)) == [4, 40]
    assert list(rows.copy(3)) == []
    assert list(rows.row(-1)) == [4, 40]
    assert rows.value(0, 1) == 20
    assert rows.first_at_least(0, 3) == 1
    assert rows.first_at_least(0, 9) == 3
    assert rows.find(1, 30) == 1
    assert rows.find(1, 31) is None
    rows.replace(1, _row(3, 33))
    assert list(rows.copy()) == [2, 20, 3, 33, 4, 40]


def test_rows_take_no_growth_reserve_once_full() -> None:
    rows = Rows(13, 720)
    for i in range(720):
        rows.append(_row(*([float(i)] * 13)))
    assert rows._data.buffer_info()[1] == 720 * 13


def test_records_round_trip_through_rows_with_their_nulls() -> None:
    ev = make_ev(T0, state="driving", lat=None, battery_level_pct=None, speed_kmh=50.0)
    sample = sample_of(sample_row(ev))
    assert sample["ts"] == T0
    assert (sample["powertrain"], sample["state"]) == ("ev", "driving")
    assert (sample["lat"], sample["lon"], sample["level_pct"]) == (None, 11.5, None)
    assert sample["speed_kmh"] == 50.0
    ice = sample_of(sample_row(make_ice(T0, fuel_level_pct=40.0, coolant_temp_c=90.0)))
    assert (ice["powertrain"], ice["level_pct"], ice["temp_c"]) == ("ice", 40.0, 90.0)
    stats = _stats("car-1", "ice", T0, 0.6, 10.0, samples=58, missing=2)
    window = window_of(window_row(stats))
    assert window == {name: stats[name] for name in window}
    assert window["energy_used_kwh"] is None
    assert window["missing"] == 2
    assert window_of(window_row({**stats, "missing": None}))["missing"] is None
    assert set(window) == set(WINDOW_COLUMNS)
    for record in (_drive("car-1", T0), _idle("car-1", "ev", T0, hours=2.0, drain=1.5)):
        session = session_of(session_row(record))
        assert session == {name: record[name] for name in session}
        assert set(session) == set(SESSION_COLUMNS) - {"id_hash"}


def test_kept_columns_are_fields_of_processings_records() -> None:
    # Named as processing writes them: a renamed output field fails here, not on a page.
    assert set(WINDOW_COLUMNS) <= set(WindowStats.__annotations__)
    assert set(SESSION_COLUMNS) - {"id_hash"} <= set(SessionRecord.__annotations__)


@pytest.mark.parametrize(
    ("convert", "record"),
    [
        (sample_row, {**make_ev(T0), "state": "flying"}),
        (window_row, {**_stats("car-1", "ev", T0, 1.0, 5.0, samples=1, missing=0),
                      "powertrain": "hydrogen"}),
        (session_row, {**_drive("car-1", T0), "kind": "teleport"}),
    ],
)  # fmt: skip
def test_a_text_field_outside_its_codes_is_refused(
    convert: Callable[[dict[str, Any]], array[float]], record: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="not one of"):
        convert(record)
