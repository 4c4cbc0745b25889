"""Each car's open tumbling windows, kept in the car's own state.

Quix's ``Collect()`` window stores every record as its own state key and changelog
message, which cost as much per record as everything else in the pipeline together
(docs/benchmarks-history.md). The pipeline already reads and writes the car's state for every
record, so the samples of its open windows live there instead, and Quix's window only
sees a *marker* — about one per car per window — to decide, on the partition's clock,
when a window closes. That keeps Quix's closing rule (``window_end + grace <= partition
clock``, so a car that stops sending still gets its window) at about 1/60 of the cost.

A marker is due on a car's first record in a window (:func:`add_sample`), which gives
Quix the car's window, and on the record that moves the partition's clock past a
closing time (:func:`crosses_close`), so the marker window's clock crosses every closing
time at the same record as a window fed every record would.

Samples are packed into 72 bytes (ts and seq as int64, seven float64 measurements, NaN
for a missing one, which validated records never carry; exact, except that an integer
measurement comes back as a float). The car's state is JSON, decoded and encoded for
every record, so it only holds a window's last, incomplete chunk of up to :data:`CHUNK`
samples (base64); each full chunk moves to its own state key as raw bytes. A record then
rewrites about 1 KiB, not the whole window: Quix writes every changed key to the
changelog at each checkpoint, and at 1 Hz a car changes its state once per record.

The functions here only touch the car's state dict and its sample store.
"""

from __future__ import annotations

import binascii
import math
import operator
import struct
from collections.abc import Callable
from typing import Any, Final, Protocol

from processing.stats import SEQ, TS, Sample, WindowStats, column_stats, window_stats

# car[OPEN] is a list of [window_start, powertrain, (unused; True in old states), sample count,
# base64 of the samples not yet in a full chunk, (True once closed)], ordered by
# window_start; car[CLOSED] is the start of the car's latest closed window; car[DUE] is
# set while a closed window's stats have not been emitted: the event time from which the
# car's next record emits them (True in states written before that: at once).
OPEN: Final = "windows"
CLOSED: Final = "closed_window"
DUE: Final = "windows_due"
CHUNK: Final = 16  # samples per chunk: 1,152 bytes
# ts and seq as int64 (seq may exceed float64's 2**53), seq -1 when missing (the contract
# has seq >= 0), then seven float64 measurements with NaN when missing.
_PACKED: Final = struct.Struct("<qq7d")
_NO_SEQ: Final = -1
_NAN: Final = math.nan


class SampleStore(Protocol):
    """The part of Quix's per-key ``State`` the samples use."""

    def get_bytes(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None."""

    def set_bytes(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``."""

    def delete(self, key: str) -> None:
        """Remove ``key``."""


def pack(sample: Sample) -> bytes:
    """One sample as 72 bytes; concatenating packed samples packs the list."""
    seq = sample[SEQ]
    return _PACKED.pack(
        sample[TS], _NO_SEQ if seq is None else seq, *[_NAN if v is None else v for v in sample[2:]]
    )


def unpack(packed: bytes) -> list[Sample]:
    """The samples of :func:`pack` results concatenated, in order."""
    samples: list[Sample] = []
    for values in _PACKED.iter_unpack(packed):
        sample: Sample = [None if math.isnan(v) else v for v in values]
        if values[SEQ] == _NO_SEQ:
            sample[SEQ] = None
        samples.append(sample)
    return samples


def packed_stats(
    vehicle_id: str, powertrain: str, window_start: int, window_end: int, packed: bytes
) -> WindowStats:
    """``window_stats`` of packed samples, the same result as over :func:`unpack`'s.

    Unpacking into one list per sample was ~40 % of a closed window's pure-Python cost
    (a profile of the close, docs/benchmarks-history.md). Samples that arrived in strictly
    increasing ts order, the usual case, are already distinct and sorted, so their
    columns go to the formulas as :mod:`struct` returns them; any other order takes
    the general path that deduplicates and sorts.
    """
    columns = list(zip(*_PACKED.iter_unpack(packed), strict=True))
    if not columns or not all(map(operator.lt, columns[TS], columns[TS][1:])):
        return window_stats(vehicle_id, powertrain, window_start, window_end, unpack(packed))
    seqs = [seq for seq in columns[SEQ] if seq != _NO_SEQ]
    return column_stats(
        vehicle_id, powertrain, window_start, window_end, columns, seqs=seqs, duplicates=0
    )


def _chunk_key(start: int, index: int) -> str:
    return f"w{start}.{index}"


def add_sample(
    car: dict[str, Any],
    store: SampleStore,
    start: int,
    *,
    powertrain: str,
    sample: Sample,
) -> bool | None:
    """Add ``sample`` to the car's window starting at ``start``.

    Args:
        car: The car's state.
        store: Where the car's samples are kept.
        start: Start of the record's window.
        powertrain: The record's powertrain (the stats need it).
        sample: The record's compact sample.

    Returns:
        None when the car's window for ``start`` has already closed (the record is late
        and was not added), else whether it is the window's first sample (a marker is
        due, so that Quix has the car's window).
    """
    if start <= car.get(CLOSED, start - 1):
        return None
    windows: list[list[Any]] = car.setdefault(OPEN, [])
    for window in windows:
        if window[0] == start:
            break
    else:
        window = [start, powertrain, False, 0, ""]
        windows.append(window)
        if len(windows) > 1 and windows[-2][0] > start:
            windows.sort(key=lambda w: w[0])
    count: int = window[3]
    pending = window[4] + binascii.b2a_base64(pack(sample), newline=False).decode("ascii")
    if (count + 1) % CHUNK:
        window[4] = pending
    else:
        store.set_bytes(_chunk_key(start, count // CHUNK), binascii.a2b_base64(pending))
        window[4] = ""
    window[3] = count + 1
    return count == 0


def crosses_close(clock: int, timestamp: int, window_ms: int, grace_ms: int) -> bool:
    """Whether a record moves a partition's clock to or past a window's closing time.

    Windows close when the clock reaches ``window_end + grace``. Only this record has to
    reach Quix's marker window for it to close every car's window at the same record; a
    second marker from every car (as until 2026-12-05) put 5,000 window updates per
    process at 10,000 cars into the second of the close.

    Args:
        clock: The partition's clock before the record (0 when not known).
        timestamp: The record's timestamp.
        window_ms: The window length.
        grace_ms: The grace period.

    Returns:
        Whether a closing time ``k * window_ms + grace_ms`` lies in ``(clock, timestamp]``.
    """
    return (timestamp - grace_ms) // window_ms > (clock - grace_ms) // window_ms


def last_close(clock: int, window_ms: int, grace_ms: int) -> int:
    """The latest closing time ``k * window_ms + grace_ms`` at or before ``clock``.

    Every lateness and closing decision compares the clock with closing times only, so
    a clock restored as this value decides them as the exact one did.
    """
    return (clock - grace_ms) // window_ms * window_ms + grace_ms


def _take_samples(store: SampleStore, window: list[Any]) -> bytes:
    start, count, pending = window[0], window[3], window[4]
    chunks = []
    for index in range(count // CHUNK):
        key = _chunk_key(start, index)
        chunks.append(store.get_bytes(key) or b"")
        store.delete(key)
    chunks.append(binascii.a2b_base64(pending))
    return b"".join(chunks)


def close_window(car: dict[str, Any], start: int, due_at: int = 0) -> bool:
    """Mark the car's windows up to the one starting at ``start`` closed; their stats are due.

    ``due_at`` is the event time from which the car's records may emit them (see
    :func:`stats_due`); an earlier due time already set stays.

    Quix closes all of a car's windows up to ``start`` at the same record, in no
    particular order, so older ones are marked here too and their stats come out oldest
    first. An older window Quix does not have (its markers were refused as late, which
    the in-memory lateness check misses right after a restart) is emitted as well rather
    than lost.

    Returns:
        Whether the car had a window to close (False when an earlier close took it).
    """
    found = False
    for window in car.get(OPEN, ()):
        if window[0] <= start:
            found = True
            window[5:] = [True]
    car[CLOSED] = max(car.get(CLOSED, start), start)
    if found:
        car[DUE] = min(int(car.get(DUE, due_at)), due_at)
    return found


def close_passed(car: dict[str, Any], passed: int, due_at: Callable[[int], int]) -> bool:
    """Close the car's open windows that start at or before ``passed``, oldest first.

    A car that is still sending closes its windows itself, with its first record after
    the partition's clock passed their closing time, so that the marker window's close
    (every car of the partition at one record) does not write every car's state at
    once (see ``on_close`` in :mod:`processing.pipeline`).

    Args:
        car: The car's state.
        passed: The latest window start whose closing time the partition clock passed.
        due_at: The due time (see :func:`close_window`) of a window, by its start.

    Returns:
        Whether a window was closed.
    """
    closed = False
    for window in car.get(OPEN, ()):
        start = window[0]
        if start > passed:
            break
        if not window[5:]:
            closed = close_window(car, start, due_at(start)) or closed
    return closed


def stats_due(car: dict[str, Any], timestamp: int) -> bool:
    """Whether a record at ``timestamp`` emits the car's closed windows' stats."""
    due = car.get(DUE)
    return due is not None and timestamp >= due


def spread_offset(vehicle_id: str, spread_ms: int) -> int:
    """A car's fixed delay in ``[0, spread_ms)`` for emitting a closed window's stats.

    Every car's window closes at the same record of a partition; emitting all their stats
    with each car's next record stalled the partition's alerts for seconds at 6,000 cars
    (docs/benchmarks-history.md). A stable per-car offset spreads that work evenly.
    """
    if spread_ms <= 0:
        return 0
    return binascii.crc32(vehicle_id.encode()) % spread_ms


def is_sending(car: dict[str, Any], start: int) -> bool:
    """Whether the car has already sent a record for a window after ``start``."""
    return any(window[0] > start for window in car.get(OPEN, ()))


def take_due(car: dict[str, Any], store: SampleStore) -> list[tuple[int, str, bytes]]:
    """Remove the car's closed windows whose stats are due, oldest first.

    Returns:
        ``(start, powertrain, packed samples)`` per window (see :func:`unpack`).
    """
    due = []
    remaining: list[list[Any]] = []
    for window in car.get(OPEN, ()):
        if window[5:]:
            due.append((window[0], window[1], _take_samples(store, window)))
        else:
            remaining.append(window)
    if remaining:
        car[OPEN] = remaining
    else:
        car.pop(OPEN, None)
    car.pop(DUE, None)
    return due
