"""Each car's open tumbling windows, kept in the car's own state.

Quix's ``Collect()`` window stores every record as its own state key and changelog
message, which cost as much per record as everything else in the pipeline together
(docs/benchmarks.md). The pipeline already reads and writes the car's state for every
record, so the samples of its open windows live there instead, and Quix's window only
sees a *marker* — one or two per car per window — to decide, on the partition's clock,
when a window closes. That keeps Quix's closing rule (``window_end + grace <= partition
clock``, so a car that stops sending still gets its window) at about 1/30 of the cost.

A marker is due on a car's first record in a window, and on its first record at or past
``grace % window`` into a window: the first record of a partition to reach a window's
closing time is always one of those, so the marker window's clock crosses every closing
time at the same record as a window fed every record would.

The car's state is JSON, decoded and encoded for every record, so the samples are kept
packed (nine float64 per sample, base64 text): as JSON numbers they made up most of the
state's size and cost ~25 µs per record to round-trip. Missing values are NaN inside the
packing (validated records never carry NaN); the round trip is exact.

The functions here only touch the car's state dict; they are pure otherwise.
"""

from __future__ import annotations

import binascii
import math
import struct
from typing import Any, Final

from processing.stats import SEQ, TS, Sample

# car[OPEN] is a list of [window_start, powertrain, post_grace_marker_sent, packed samples],
# ordered by window_start; car[CLOSED] is the start of the car's latest closed window.
OPEN: Final = "windows"
CLOSED: Final = "closed_window"
_PACKED: Final = struct.Struct("<9d")  # 72 bytes: base64 of each sample needs no padding
_PACKED_CHARS: Final = _PACKED.size // 3 * 4
_NAN: Final = math.nan


def pack(sample: Sample) -> str:
    """One sample as base64 text; concatenating packed samples packs the list."""
    raw = _PACKED.pack(*[_NAN if v is None else v for v in sample])
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def unpack(packed: str) -> list[Sample]:
    """The samples of :func:`pack` texts concatenated, in order."""
    samples: list[Sample] = []
    for values in _PACKED.iter_unpack(binascii.a2b_base64(packed)):
        sample: Sample = [None if math.isnan(v) else v for v in values]
        sample[TS] = int(values[TS])
        if sample[SEQ] is not None:
            sample[SEQ] = int(values[SEQ])
        samples.append(sample)
    return samples


def add_sample(
    car: dict[str, Any],
    start: int,
    offset_ms: int,
    powertrain: str,
    sample: Sample,
    *,
    marker_offset_ms: int,
) -> bool | None:
    """Add ``sample`` to the car's window starting at ``start``.

    Args:
        car: The car's state.
        start: Start of the record's window.
        offset_ms: The record's time minus ``start``.
        powertrain: The record's powertrain (the stats need it).
        sample: The record's compact sample.
        marker_offset_ms: ``grace % window``; the second marker is due at this offset.

    Returns:
        None when the car's window for ``start`` has already closed (the record is late
        and was not added), else whether a marker is due.
    """
    if start <= car.get(CLOSED, start - 1):
        return None
    windows: list[list[Any]] = car.setdefault(OPEN, [])
    for window in windows:
        if window[0] == start:
            window[3] += pack(sample)
            if window[2] or offset_ms < marker_offset_ms:
                return False
            window[2] = True
            return True
    windows.append([start, powertrain, offset_ms >= marker_offset_ms, pack(sample)])
    if len(windows) > 1 and windows[-2][0] > start:
        windows.sort(key=lambda w: w[0])
    return True


def take_window(car: dict[str, Any], start: int) -> tuple[list[Any] | None, int]:
    """Remove and return the car's window starting at ``start``; it is now closed.

    Windows that started before it and are still open had their markers refused by the
    partition's clock (their records came late, which the in-memory lateness check misses
    right after a restart); they are dropped like any late record.

    Returns:
        ``[start, powertrain, marker_sent, packed samples]`` (see :func:`unpack`) or None
        when the car has no such window, and the number of samples dropped as late.
    """
    found = None
    dropped = 0
    remaining: list[list[Any]] = []
    for window in car.get(OPEN, ()):
        if window[0] == start:
            found = window
        elif window[0] < start:
            dropped += len(window[3]) // _PACKED_CHARS
        else:
            remaining.append(window)
    if remaining:
        car[OPEN] = remaining
    else:
        car.pop(OPEN, None)
    car[CLOSED] = max(car.get(CLOSED, start), start)
    return found, dropped
