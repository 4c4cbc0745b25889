"""One-row scoring without scikit-learn: the same scores as scikit-learn, for every family."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models import _fastscore
from models.registry import LoadedModel, load, save
from models.training import FAMILIES, Family

pytestmark = pytest.mark.unit

TOLERANCE = 1e-12
_SCORER_OF = {"neg_score_samples": "score_samples", "proba": "predict_proba"}


def _data(n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows-like rows: mostly ~1 with a few outliers and a label that depends on them."""
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 0.2, (1500, n_features))
    x[:60] *= rng.uniform(1.5, 3.0, (60, n_features))
    y = x[:, 0] > 1.4
    return x, y


def _model(estimator: Any, score: str, n_features: int) -> LoadedModel:
    features = [f"f{i}" for i in range(n_features)]
    return LoadedModel("t", estimator, {"features": features, "threshold": 0.5, "score": score})


def _fitted(family: Family) -> tuple[LoadedModel, np.ndarray]:
    x, y = _data(len(family.features))
    estimator = family.build(0)
    estimator.fit(x, y) if family.supervised else estimator.fit(x)
    meta = {"features": list(family.features), "threshold": 0.5, "score": family.score}
    return LoadedModel("t", estimator, meta), x


def _probe_rows(x: np.ndarray) -> np.ndarray:
    """Training rows, fresh ones far outside them, zeros and negatives."""
    rng = np.random.default_rng(11)
    wide = rng.uniform(-50.0, 50.0, (200, x.shape[1]))
    return np.vstack([x[:300], wide, np.zeros((1, x.shape[1])), -x[:20], np.round(x[:50], 1)])


def _assert_same(model: LoadedModel, rows: np.ndarray) -> None:
    assert model._one is not None, "no plain-Python walker"
    got = [model.score_one(row) for row in rows.tolist()]
    np.testing.assert_allclose(got, model.scores(rows), rtol=0, atol=TOLERANCE)


def _without_scikit_learn_scoring(model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make scikit-learn's scoring method fail, so only the walker can answer."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        msg = "scikit-learn was called"
        raise AssertionError(msg)

    monkeypatch.setattr(model.estimator, _SCORER_OF[model.metadata["score"]], refuse)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_one_row_scores_equal_scikit_learn(family: Family, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _fitted(family)
    rows = _probe_rows(x)
    expected = model.scores(rows)
    _without_scikit_learn_scoring(model, monkeypatch)
    got = [model.score_one(row) for row in rows.tolist()]
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_walker_survives_the_skops_round_trip(family: Family, tmp_path: Path) -> None:
    model, x = _fitted(family)
    loaded = load(save(model.estimator, model.metadata, tmp_path, version="v1"))
    _assert_same(loaded, _probe_rows(x)[:100])


def _split_probes(base: np.ndarray, splits: list[tuple[int, float]]) -> np.ndarray:
    """``base`` with one feature set to a split threshold and one float64 step either side."""
    rows = []
    for feature, threshold in splits:
        for value in (np.nextafter(threshold, -np.inf), threshold, np.nextafter(threshold, np.inf)):
            row = base.copy()
            row[feature] = value
            rows.append(row)
    return np.array(rows)


def test_isolation_trees_compare_float32_inputs_like_scikit_learn() -> None:
    model, x = _fitted(next(f for f in FAMILIES if f.name == "isolation_forest"))
    # The float32 copy scikit-learn compares can fall on the other side of a threshold.
    splits = []
    for member in model.estimator.estimators_[:10]:
        tree = member.tree_
        for node in np.flatnonzero(tree.children_left != -1)[:10]:
            splits.append((int(tree.feature[node]), float(tree.threshold[node])))
    _assert_same(model, _split_probes(x[0], splits))


def _hgb_splits(estimator: HistGradientBoostingClassifier) -> list[tuple[int, float]]:
    splits = []
    for (predictor,) in estimator._predictors[:20]:
        nodes = predictor.nodes
        for node in np.flatnonzero(nodes["is_leaf"] == 0):
            threshold = float(nodes["num_threshold"][node])
            if np.isfinite(threshold):
                splits.append((int(nodes["feature_idx"][node]), threshold))
    return splits


def test_gradient_boosting_splits_at_exact_thresholds_like_scikit_learn() -> None:
    model, x = _fitted(next(f for f in FAMILIES if f.name == "hist_gradient_boosting"))
    _assert_same(model, _split_probes(x[0], _hgb_splits(model.estimator)))


def test_gradient_boosting_trained_with_missing_values_scores_finite_rows_the_same() -> None:
    x, y = _data(4)
    holes = x.copy()
    holes[::7, 1] = np.nan  # nodes learn where missing values go; finite ones must not care
    estimator = HistGradientBoostingClassifier(max_iter=50, random_state=0).fit(holes, y)
    model = _model(estimator, "proba", 4)
    _assert_same(model, np.vstack([_probe_rows(x), _split_probes(x[0], _hgb_splits(estimator))]))


@pytest.mark.parametrize(
    "pipeline",
    [
        make_pipeline(StandardScaler(), LogisticRegression(fit_intercept=False)),
        make_pipeline(StandardScaler(with_mean=False), LogisticRegression()),
        make_pipeline(StandardScaler(with_std=False), LogisticRegression(C=100.0)),
    ],
    ids=["no-intercept", "no-centring", "no-scaling"],
)
def test_logistic_regression_variants_score_the_same(pipeline: Any) -> None:
    x, y = _data(4)
    model = _model(pipeline.fit(x, y), "proba", 4)
    # Far-out rows push the decision past exp()'s range, where the walker must give 0 or 1.
    _assert_same(model, np.vstack([_probe_rows(x), x[:5] * 1e6, -x[:5] * 1e6]))


def test_rows_a_walker_cannot_take_are_scored_by_scikit_learn() -> None:
    model, x = _fitted(next(f for f in FAMILIES if f.name == "hist_gradient_boosting"))
    row = x[0].tolist()
    for bad in (float("nan"), float("inf"), None):  # scikit-learn reads None as NaN
        row[1] = bad
        assert model.score_one(row) == float(model.scores([row])[0])


def test_isolation_forest_scores_rows_with_nan_through_scikit_learn() -> None:
    model, x = _fitted(next(f for f in FAMILIES if f.name == "isolation_forest"))
    row = [float("nan"), *x[0].tolist()[1:]]
    assert model.score_one(row) == float(model.scores([row])[0])


def test_estimators_without_a_walker_still_score() -> None:
    x, y = _data(4)
    # Per-tree feature subsets and categorical features are not walked.
    forest = IsolationForest(n_estimators=20, max_features=2, random_state=0).fit(x)
    codes = x.copy()
    codes[:, 0] = np.arange(len(x)) % 3
    categorical = HistGradientBoostingClassifier(
        max_iter=20, categorical_features=[0], random_state=0
    ).fit(codes, y)
    for estimator, score, rows in (
        (forest, "neg_score_samples", x[:5]),
        (categorical, "proba", codes[:5]),
    ):
        model = _model(estimator, score, 4)
        assert model._one is None
        assert [model.score_one(r) for r in rows.tolist()] == model.scores(rows).tolist()


def test_a_walker_that_cannot_be_built_falls_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def moved(_estimator: Any) -> Any:
        msg = "cannot import name '_average_path_length'"
        raise ImportError(msg)

    monkeypatch.setitem(_fastscore._BUILDERS, ("neg_score_samples", "IsolationForest"), moved)
    x, _ = _data(2)
    forest = IsolationForest(n_estimators=20, random_state=0).fit(x)
    with caplog.at_level(logging.WARNING, logger="models._fastscore"):
        model = _model(forest, "neg_score_samples", 2)
    assert model._one is None
    assert "through scikit-learn" in caplog.text
    assert model.score_one(x[0].tolist()) == float(model.scores(x[:1])[0])
