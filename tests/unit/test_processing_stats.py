"""Window statistics: every formula on small hand-computed windows, plus properties."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processing.stats import MIN_RATE_COVERAGE, Sample, dedupe_sorted, to_sample, window_stats

pytestmark = pytest.mark.unit

HOUR_MS = 3_600_000
HALF_HOUR_MS = HOUR_MS // 2


def sample(
    ts: int,
    seq: int | None,
    *,
    odo: float | None = None,
    speed: float | None = None,
    rate: float | None = None,
    level: float | None = None,
    temp: float | None = None,
    tpms: float | None = None,
    outside: float | None = None,
) -> Sample:
    """A compact window sample in the documented field order."""
    return [ts, seq, odo, speed, rate, level, temp, tpms, outside]


def ev_window() -> list[Sample]:
    """Four EV samples 30 min apart: drive, drive, charge, idle."""
    return [
        sample(0, 1, odo=100.0, speed=40.0, rate=10.0, level=80.0, temp=20.0, tpms=2.5,
               outside=10.0),
        sample(HALF_HOUR_MS, 2, odo=110.0, speed=60.0, rate=20.0, level=78.0, temp=25.0,
               tpms=2.4, outside=12.0),
        sample(2 * HALF_HOUR_MS, 3, odo=120.0, speed=0.0, rate=-40.0, level=90.0, temp=22.0),
        sample(3 * HALF_HOUR_MS, 4, odo=125.0, rate=5.0, level=89.0, tpms=2.6, outside=14.0),
    ]  # fmt: skip


# ------------------------------------------------------------------ hand-computed windows


def test_ev_window_every_formula() -> None:
    stats = window_stats("car-1", "ev", 0, 6_000_000, ev_window())
    assert stats == pytest.approx(
        {
            "vehicle_id": "car-1",
            "powertrain": "ev",
            "window_start": 0,
            "window_end": 6_000_000,
            "samples": 4,
            "first_seq": 1,
            "last_seq": 4,
            "missing": 0,
            "duplicates": 0,
            "distance_km": 25.0,  # 125 - 100
            "avg_speed_kmh": 100.0 / 3,  # (40 + 60 + 0) / 3, the null speed is skipped
            "max_speed_kmh": 60.0,
            # Left sums: 10 kW x 0.5 h + 20 kW x 0.5 h; the last rate (5 kW) has no interval.
            "energy_used_kwh": 15.0,
            "energy_added_kwh": 20.0,  # 40 kW charging x 0.5 h
            "consumption_wh_per_km": 600.0,  # 1000 x 15 kWh / 25 km
            "fuel_used_l": None,
            "consumption_l_per_100km": None,
            "level_start_pct": 80.0,
            "level_end_pct": 89.0,
            "level_min_pct": 78.0,
            "level_max_pct": 90.0,
            "max_temp_c": 25.0,
            "min_tpms_bar": 2.4,
            "avg_outside_temp_c": 12.0,  # (10 + 12 + 14) / 3
        }
    )


def test_ice_window_fuel_used_and_litres_per_100km() -> None:
    samples = [
        sample(0, 10, odo=200.0, speed=50.0, rate=6.0, level=50.0, temp=85.0, outside=5.0),
        sample(HALF_HOUR_MS, 11, odo=230.0, speed=70.0, rate=12.0, level=49.0, temp=92.0,
               outside=7.0),
        sample(HOUR_MS, 12, odo=260.0, speed=0.0, rate=0.0, level=48.0, temp=90.0),
        sample(HOUR_MS + HOUR_MS // 4, 13, odo=260.0, speed=0.0, rate=3.0, level=48.0),
    ]  # fmt: skip
    stats = window_stats("car-2", "ice", 0, 6_000_000, samples)
    # 6 L/h x 0.5 h + 12 L/h x 0.5 h + 0 L/h x 0.25 h = 9 L over 60 km.
    assert stats["fuel_used_l"] == pytest.approx(9.0)
    assert stats["consumption_l_per_100km"] == pytest.approx(15.0)
    assert stats["distance_km"] == pytest.approx(60.0)
    assert stats["energy_used_kwh"] is None
    assert stats["energy_added_kwh"] is None
    assert stats["consumption_wh_per_km"] is None
    assert stats["max_temp_c"] == 92.0
    assert stats["avg_outside_temp_c"] == pytest.approx(6.0)
    assert stats["avg_speed_kmh"] == pytest.approx(30.0)


def test_time_step_is_in_hours() -> None:
    # 36 kW for 100 s is exactly 1 kWh.
    samples = [sample(0, 1, rate=36.0), sample(100_000, 2, rate=36.0)]
    assert window_stats("v", "ev", 0, 60_000, samples)["energy_used_kwh"] == pytest.approx(1.0)


def test_last_rate_is_not_extrapolated_to_the_window_end() -> None:
    samples = [sample(0, 1, rate=10.0), sample(HALF_HOUR_MS, 2, rate=1000.0)]
    stats = window_stats("v", "ev", 0, 10 * HOUR_MS, samples)
    assert stats["energy_used_kwh"] == pytest.approx(5.0)
    assert stats["energy_added_kwh"] == 0.0


def test_an_interval_whose_left_rate_is_null_counts_nothing() -> None:
    minute = 60_000
    rates: list[float | None] = [6.0] * 20
    rates[7] = None  # the rate of minute 7 is not known: that minute adds nothing
    samples = [sample(i * minute, i + 1, rate=r) for i, r in enumerate(rates)]
    # 18 of the 19 integrated minutes at 6 kW (or L/h)
    assert window_stats("v", "ev", 0, 0, samples)["energy_used_kwh"] == pytest.approx(1.8)
    assert window_stats("v", "ice", 0, 0, samples)["fuel_used_l"] == pytest.approx(1.8)


@pytest.mark.parametrize("powertrain", ["ev", "ice"])
def test_a_rate_known_for_under_nine_tenths_of_the_span_gives_no_totals(powertrain: str) -> None:
    # Before 2026-12-05 the unknown spans counted as 0: a source without a rate
    # (a Tesla payload without power) read as a car that used nothing.
    samples = [
        sample(0, 1, odo=0.0, rate=10.0),
        sample(HALF_HOUR_MS, 2, odo=20.0, rate=None),
        sample(HOUR_MS, 3, odo=40.0, rate=20.0),
    ]
    stats: dict[str, Any] = dict(window_stats("v", powertrain, 0, HOUR_MS, samples))
    assert stats["distance_km"] == 40.0
    for name in ("energy_used_kwh", "energy_added_kwh", "consumption_wh_per_km",
                 "fuel_used_l", "consumption_l_per_100km"):  # fmt: skip
        assert stats[name] is None, name
    assert MIN_RATE_COVERAGE == 0.9


def test_nine_tenths_of_the_span_is_enough() -> None:
    rates: list[float | None] = [1.0] * 9 + [None] + [1.0]  # 9 of 10 spans known
    samples = [sample(i * 1000, i + 1, odo=i * 0.1, rate=r) for i, r in enumerate(rates)]
    stats = window_stats("v", "ev", 0, 60_000, samples)
    assert stats["energy_used_kwh"] == pytest.approx(9 / 3600)
    assert stats["consumption_wh_per_km"] == pytest.approx(1000 * 9 / 3600 / 1.0)
    rates[3] = None  # 8 of 10
    samples = [sample(i * 1000, i + 1, odo=i * 0.1, rate=r) for i, r in enumerate(rates)]
    assert window_stats("v", "ev", 0, 60_000, samples)["energy_used_kwh"] is None


@pytest.mark.parametrize(
    ("powertrain", "odo_end", "field", "expected"),
    [
        ("ev", 0.1, "consumption_wh_per_km", 5000.0),  # 1000 x 0.5 kWh / 0.1 km
        ("ev", 0.09, "consumption_wh_per_km", None),
        ("ev", 0.0, "consumption_wh_per_km", None),
        ("ice", 0.1, "consumption_l_per_100km", 500.0),  # 100 x 0.5 L / 0.1 km
        ("ice", 0.09, "consumption_l_per_100km", None),
        ("ice", 0.0, "consumption_l_per_100km", None),
    ],
)
def test_consumption_only_from_a_tenth_of_a_kilometre(
    powertrain: str, odo_end: float, field: str, expected: float | None
) -> None:
    samples = [sample(0, 1, odo=0.0, rate=1.0), sample(HALF_HOUR_MS, 2, odo=odo_end, rate=1.0)]
    stats: dict[str, Any] = dict(window_stats("v", powertrain, 0, HOUR_MS, samples))
    assert stats[field] == pytest.approx(expected)
    # The amount used is reported whatever the distance.
    used = stats["energy_used_kwh"] if powertrain == "ev" else stats["fuel_used_l"]
    assert used == pytest.approx(0.5)


def test_duplicates_are_counted_and_the_first_arrival_wins() -> None:
    first = sample(HALF_HOUR_MS, 2, odo=105.0, rate=10.0, level=70.0)
    # A later copy of (seq 2, same ts) with other values must be ignored entirely.
    later = sample(HALF_HOUR_MS, 2, odo=500.0, rate=1000.0, level=1.0)
    samples = [
        sample(0, 1, odo=100.0, rate=0.0, level=71.0),
        first,
        later,
        sample(HOUR_MS, 3, odo=110.0, rate=0.0, level=69.0),
    ]
    stats = window_stats("v", "ev", 0, 2 * HOUR_MS, samples)
    assert stats["duplicates"] == 1
    assert stats["samples"] == 3
    assert stats["missing"] == 0
    assert stats["energy_used_kwh"] == pytest.approx(5.0)  # 0 x 0.5 + 10 x 0.5
    assert stats["level_min_pct"] == 69.0
    assert stats["distance_km"] == pytest.approx(10.0)


def test_exact_redeliveries_count_as_duplicates() -> None:
    window = ev_window()
    with_copies = [*window, list(window[1]), list(window[1]), list(window[3])]
    stats = window_stats("car-1", "ev", 0, 6_000_000, with_copies)
    expected = dict(window_stats("car-1", "ev", 0, 6_000_000, window))
    expected["duplicates"] = 3
    assert stats == expected


def test_out_of_order_samples_are_sorted_by_ts() -> None:
    in_order = window_stats("car-1", "ev", 0, 6_000_000, ev_window())
    reversed_ = window_stats("car-1", "ev", 0, 6_000_000, ev_window()[::-1])
    assert reversed_ == in_order
    assert reversed_["level_start_pct"] == 80.0  # the earliest ts, not the first to arrive
    assert reversed_["level_end_pct"] == 89.0


def test_missing_is_the_gap_between_first_and_last_seq() -> None:
    samples = [sample(0, 5), sample(1000, 6), sample(4000, 9), sample(1000, 6)]
    stats = window_stats("v", "ev", 0, 60_000, samples)
    assert (stats["first_seq"], stats["last_seq"]) == (5, 9)
    assert stats["missing"] == 2  # 9 - 5 + 1 - 3 distinct (7 and 8 never came)
    assert stats["duplicates"] == 1
    assert stats["samples"] == 3


def test_samples_without_seq_are_deduplicated_by_ts() -> None:
    samples = [
        sample(0, None, odo=1.0),
        sample(1000, None, odo=2.0),
        sample(1000, None, odo=99.0),
    ]
    stats = window_stats("v", "ev", 0, 60_000, samples)
    assert (stats["samples"], stats["duplicates"]) == (2, 1)
    assert (stats["first_seq"], stats["last_seq"], stats["missing"]) == (None, None, None)
    assert stats["distance_km"] == pytest.approx(1.0)


def test_missing_counts_only_samples_that_have_a_seq() -> None:
    samples = [sample(0, 1), sample(500, None), sample(2000, 3)]
    stats = window_stats("v", "ev", 0, 60_000, samples)
    assert (stats["samples"], stats["missing"]) == (3, 1)


def test_null_fields_are_skipped_not_counted_as_zero() -> None:
    samples = [
        sample(0, 1),  # everything null
        sample(1000, 2, odo=50.0, speed=30.0, level=40.0, temp=10.0, tpms=2.0, outside=-4.0),
        sample(2000, 3, odo=50.5, speed=None, level=None, temp=None, tpms=None, outside=None),
        sample(3000, 4),
    ]
    stats = window_stats("v", "ice", 0, 60_000, samples)
    assert stats["distance_km"] == pytest.approx(0.5)  # first and last non-null odometer
    assert stats["avg_speed_kmh"] == 30.0
    assert stats["max_speed_kmh"] == 30.0
    assert stats["level_start_pct"] == stats["level_end_pct"] == 40.0
    assert stats["max_temp_c"] == 10.0
    assert stats["min_tpms_bar"] == 2.0
    assert stats["avg_outside_temp_c"] == -4.0
    assert stats["fuel_used_l"] is None  # no rate at all: not known, not 0
    assert stats["samples"] == 4


def test_all_null_measurements_give_null_statistics() -> None:
    stats: dict[str, Any] = dict(
        window_stats("v", "ev", 0, 60_000, [sample(0, 1), sample(1000, 2)])
    )
    for name in (
        "distance_km", "avg_speed_kmh", "max_speed_kmh", "consumption_wh_per_km",
        "level_start_pct", "level_end_pct", "level_min_pct", "level_max_pct",
        "max_temp_c", "min_tpms_bar", "avg_outside_temp_c", "energy_used_kwh",
        "energy_added_kwh",
    ):  # fmt: skip
        assert stats[name] is None, name


@pytest.mark.parametrize("powertrain", ["ev", "ice"])
def test_empty_window(powertrain: str) -> None:
    stats = window_stats("v", powertrain, 0, 60_000, [])
    assert stats["samples"] == 0
    assert stats["duplicates"] == 0
    assert stats["first_seq"] is None
    assert stats["missing"] is None
    assert stats["distance_km"] is None
    assert (stats["energy_used_kwh"], stats["fuel_used_l"]) == (None, None)


def test_a_backwards_odometer_gives_zero_distance_and_no_consumption() -> None:
    samples = [sample(0, 1, odo=100.0, rate=20.0), sample(HALF_HOUR_MS, 2, odo=90.0, rate=20.0)]
    stats = window_stats("v", "ev", 0, HOUR_MS, samples)
    assert stats["distance_km"] == 0.0
    assert stats["consumption_wh_per_km"] is None


def test_dedupe_sorted_orders_by_ts_then_seq() -> None:
    a, b, c = sample(2000, 7), sample(1000, 9), sample(1000, 8)
    distinct, dropped = dedupe_sorted([a, b, c, list(b)])
    assert distinct == [c, b, a]
    assert dropped == 1


# ------------------------------------------------------------------------------ to_sample

EV_RECORD: dict[str, Any] = {
    "ts": 1000, "seq": 3, "powertrain": "ev", "odometer_km": 12.5, "speed_kmh": 42.0,
    "power_kw": 17.5, "battery_level_pct": 66.0, "battery_temp_c": 31.0,
    "tpms_fl_bar": 2.6, "tpms_fr_bar": None, "tpms_rl_bar": 2.2, "tpms_rr_bar": 2.4,
    "outside_temp_c": 8.0,
    # ICE fields present but must be ignored for an EV.
    "fuel_rate_lph": 99.0, "fuel_level_pct": 99.0, "coolant_temp_c": 99.0,
}  # fmt: skip


def test_to_sample_ev() -> None:
    assert to_sample(EV_RECORD) == [1000, 3, 12.5, 42.0, 17.5, 66.0, 31.0, 2.2, 8.0]


def test_to_sample_ice_uses_fuel_fields() -> None:
    record = {
        **EV_RECORD, "powertrain": "ice", "seq": None, "power_kw": None,
        "battery_level_pct": None, "battery_temp_c": None,
        "fuel_rate_lph": 4.5, "fuel_level_pct": 30.0, "coolant_temp_c": 88.0,
    }  # fmt: skip
    assert to_sample(record) == [1000, None, 12.5, 42.0, 4.5, 30.0, 88.0, 2.2, 8.0]


def test_to_sample_without_any_tyre_pressure() -> None:
    record = {**EV_RECORD, **dict.fromkeys(("tpms_fl_bar", "tpms_rl_bar", "tpms_rr_bar"))}
    assert to_sample(record)[7] is None


# ------------------------------------------------------------------------------ properties

_VALUE = st.one_of(
    st.none(), st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
)
_ROW = st.tuples(
    st.integers(min_value=0, max_value=120_000),  # ts
    st.one_of(st.none(), st.integers(min_value=0, max_value=200)),  # seq
    *([_VALUE] * 7),
)


def _ident(row: tuple[Any, ...]) -> tuple[str, int]:
    return ("s", row[1]) if row[1] is not None else ("t", row[0])


@st.composite
def _windows(draw: st.DrawFn) -> tuple[list[Sample], list[Sample], list[Sample], int]:
    """Distinct samples, the same with exact redeliveries, and a shuffle of the latter."""
    rows = draw(st.lists(_ROW, max_size=40, unique_by=_ident))
    distinct = [list(r) for r in rows]
    copies = draw(st.lists(st.sampled_from(distinct), max_size=10)) if distinct else []
    with_copies = distinct + [list(c) for c in copies]
    shuffled = draw(st.permutations(with_copies))
    return distinct, with_copies, shuffled, len(copies)


@settings(max_examples=200, deadline=None)
@given(window=_windows(), powertrain=st.sampled_from(["ev", "ice"]))
def test_window_stats_never_crashes_and_is_order_free(
    window: tuple[list[Sample], list[Sample], list[Sample], int], powertrain: str
) -> None:
    distinct, with_copies, shuffled, copies = window
    stats = window_stats("v", powertrain, 0, 120_000, with_copies)
    assert window_stats("v", powertrain, 0, 120_000, shuffled) == stats
    assert stats["duplicates"] == copies
    assert stats["samples"] == len(distinct)
    without = dict(window_stats("v", powertrain, 0, 120_000, distinct))
    assert without == {**stats, "duplicates": 0}
    assert stats["distance_km"] is None or stats["distance_km"] >= 0.0
    if stats["missing"] is not None:
        assert stats["missing"] >= 0
    used = stats["energy_used_kwh"] if powertrain == "ev" else stats["fuel_used_l"]
    assert used is None or used >= 0.0
    times = sorted({s[0] for s in distinct})
    if len(times) > 1 and all(s[4] is not None and s[4] == s[4] for s in distinct):
        assert used is not None  # a rate at every sample covers the whole span


@settings(max_examples=200, deadline=None)
@given(seqs=st.lists(st.integers(min_value=0, max_value=10**12), max_size=70), grow=st.booleans())
def test_missing_is_the_sum_of_the_gaps_between_consecutive_seqs(
    seqs: list[int], grow: bool
) -> None:
    if grow:
        seqs = sorted(set(seqs))  # what an in-order car sends: the telescoped sum
    samples = [sample(ts, seq) for ts, seq in enumerate(seqs)]
    expected = sum(max(b - a - 1, 0) for a, b in pairwise(seqs))
    assert window_stats("v", "ev", 0, 120_000, samples)["missing"] == (expected if seqs else None)


def test_a_sender_that_restarted_its_seq_is_not_a_duplicate_nor_a_gap() -> None:
    # A simulator restarted within the window (or a rebooted car): seq starts again at 0.
    before = [sample(i * 60_000, 500 + i, odo=100.0 + i, rate=1.0, level=70.0) for i in range(5)]
    after = [sample((10 + i) * 60_000, i, odo=110.0 + i, rate=1.0, level=70.0) for i in range(5)]
    stats = window_stats("v", "ev", 0, HOUR_MS, [*before, *after])
    assert stats["samples"] == 10
    assert stats["duplicates"] == 0
    assert stats["missing"] == 0
    assert (stats["first_seq"], stats["last_seq"]) == (0, 504)
    gappy = window_stats("v", "ev", 0, HOUR_MS, [*before[:2], *before[3:], *after])
    assert gappy["missing"] == 1
