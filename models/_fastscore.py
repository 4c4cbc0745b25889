"""Score one feature row in plain Python, without scikit-learn's per-call overhead.

The pipeline scores one car's closed window at a time. Through scikit-learn that costs
~1 ms (gradient boosting, 200 trees) to ~3.5 ms (isolation forest, 100 trees) per row,
almost all of it input validation, numpy allocation and one Cython call per tree; the
tree walks themselves are a few hundred comparisons. The walkers below hold each tree as
Python lists and follow scikit-learn's own arithmetic (float32 inputs for isolation trees,
the same summation order), so their scores equal ``LoadedModel.scores`` to rounding; the
unit tests compare them on every family :mod:`models.training` can save.

Estimators of any other shape get no walker and are scored through scikit-learn.
"""

# The walkers read fitted trees from scikit-learn's private attributes: a version that
# moves them makes row_scorer() return None (scikit-learn scores), and one that changes
# their meaning fails the unit tests, which compare every family with scikit-learn.
# ruff: noqa: SLF001

from __future__ import annotations

import logging
import math
from array import array
from collections.abc import Callable, Sequence
from typing import Any, Final

_log = logging.getLogger(__name__)

RowScorer = Callable[[Sequence[float]], float]

# A tree as parallel lists: feature, threshold, left child, right child (-1: leaf), and
# the value a row reaching each node's leaf adds.
_Tree = tuple[list[int], list[float], list[int], list[int], list[float]]


def _expit(x: float) -> float:
    """The logistic function as scipy's ``expit`` computes it, ``1 / (1 + exp(-x))``."""
    try:
        return 1.0 / (1.0 + math.exp(-x))
    except OverflowError:  # C's exp() gives inf there, and 1 / inf is 0
        return 0.0


def _walk(tree: _Tree, row: Sequence[float]) -> float:
    feature, threshold, left, right, value = tree
    node = 0
    while (child := left[node]) != -1:
        node = child if row[feature[node]] <= threshold[node] else right[node]
    return value[node]


def _isolation_forest(estimator: Any) -> RowScorer | None:
    # Imported on use: a private helper, so a scikit-learn without it only costs the walker.
    from sklearn.ensemble._iforest import _average_path_length  # noqa: PLC0415

    if estimator._max_features != estimator.n_features_in_:
        return None  # per-tree feature subsets: rare, left to scikit-learn
    trees: list[_Tree] = []
    for member in estimator.estimators_:
        t = member.tree_
        # What a row reaching each leaf adds to its depth sum, as IsolationForest.fit
        # precomputes it: the leaf's depth plus the expected depth of its remaining samples.
        leaf = t.compute_node_depths() + _average_path_length(t.n_node_samples) - 1.0
        trees.append(
            (
                t.feature.tolist(),
                t.threshold.tolist(),
                t.children_left.tolist(),
                t.children_right.tolist(),
                leaf.tolist(),
            )
        )
    denominator = len(trees) * float(_average_path_length([estimator._max_samples])[0])
    if denominator == 0:
        return None

    def score(row: Sequence[float]) -> float:
        # IsolationForest compares float32 copies of the inputs with its thresholds.
        x = array("f", row).tolist()
        depth = 0.0
        for tree in trees:
            depth += _walk(tree, x)
        return float(2.0 ** (-(depth / denominator)))

    return score


def _hist_gradient_boosting(estimator: Any) -> RowScorer | None:
    if estimator.n_trees_per_iteration_ != 1 or estimator._preprocessor is not None:
        return None  # multiclass, or categorical features
    trees: list[_Tree] = []
    for (predictor,) in estimator._predictors:
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            return None
        leaf = nodes["is_leaf"].astype(bool)
        trees.append(
            (
                nodes["feature_idx"].tolist(),
                nodes["num_threshold"].tolist(),
                [-1 if is_leaf else int(n) for is_leaf, n in zip(leaf, nodes["left"], strict=True)],
                nodes["right"].tolist(),
                nodes["value"].tolist(),
            )
        )
    baseline = float(estimator._baseline_prediction.ravel()[0])

    def score(row: Sequence[float]) -> float:
        raw = baseline
        for tree in trees:
            raw += _walk(tree, row)
        return _expit(raw)  # the binomial loss's probability of class 1

    return score


def _scaled_logistic_regression(estimator: Any) -> RowScorer | None:
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    steps = [step for _, step in estimator.steps]
    if len(steps) != 2:  # scaler, classifier
        return None
    scaler, classifier = steps
    if type(scaler) is not StandardScaler or type(classifier) is not LogisticRegression:
        return None
    if classifier.coef_.shape[0] != 1:
        return None
    n = classifier.coef_.shape[1]
    mean = scaler.mean_.tolist() if scaler.with_mean else [0.0] * n
    scale = scaler.scale_.tolist() if scaler.with_std else [1.0] * n
    coef = classifier.coef_[0].tolist()
    intercept = float(classifier.intercept_[0])

    def score(row: Sequence[float]) -> float:
        # Scaled, then the dot product, then the intercept: scikit-learn's order.
        z = 0.0
        for value, m, s, c in zip(row, mean, scale, coef, strict=True):
            z += (value - m) / s * c
        return _expit(z + intercept)

    return score


def row_scorer(estimator: Any, score: str) -> RowScorer | None:
    """A plain-Python scorer of one finite feature row, for the estimators it knows.

    Args:
        estimator: The loaded estimator.
        score: The artifact's ``metadata["score"]`` (how scores are read from it).

    Returns:
        The scorer, or None: another kind of estimator, or one whose internals are not
        where this scikit-learn keeps them. The caller then scores through scikit-learn.
    """
    name = type(estimator).__name__
    build = _BUILDERS.get((score, name))
    if build is None:
        return None
    try:
        return build(estimator)
    except Exception as exc:  # noqa: BLE001 - any surprise only costs speed, never a score
        _log.warning("scoring %s one row at a time through scikit-learn (slower): %r", name, exc)
        return None


_BUILDERS: Final[dict[tuple[str, str], Callable[[Any], RowScorer | None]]] = {
    ("neg_score_samples", "IsolationForest"): _isolation_forest,
    ("proba", "HistGradientBoostingClassifier"): _hist_gradient_boosting,
    ("proba", "Pipeline"): _scaled_logistic_regression,
}
