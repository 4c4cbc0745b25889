"""Each car's open windows in its own state: packing, chunks, markers, closing, due stats."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processing.stats import Sample, window_stats
from processing.windows import (
    CHUNK,
    CLOSED,
    DUE,
    OPEN,
    add_sample,
    close_passed,
    close_window,
    crosses_close,
    is_sending,
    pack,
    packed_stats,
    spread_offset,
    stats_due,
    take_due,
    unpack,
)

pytestmark = pytest.mark.unit

W = 60_000


class Store:
    """A dict with the part of Quix's ``State`` the samples use."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get_bytes(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set_bytes(self, key: str, value: bytes) -> None:
        assert isinstance(value, bytes)
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def sample(ts: int, seq: int | None = 1, **values: Any) -> Sample:
    return [
        ts,
        seq,
        values.get("odo", 1000.123456789),
        values.get("speed", 36),
        values.get("rate", -12.5),
        values.get("level"),
        values.get("temp", 31.2),
        values.get("tpms"),
        values.get("outside", 1e-9),
    ]


def test_packing_round_trips_exactly() -> None:
    samples = [
        sample(1_767_225_600_123, 2**63 - 1),
        sample(5, None, level=0.1 + 0.2, tpms=2.4),
        sample(6, 2**53 + 1),
    ]
    back = unpack(b"".join(pack(s) for s in samples))
    assert back == samples
    assert isinstance(back[0][0], int)
    assert isinstance(back[0][1], int)
    assert back[1][1] is None
    assert back[0][5] is None
    assert back[1][5] == 0.1 + 0.2


_MEASURE = st.one_of(
    st.none(),
    st.integers(min_value=-500, max_value=500),
    st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False),
)
_ROW = st.tuples(
    st.integers(min_value=0, max_value=59_999),
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**62)),
    *([_MEASURE] * 7),
)


@st.composite
def _arrivals(draw: st.DrawFn) -> list[Sample]:
    """Samples as a car delivers them: in order (the fast path), or in any order with repeats."""
    rows = [list(r) for r in draw(st.lists(_ROW, max_size=70))]
    if draw(st.booleans()):
        by_ts = {row[0]: row for row in rows}
        rows = [by_ts[ts] for ts in sorted(by_ts)]
    return rows


@settings(max_examples=300, deadline=None)
@given(samples=_arrivals(), powertrain=st.sampled_from(["ev", "ice"]))
def test_packed_stats_equal_the_stats_of_the_unpacked_samples(
    samples: list[Sample], powertrain: str
) -> None:
    packed = b"".join(pack(s) for s in samples)
    expected = window_stats("v", powertrain, 0, W, unpack(packed))
    assert packed_stats("v", powertrain, 0, W, packed) == expected


def add(car: dict[str, Any], store: Store, ts: int, seq: int = 1) -> bool | None:
    start = ts - ts % W
    return add_sample(car, store, start, powertrain="ev", sample=sample(ts, seq))


def test_a_car_sends_a_marker_with_its_first_record_of_each_window() -> None:
    car: dict[str, Any] = {}
    store = Store()
    due = [add(car, store, t) for t in (0, 1_000, 9_999, 10_000, 11_000, 59_999, 60_500, 75_000)]
    assert due == [True, False, False, False, False, False, True, False]
    assert [(w[0], w[3]) for w in car[OPEN]] == [(0, 6), (W, 2)]
    assert add(car, store, 30_000) is False  # an older window, not the first sample


@pytest.mark.parametrize(
    ("clock", "timestamp", "crosses"),
    [
        (69_999, 70_000, True),  # window [0, 60 s) closes at 70 s (grace 10 s)
        (69_000, 75_000, True),
        (70_000, 75_000, False),  # already past: the record before crossed
        (10_000, 69_999, False),
        (70_000, 70_000, False),  # not past the clock
        (75_000, 60_000, False),  # behind the clock
        (0, 70_000, True),  # a clock that starts at 0 (a restart) crosses at once
        (65_000, 135_000, True),  # past two closes at once
    ],
)
def test_a_record_crosses_a_close_when_it_moves_the_clock_past_end_plus_grace(
    clock: int, timestamp: int, crosses: bool
) -> None:
    assert crosses_close(clock, timestamp, W, 10_000) is crosses


def test_samples_are_kept_in_small_chunks_and_taken_back_in_order() -> None:
    car: dict[str, Any] = {}
    store = Store()
    times = [t * 1_000 for t in range(60)]
    for t in reversed(times):  # arrival order is kept; window_stats sorts
        add(car, store, t, seq=t)
    add(car, store, 61_000)
    # 60 samples: three full chunks under their own keys, 12 still in the car's state.
    assert sorted(store.data) == ["w0.0", "w0.1", "w0.2"]
    assert {len(v) for v in store.data.values()} == {CHUNK * 72}
    assert [(w[0], w[3], len(w[4])) for w in car[OPEN]] == [(0, 60, 12 * 96), (W, 1, 96)]
    assert close_window(car, 0) is True
    assert car[DUE] == 0  # due at once: no spread given
    assert is_sending(car, 0)
    [(start, powertrain, packed)] = take_due(car, store)
    assert (start, powertrain) == (0, "ev")
    assert [s[0] for s in unpack(packed)] == list(reversed(times))
    assert DUE not in car
    assert store.data == {}  # the closed window's chunks are gone
    assert [w[0] for w in car[OPEN]] == [W]
    assert take_due(car, store) == []


def test_a_closed_window_refuses_its_late_records_until_and_after_its_stats() -> None:
    car: dict[str, Any] = {}
    store = Store()
    for t in (0, 1_000, 61_000):
        add(car, store, t)
    close_window(car, 0)
    assert car[CLOSED] == 0
    assert add(car, store, 2_000) is None  # e.g. redelivered after a restart: late
    [(_, _, packed)] = take_due(car, store)
    assert len(unpack(packed)) == 2
    assert add(car, store, 3_000) is None
    assert [w[0] for w in car[OPEN]] == [W]


def test_a_quiet_car_is_not_sending() -> None:
    car: dict[str, Any] = {}
    store = Store()
    add(car, store, 5_000)
    close_window(car, 0)
    assert not is_sending(car, 0)


def test_closing_a_window_closes_the_older_ones_too_in_order() -> None:
    # Quix hands the windows it closes at one record over in no particular order; an
    # older window it does not have at all (its markers were refused after a restart)
    # is emitted, not lost.
    car: dict[str, Any] = {}
    store = Store()
    add(car, store, 61_000)
    for t in range(CHUNK + 1):
        add(car, store, t * 1_000)
    assert close_window(car, W) is True
    assert car[CLOSED] == W
    due = take_due(car, store)
    assert [(start, len(unpack(packed))) for start, _, packed in due] == [(0, CHUNK + 1), (W, 1)]
    assert store.data == {}
    assert OPEN not in car
    assert close_window(car, 0) is False  # Quix's close of the older one, after


def test_closing_keeps_an_older_window_whose_stats_are_still_due() -> None:
    car: dict[str, Any] = {}
    store = Store()
    add(car, store, 1_000)
    add(car, store, 61_000)
    close_window(car, 0)  # the car was sending: its stats wait for its next record
    add(car, store, 121_000)
    close_window(car, W)  # ... which never came before the next window closed
    assert [start for start, _, _ in take_due(car, store)] == [0, W]


def test_closing_a_window_the_car_does_not_have() -> None:
    car: dict[str, Any] = {}
    assert close_window(car, W) is False
    assert car[CLOSED] == W
    assert DUE not in car


def test_stats_are_due_from_the_earliest_due_time_given() -> None:
    store = Store()
    car: dict[str, Any] = {}
    add_sample(car, store, 0, powertrain="ev", sample=sample(5))
    add_sample(car, store, W, powertrain="ev", sample=sample(W + 5))
    close_window(car, 0, due_at=W + 9_000)
    assert not stats_due(car, W + 8_999)
    assert stats_due(car, W + 9_000)
    close_window(car, W, due_at=2 * W + 9_000)  # a later close keeps the earlier due time
    assert stats_due(car, W + 9_000)
    assert [start for start, _, _ in take_due(car, store)] == [0, W]
    assert not stats_due(car, 10 * W)
    assert 0 <= spread_offset("car-1", 10_000) < 10_000
    assert spread_offset("car-1", 10_000) == spread_offset("car-1", 10_000)
    assert spread_offset("car-1", 0) == 0


def test_a_sending_car_closes_the_windows_the_clock_passed_oldest_first() -> None:
    store = Store()
    car: dict[str, Any] = {}
    for t in (1_000, 61_000, 121_000):
        add(car, store, t)
    due_times = {0: 70_000, W: W + 70_000}
    assert close_passed(car, -1, due_times.__getitem__) is False  # nothing passed yet
    assert close_passed(car, W, due_times.__getitem__) is True
    assert car[CLOSED] == W
    assert car[DUE] == 70_000  # the oldest window's due time
    assert close_passed(car, W, due_times.__getitem__) is False  # closed already
    assert [start for start, _, _ in take_due(car, store)] == [0, W]
    assert [w[0] for w in car[OPEN]] == [2 * W]
