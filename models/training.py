"""Train, calibrate and compare consumption-anomaly models on per-window features.

Data is split by time (never shuffled): the earliest ``train`` share of the time range
fits the models, the next ``validation`` share picks each model's threshold (best F1)
and the better model family, and the rest is held out for the report. Labels say which
windows are anomalous: a driving window overlapping a ``high_consumption`` label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models.errors import DataError
from processing.detectors import HighConsumption
from processing.stats import FEATURES, WINDOW_FEATURES

KIND: Final = "high_consumption"
UNLABELLED_QUANTILE: Final = 0.99


@dataclass(frozen=True, slots=True)
class Split:
    """Row masks of the three time ranges and their boundaries (ms, window_end)."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    validation_from: int
    test_from: int


def split_by_time(window_end: pd.Series, train: float = 0.6, validation: float = 0.2) -> Split:
    """Cut the time range (not the rows) into train, validation and test."""
    first, last = int(window_end.min()), int(window_end.max())
    validation_from = first + round((last - first) * train)
    test_from = first + round((last - first) * (train + validation))
    ends = window_end.to_numpy()
    return Split(
        train=ends < validation_from,
        validation=(ends >= validation_from) & (ends < test_from),
        test=ends >= test_from,
        validation_from=validation_from,
        test_from=test_from,
    )


def label_windows(frame: pd.DataFrame, labels: pd.DataFrame) -> np.ndarray:
    """True for windows overlapping a ``high_consumption`` label of the same car.

    Windows and labels are half-open, ``[start, end)``: a window that starts where a
    label ends does not overlap it.
    """
    episodes = labels[labels["kind"] == KIND][["vehicle_id", "start_ts", "end_ts"]]
    if episodes.empty or frame.empty:
        return np.zeros(len(frame), dtype=bool)
    indexed = frame[["vehicle_id", "window_start", "window_end"]].reset_index(names="row")
    pairs = indexed.merge(episodes, on="vehicle_id")
    hit = pairs[
        (pairs["start_ts"] < pairs["window_end"]) & (pairs["end_ts"] > pairs["window_start"])
    ]
    out = np.zeros(len(frame), dtype=bool)
    out[hit["row"].unique()] = True
    return out


@dataclass(frozen=True, slots=True)
class Scores:
    """Window-level precision, recall and F1."""

    precision: float
    recall: float
    f1: float
    positives: int
    windows: int

    @classmethod
    def of(cls, predicted: np.ndarray, actual: np.ndarray) -> Scores:
        """Score boolean predictions against boolean truth."""
        tp = int((predicted & actual).sum())
        p = tp / int(predicted.sum()) if predicted.any() else 1.0
        r = tp / int(actual.sum()) if actual.any() else 1.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        return cls(p, r, f1, int(actual.sum()), len(actual))

    def as_dict(self) -> dict[str, float | int]:
        """JSON-friendly form for metadata."""
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "positives": self.positives,
            "windows": self.windows,
        }


def best_threshold(scores: np.ndarray, actual: np.ndarray) -> float:
    """The score threshold (``score >= t`` is anomalous) with the best F1 on these rows."""
    if not actual.any():
        msg = "the validation range has no labelled anomalous windows; cannot calibrate"
        raise DataError(msg)
    precision, recall, thresholds = precision_recall_curve(actual, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


@dataclass(frozen=True, slots=True)
class Family:
    """A model family: how to build, fit and score it."""

    name: str
    features: tuple[str, ...]
    score: str  # metadata "score": how LoadedModel.scores() reads the estimator
    supervised: bool
    build: Callable[[int], Any]


FAMILIES: Final = (
    Family(
        "isolation_forest",
        FEATURES,
        "neg_score_samples",
        supervised=False,
        build=lambda seed: IsolationForest(n_estimators=100, random_state=seed),
    ),
    Family(
        "hist_gradient_boosting",
        WINDOW_FEATURES,
        "proba",
        supervised=True,
        build=lambda seed: HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.1, class_weight="balanced", random_state=seed
        ),
    ),
    Family(
        "logistic_regression",
        WINDOW_FEATURES,
        "proba",
        supervised=True,
        build=lambda _seed: make_pipeline(
            StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000)
        ),
    ),
)


def anomaly_scores(family: Family, estimator: Any, x: np.ndarray) -> np.ndarray:
    """Higher = more anomalous (the registry's convention)."""
    if family.score == "proba":
        return np.asarray(estimator.predict_proba(x)[:, 1])
    return np.asarray(-estimator.score_samples(x))


@dataclass
class Candidate:
    """One trained family with its calibrated threshold and scores per split."""

    family: Family
    estimator: Any
    threshold: float
    validation: Scores | None
    test: Scores | None
    scores: np.ndarray = field(repr=False)


@dataclass
class TrainResult:
    """Everything ``fleetstream train`` saves and reports."""

    frame: pd.DataFrame
    actual: np.ndarray | None
    split: Split
    candidates: list[Candidate]
    chosen: Candidate
    baseline_test: Scores | None


def baseline_predictions(frame: pd.DataFrame) -> np.ndarray:
    """The fixed-threshold rule the pipeline uses without a model (one window)."""
    return np.asarray(frame["consumption_ratio"].to_numpy() > HighConsumption.RAISE_RATIO)


def train(
    frame: pd.DataFrame,
    actual: np.ndarray | None,
    seed: int = 0,
    families: Sequence[Family] = FAMILIES,
    step: Callable[[str], None] = lambda _name: None,
) -> TrainResult:
    """Fit every applicable family on the train range and keep the best by validation F1.

    Args:
        frame: Per-window features (:func:`models.replay.window_feature_rows`).
        actual: Per-window truth, or None without labels (then only unsupervised
            families, threshold at the 99th percentile of training scores, no F1).
        seed: Random seed of the estimators.
        families: Families to compare.
        step: Called with each family's name before it is fitted (progress display).

    Raises:
        DataError: Too little data in a time range, or no anomalies to calibrate on.
    """
    split = split_by_time(frame["window_end"])
    for name, mask in (
        ("train", split.train),
        ("validation", split.validation),
        ("test", split.test),
    ):
        if mask.sum() < 50:
            msg = f"only {int(mask.sum())} driving windows in the {name} time range; need more data"
            raise DataError(msg)
    candidates: list[Candidate] = []
    for family in families:
        if family.supervised and actual is None:
            continue
        step(family.name)
        x = frame[list(family.features)].to_numpy(dtype=float)
        estimator = family.build(seed)
        if family.supervised:
            assert actual is not None  # noqa: S101 - guarded above
            if not actual[split.train].any():
                msg = "the training range has no labelled anomalous windows"
                raise DataError(msg)
            estimator.fit(x[split.train], actual[split.train])
        else:
            estimator.fit(x[split.train])
        scores = anomaly_scores(family, estimator, x)
        if actual is None:
            threshold = float(np.quantile(scores[split.train], UNLABELLED_QUANTILE))
            candidates.append(Candidate(family, estimator, threshold, None, None, scores))
            continue
        threshold = best_threshold(scores[split.validation], actual[split.validation])
        predicted = scores >= threshold
        candidates.append(
            Candidate(
                family,
                estimator,
                threshold,
                Scores.of(predicted[split.validation], actual[split.validation]),
                Scores.of(predicted[split.test], actual[split.test]),
                scores,
            )
        )
    chosen = max(candidates, key=lambda c: c.validation.f1 if c.validation else 0.0)
    baseline = (
        Scores.of(baseline_predictions(frame)[split.test], actual[split.test])
        if actual is not None
        else None
    )
    return TrainResult(frame, actual, split, candidates, chosen, baseline)
