"""Per-vehicle window statistics: the formulas of docs/processing.md, as pure functions.

The pipeline collects a compact :data:`Sample` per message in each tumbling window and
calls :func:`window_stats` when the window closes. The models package builds its
training features with the same :func:`window_features`, so training and scoring agree.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Final, TypedDict

# Compact sample kept in window state (a list, so it serialises small):
# [ts, seq, odometer_km, speed_kmh, rate, level_pct, temp_c, min_tpms_bar, outside_temp_c]
# where rate is power_kw (EV) or fuel_rate_lph (ICE), and temp is battery/coolant temp.
Sample = list[Any]
SAMPLE_FIELDS: Final = 9
TS, SEQ, ODO, SPEED, RATE, LEVEL, TEMP, TPMS, OUTSIDE = range(SAMPLE_FIELDS)
MIN_DISTANCE_KM: Final = 0.1
# Integrated energy/fuel and consumption need the rate known over this share of the
# integrated span: a source that reports no rate (or rarely) must give null, not a
# consumption near 0 that drags fleet figures and the car's baseline down.
MIN_RATE_COVERAGE: Final = 0.9
_MS_PER_HOUR: Final = 3_600_000.0


def rate_covered(covered_h: float, span_h: float) -> bool:
    """Whether a rate known for ``covered_h`` of ``span_h`` hours supports a total."""
    return covered_h > 0 and covered_h >= MIN_RATE_COVERAGE * span_h


class WindowStats(TypedDict):
    """One ``vehicle-stats`` record."""

    vehicle_id: str
    powertrain: str
    window_start: int
    window_end: int
    samples: int
    first_seq: int | None
    last_seq: int | None
    missing: int | None
    duplicates: int
    distance_km: float | None
    avg_speed_kmh: float | None
    max_speed_kmh: float | None
    energy_used_kwh: float | None
    energy_added_kwh: float | None
    consumption_wh_per_km: float | None
    fuel_used_l: float | None
    consumption_l_per_100km: float | None
    level_start_pct: float | None
    level_end_pct: float | None
    level_min_pct: float | None
    level_max_pct: float | None
    max_temp_c: float | None
    min_tpms_bar: float | None
    avg_outside_temp_c: float | None


def to_sample(record: dict[str, Any]) -> Sample:
    """The compact window sample of one validated v1 record."""
    ev = record["powertrain"] == "ev"
    tyres = [
        p
        for p in (
            record["tpms_fl_bar"],
            record["tpms_fr_bar"],
            record["tpms_rl_bar"],
            record["tpms_rr_bar"],
        )
        if p is not None
    ]
    return [
        record["ts"],
        record["seq"],
        record["odometer_km"],
        record["speed_kmh"],
        record["power_kw"] if ev else record["fuel_rate_lph"],
        record["battery_level_pct"] if ev else record["fuel_level_pct"],
        record["battery_temp_c"] if ev else record["coolant_temp_c"],
        min(tyres) if tyres else None,
        record["outside_temp_c"],
    ]


def dedupe_sorted(samples: list[Sample]) -> tuple[list[Sample], int]:
    """Drop repeated (seq, ts) pairs (the first arrival wins) and order by ts.

    A redelivered message repeats both. The same seq with another ts is a sender that
    restarted its count (a rebooted car, a restarted simulator): a new sample. Samples
    without a seq (sources that have none) are deduplicated by ts.

    Returns:
        The distinct samples ordered by (ts, seq) and the number of duplicates dropped.
    """
    seen: set[Any] = set()
    distinct: list[Sample] = []
    for sample in samples:
        ident = (sample[SEQ], sample[TS])
        if ident in seen:
            continue
        seen.add(ident)
        distinct.append(sample)
    distinct.sort(key=lambda s: (s[TS], s[SEQ] if s[SEQ] is not None else -1))
    return distinct, len(samples) - len(distinct)


def _present(column: Sequence[Any]) -> list[Any]:
    # NaN is how packed samples mark a missing measurement (v != v only for NaN).
    return [v for v in column if v is not None and v == v]  # noqa: PLR0124


def window_stats(
    vehicle_id: str, powertrain: str, window_start: int, window_end: int, samples: list[Sample]
) -> WindowStats:
    """Statistics of one vehicle's samples in ``[window_start, window_end)``."""
    distinct, duplicates = dedupe_sorted(samples)
    columns: Sequence[Sequence[Any]] = list(zip(*distinct, strict=True)) or [()] * SAMPLE_FIELDS
    seqs = [s for s in columns[SEQ] if s is not None]
    return column_stats(
        vehicle_id, powertrain, window_start, window_end, columns, seqs=seqs, duplicates=duplicates
    )


def column_stats(
    vehicle_id: str,
    powertrain: str,
    window_start: int,
    window_end: int,
    columns: Sequence[Sequence[Any]],
    *,
    seqs: list[int],
    duplicates: int,
) -> WindowStats:
    """:func:`window_stats` of distinct samples given as columns, in (ts, seq) order.

    Args:
        vehicle_id: The car.
        powertrain: ``ev`` or ``ice``.
        window_start: Start of the window (ms).
        window_end: End of the window (ms).
        columns: One sequence per :data:`Sample` field, indexed like a sample; a
            measurement is missing when None or NaN.
        seqs: The samples' seqs that are present, in the same order.
        duplicates: Samples dropped as repeats before these.
    """
    ts = columns[TS]
    first_seq = min(seqs) if seqs else None
    last_seq = max(seqs) if seqs else None
    # Gaps between consecutive seqs in ts order; a seq that does not grow is a restarted
    # count, not a gap (last - first + 1 - n, the same for one run, went wild there).
    if not seqs:
        missing = None
    elif all(map(operator.lt, seqs, seqs[1:])):
        missing = seqs[-1] - seqs[0] + 1 - len(seqs)  # the sum below, telescoped
    else:
        missing = sum(max(b - a - 1, 0) for a, b in pairwise(seqs))

    odometers = _present(columns[ODO])
    distance = max(0.0, odometers[-1] - odometers[0]) if odometers else None
    speeds = _present(columns[SPEED])

    # Left Riemann sums: the rate reported at sample i-1 holds until sample i.
    used = 0.0
    added = 0.0
    covered = 0.0
    for rate, start, end in zip(columns[RATE], ts, ts[1:], strict=False):
        if rate is None or rate != rate:  # noqa: PLR0124 - NaN: missing
            continue
        hours = (end - start) / _MS_PER_HOUR
        covered += hours
        used += max(rate, 0.0) * hours
        added += max(-rate, 0.0) * hours
    known = rate_covered(covered, (ts[-1] - ts[0]) / _MS_PER_HOUR if ts else 0.0)
    ev = powertrain == "ev"
    long_enough = known and distance is not None and distance >= MIN_DISTANCE_KM
    levels = _present(columns[LEVEL])
    temps = _present(columns[TEMP])
    tyres = _present(columns[TPMS])
    outside = _present(columns[OUTSIDE])
    return WindowStats(
        vehicle_id=vehicle_id,
        powertrain=powertrain,
        window_start=window_start,
        window_end=window_end,
        samples=len(ts),
        first_seq=first_seq,
        last_seq=last_seq,
        missing=missing,
        duplicates=duplicates,
        distance_km=distance,
        avg_speed_kmh=sum(speeds) / len(speeds) if speeds else None,
        max_speed_kmh=max(speeds) if speeds else None,
        energy_used_kwh=used if ev and known else None,
        energy_added_kwh=added if ev and known else None,
        consumption_wh_per_km=1000.0 * used / distance if ev and long_enough and distance else None,
        fuel_used_l=used if not ev and known else None,
        consumption_l_per_100km=100.0 * used / distance
        if not ev and long_enough and distance
        else None,
        level_start_pct=levels[0] if levels else None,
        level_end_pct=levels[-1] if levels else None,
        level_min_pct=min(levels) if levels else None,
        level_max_pct=max(levels) if levels else None,
        max_temp_c=max(temps) if temps else None,
        min_tpms_bar=min(tyres) if tyres else None,
        avg_outside_temp_c=sum(outside) / len(outside) if outside else None,
    )


# Every feature window_features() computes; a model artifact uses a subset of them.
WINDOW_FEATURES: Final = (
    "consumption_ratio",
    "avg_speed_kmh",
    "avg_outside_temp_c",
    "distance_km",
    "previous_ratio",
)
FEATURES: Final = WINDOW_FEATURES[:2]


def consumption(stats: WindowStats) -> float | None:
    """The window's consumption in the powertrain's unit (Wh/km or L/100 km)."""
    if stats["powertrain"] == "ev":
        return stats["consumption_wh_per_km"]
    return stats["consumption_l_per_100km"]


def window_features(
    stats: WindowStats, baseline: float | None, previous_ratio: float | None = None
) -> dict[str, float] | None:
    """Features of a driving window for the consumption model, relative to the car's baseline.

    ``previous_ratio`` is the ratio of the car's previous driving window when it ended
    within a few minutes (same drive); without one the window's own ratio stands in, so
    the feature says "no change".

    Returns None for windows that are not driving windows (no consumption) or before the
    car has a baseline.
    """
    value = consumption(stats)
    if value is None or baseline is None or baseline <= 0:
        return None
    return {
        "consumption_ratio": value / baseline,
        "avg_speed_kmh": float(stats["avg_speed_kmh"] or 0.0),
        "avg_outside_temp_c": float(stats["avg_outside_temp_c"] or 0.0),
        "distance_km": float(stats["distance_km"] or 0.0),
        "previous_ratio": value / baseline if previous_ratio is None else previous_ratio,
    }
