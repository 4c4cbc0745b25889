"""Each car's open windows in its own state: packing, markers, closing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from processing.stats import Sample
from processing.windows import CLOSED, OPEN, add_sample, pack, take_window, unpack

pytestmark = pytest.mark.unit

W = 60_000
MARK = 10_000  # grace % window


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


def test_packing_round_trips_exactly_through_json() -> None:
    samples = [sample(1_767_225_600_123, 2**40), sample(5, None, level=0.1 + 0.2, tpms=2.4)]
    packed = "".join(pack(s) for s in samples)
    back = unpack(orjson.loads(orjson.dumps(packed)))
    assert back == samples
    assert isinstance(back[0][0], int)
    assert isinstance(back[0][1], int)
    assert back[1][1] is None
    assert back[0][5] is None
    assert back[1][5] == 0.1 + 0.2


def add(car: dict[str, Any], ts: int, seq: int = 1) -> bool | None:
    start = ts - ts % W
    return add_sample(car, start, ts - start, "ev", sample(ts, seq), marker_offset_ms=MARK)


def test_markers_on_the_first_record_and_the_first_past_the_grace_offset() -> None:
    car: dict[str, Any] = {}
    due = [add(car, t) for t in (0, 1_000, 9_999, 10_000, 11_000, 59_999, 60_500, 75_000)]
    assert due == [True, False, False, True, False, False, True, True]
    assert [w[0] for w in car[OPEN]] == [0, W]
    assert len(unpack(car[OPEN][0][3])) == 6


def test_a_first_record_past_the_offset_needs_only_one_marker() -> None:
    car: dict[str, Any] = {}
    assert add(car, 30_000) is True
    assert add(car, 40_000) is False


def test_closing_takes_the_window_and_refuses_its_late_records() -> None:
    car: dict[str, Any] = {}
    for t in (0, 1_000, 61_000):
        add(car, t)
    window, dropped = take_window(car, 0)
    assert window is not None
    assert [s[0] for s in unpack(window[3])] == [0, 1_000]
    assert dropped == 0
    assert car[CLOSED] == 0
    assert add(car, 2_000) is None  # e.g. redelivered after a restart: late, not re-opened
    assert [w[0] for w in car[OPEN]] == [W]


def test_closing_drops_older_windows_whose_markers_were_refused() -> None:
    car: dict[str, Any] = {}
    add(car, 61_000)
    add(car, 5_000)  # its window had closed on the partition's clock before the restart
    add(car, 6_000)
    assert [w[0] for w in car[OPEN]] == [0, W]
    window, dropped = take_window(car, W)
    assert window is not None
    assert dropped == 2
    assert OPEN not in car
    assert car[CLOSED] == W


def test_closing_a_window_the_car_does_not_have() -> None:
    car: dict[str, Any] = {}
    window, dropped = take_window(car, W)
    assert (window, dropped) == (None, 0)
    assert car[CLOSED] == W
