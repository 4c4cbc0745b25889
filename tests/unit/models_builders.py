"""A small fitted model and its registry metadata, for registry and watcher unit tests."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest

META: dict[str, Any] = {
    "features": ["consumption_ratio", "avg_speed_kmh"],
    "threshold": 0.6,
    "score": "neg_score_samples",
}


def forest(n_estimators: int = 10) -> IsolationForest:
    """An isolation forest fitted on two features (META's), seeded."""
    rng = np.random.default_rng(0)
    return IsolationForest(n_estimators=n_estimators, random_state=0).fit(rng.random((50, 2)))
