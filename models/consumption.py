"""Train the high-consumption model from telemetry, with the pipeline's own feature code."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Final

import numpy as np
from sklearn.ensemble import IsolationForest

from processing.detectors import HighConsumption
from processing.stats import FEATURES, to_sample, window_stats

MODEL_FEATURES: Final = list(FEATURES)


def window_feature_rows(
    records: Iterable[dict[str, Any]], window_ms: int = 60_000
) -> list[dict[str, Any]]:
    """Per-window features exactly as the pipeline computes them (stats + car baseline).

    Records must be in event-time order per car (as the simulator and archive give them).
    """
    detector = HighConsumption()
    memory: dict[str, dict[str, Any]] = defaultdict(dict)
    open_windows: dict[str, tuple[int, str, list[Any]]] = {}
    rows: list[dict[str, Any]] = []

    def close(vid: str) -> None:
        start, powertrain, samples = open_windows.pop(vid)
        stats = window_stats(vid, powertrain, start, start + window_ms, samples)
        features = detector.features(memory[vid], dict(stats))
        if features is not None:
            rows.append({"vehicle_id": vid, "window_end": start + window_ms, **features})
        detector.check(memory[vid], dict(stats), active=False)

    for record in records:
        vid = record["vehicle_id"]
        start = record["ts"] - record["ts"] % window_ms
        current = open_windows.get(vid)
        if current is not None and current[0] != start:
            close(vid)
        if vid not in open_windows:
            open_windows[vid] = (start, record["powertrain"], [])
        open_windows[vid][2].append(to_sample(record))
    for vid in list(open_windows):
        close(vid)
    return rows


def train_isolation_forest(
    rows: list[dict[str, Any]], seed: int = 0, quantile: float = 0.01
) -> tuple[Any, float]:
    """Fit an IsolationForest on window features; threshold = ``quantile`` of training scores."""
    x = np.array([[row[name] for name in MODEL_FEATURES] for row in rows], dtype=float)
    model = IsolationForest(n_estimators=100, random_state=seed, contamination="auto").fit(x)
    threshold = float(np.quantile(model.score_samples(x), quantile))
    return model, threshold
