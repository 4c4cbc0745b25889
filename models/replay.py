"""Replay telemetry through the pipeline's own detectors and window code, offline.

Training features, backtests and the evaluation report all come from here, and here
only calls the functions the streaming pipeline calls (:func:`processing.detectors.detect`,
:func:`processing.stats.window_stats`, :func:`processing.detectors.detect_window`), so
offline numbers describe what the deployed pipeline does.

Difference from the live pipeline, by design: a car's window closes when its next
record falls in a later window (records arrive in event-time order here), and late
records do not exist.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from processing.detectors import CONSUMPTION, GLITCH, SensorGlitch, detect, detect_window
from processing.stats import Sample, WindowStats, to_sample, window_stats
from telemetry.alerts import AlertRecord

if TYPE_CHECKING:
    from models.registry import LoadedModel


@dataclass(frozen=True, slots=True)
class Replay:
    """What the per-record part of the pipeline produced for a stretch of history."""

    record_alerts: list[AlertRecord]
    windows: list[WindowStats]
    records: int


def replay_records(
    records: Iterable[dict[str, Any]],
    window_ms: int = 60_000,
    tick: Callable[[int], None] | None = None,
    *,
    rules: bool = True,
    glitch: SensorGlitch = GLITCH,
) -> Replay:
    """Run per-record rules and build every window's stats from time-ordered records.

    Args:
        records: Validated records in event-time order.
        window_ms: Tumbling window length (the pipeline's).
        tick: Called with the number of records processed so far every 10,000 records
            (progress bars).
        rules: Run the per-record rules (False: windows only, for features).
        glitch: The sensor-glitch rule, with the pipeline's odometer resolution.
    """
    cars: dict[str, dict[str, Any]] = defaultdict(dict)
    open_windows: dict[str, tuple[int, str, list[Sample]]] = {}
    alerts: list[AlertRecord] = []
    windows: list[WindowStats] = []
    count = 0

    def close(vid: str) -> None:
        start, powertrain, samples = open_windows.pop(vid)
        windows.append(window_stats(vid, powertrain, start, start + window_ms, samples))

    for record in records:
        count += 1
        vid = record["vehicle_id"]
        if rules:
            alerts += detect(cars[vid], record, glitch)
        start = record["ts"] - record["ts"] % window_ms
        current = open_windows.get(vid)
        if current is not None and current[0] != start:
            close(vid)
        if vid not in open_windows:
            open_windows[vid] = (start, record["powertrain"], [])
        open_windows[vid][2].append(to_sample(record))
        if tick is not None and count % 10_000 == 0:
            tick(count)
    for vid in list(open_windows):
        close(vid)
    windows.sort(key=lambda w: (w["window_end"], w["vehicle_id"]))
    return Replay(alerts, windows, count)


def window_alerts(windows: Iterable[WindowStats], model: LoadedModel | None) -> list[AlertRecord]:
    """The window detector's alerts with ``model`` (None: the fixed-threshold rule)."""
    memory: dict[str, dict[str, Any]] = defaultdict(dict)
    out: list[AlertRecord] = []
    for stats in windows:
        out += detect_window(memory[stats["vehicle_id"]], dict(stats), model)
    return out


def window_feature_rows(
    windows: Iterable[WindowStats], model: LoadedModel | None = None
) -> list[dict[str, Any]]:
    """Per-window model features exactly as the pipeline computes them (stats + car baseline).

    Each car's window-detector memory evolves through :func:`detect_window`, the function
    the pipeline calls, with its alert book: while an episode is raised its windows are
    folded into no baseline, as live. ``model`` is the one the pipeline would run (None:
    the fixed-threshold rule, as before a first model is promoted), so the features of
    the rows do not depend on the model being trained. Before 2026-12-05 the baseline
    was updated as if no alert were ever active, so a raised episode's windows were
    folded into the training rows' baseline while the pipeline scored them against the
    baseline before the episode.
    """
    memory: dict[str, dict[str, Any]] = defaultdict(dict)
    rows: list[dict[str, Any]] = []
    for stats in windows:
        car = memory[stats["vehicle_id"]]
        features = CONSUMPTION.features(car.setdefault(CONSUMPTION.kind, {}), dict(stats))
        if features is not None:
            rows.append(
                {
                    "vehicle_id": stats["vehicle_id"],
                    "powertrain": stats["powertrain"],
                    "window_start": stats["window_start"],
                    "window_end": stats["window_end"],
                    **features,
                }
            )
        detect_window(car, dict(stats), model)
    return rows
