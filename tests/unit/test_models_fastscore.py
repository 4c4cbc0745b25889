"""One-row scoring without scikit-learn: the same scores as scikit-learn, for every family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from models.registry import LoadedModel, load, save
from models.training import FAMILIES, Family

pytestmark = pytest.mark.unit

TOLERANCE = 1e-12


def _data(n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows-like rows: mostly ~1 with a few outliers and a label that depends on them."""
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 0.2, (1500, n_features))
    x[:60] *= rng.uniform(1.5, 3.0, (60, n_features))
    y = x[:, 0] > 1.4
    return x, y


def _fitted(family: Family) -> tuple[LoadedModel, np.ndarray]:
    x, y = _data(len(family.features))
    estimator = family.build(0)
    estimator.fit(x, y) if family.supervised else estimator.fit(x)
    meta = {"features": list(family.features), "threshold": 0.5, "score": family.score}
    return LoadedModel("t", estimator, meta), x


def _probe_rows(x: np.ndarray) -> np.ndarray:
    """Training rows, fresh ones far outside them, zeros, negatives and exact thresholds."""
    rng = np.random.default_rng(11)
    wide = rng.uniform(-50.0, 50.0, (200, x.shape[1]))
    return np.vstack([x[:300], wide, np.zeros((1, x.shape[1])), -x[:20], np.round(x[:50], 1)])


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_one_row_scores_equal_scikit_learn(family: Family) -> None:
    model, x = _fitted(family)
    assert model._one is not None, f"{family.name} has no plain-Python walker"
    rows = _probe_rows(x)
    expected = model.scores(rows)
    got = np.array([model.score_one(row) for row in rows.tolist()])
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    # The walker is what answered, not the fallback.
    assert model._one(rows[0].tolist()) == model.score_one(rows[0].tolist())


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_walker_survives_the_skops_round_trip(family: Family, tmp_path: Path) -> None:
    model, x = _fitted(family)
    loaded = load(save(model.estimator, model.metadata, tmp_path, version="v1"))
    assert loaded._one is not None
    rows = _probe_rows(x)[:100]
    np.testing.assert_allclose(
        [loaded.score_one(r) for r in rows.tolist()], model.scores(rows), rtol=0, atol=TOLERANCE
    )


def test_non_finite_rows_are_scored_by_scikit_learn() -> None:
    model, x = _fitted(next(f for f in FAMILIES if f.name == "hist_gradient_boosting"))
    row = x[0].tolist()
    row[1] = float("nan")
    assert model.score_one(row) == pytest.approx(float(model.scores([row])[0]), abs=0)
    row[1] = float("inf")
    assert model.score_one(row) == pytest.approx(float(model.scores([row])[0]), abs=0)
    row[1] = None  # scikit-learn reads None as NaN
    assert model.score_one(row) == pytest.approx(float(model.scores([row])[0]), abs=0)


def test_estimators_without_a_walker_still_score() -> None:
    x, _ = _data(4)
    # Per-tree feature subsets are not walked; scikit-learn scores them.
    forest = IsolationForest(n_estimators=20, max_features=2, random_state=0).fit(x)
    model = LoadedModel(
        "t", forest, {"features": [], "threshold": 0.5, "score": "neg_score_samples"}
    )
    assert model._one is None
    assert model.score_one(x[0].tolist()) == float(model.scores(x[:1])[0])


def test_isolation_trees_compare_float32_inputs_like_scikit_learn() -> None:
    model, x = _fitted(next(f for f in FAMILIES if f.name == "isolation_forest"))
    # Values one float64 step from a split threshold: the float32 copy scikit-learn
    # compares can fall on the other side of it.
    rows = []
    for member in model.estimator.estimators_[:10]:
        tree = member.tree_
        for node in np.flatnonzero(tree.children_left != -1)[:10]:
            threshold = float(tree.threshold[node])
            for value in (np.nextafter(threshold, np.inf), np.nextafter(threshold, -np.inf)):
                row = x[0].copy()
                row[tree.feature[node]] = value
                rows.append(row)
    probe = np.array(rows)
    np.testing.assert_allclose(
        [model.score_one(r) for r in probe.tolist()], model.scores(probe), rtol=0, atol=TOLERANCE
    )
