"""AUC, KS and the reference LightGBM models (data/README.md's floor and ceiling)."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

REFERENCE_TREES = 300


def reference_params(seed: int) -> dict[str, object]:
    """data/README.md's reference LightGBM: 300 trees, 15 leaves, lr 0.05, 50 per leaf."""
    return {
        "objective": "binary",
        "num_leaves": 15,
        "learning_rate": 0.05,
        "min_child_samples": 50,
        "verbose": -1,
        "seed": seed,
    }


def _check(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, scores = np.asarray(y), np.asarray(scores, dtype=np.float64)
    if y.shape != scores.shape or y.ndim != 1:
        raise ValueError("labels and scores must be 1-d arrays of the same length")
    if not set(np.unique(y).tolist()) == {0, 1}:
        raise ValueError("labels must contain both 0 and 1 (and nothing else)")
    return y, scores


def auc(y: np.ndarray, scores: np.ndarray) -> float:
    y, scores = _check(y, scores)
    return float(roc_auc_score(y, scores))


def ks(y: np.ndarray, scores: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score ECDFs of the two classes,
    which is max over thresholds of |TPR - FPR|."""
    y, scores = _check(y, scores)
    positives, negatives = np.sort(scores[y == 1]), np.sort(scores[y == 0])
    thresholds = np.unique(scores)
    cdf_pos = np.searchsorted(positives, thresholds, side="right") / len(positives)
    cdf_neg = np.searchsorted(negatives, thresholds, side="right") / len(negatives)
    return float(np.max(np.abs(cdf_pos - cdf_neg)))


def roc(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates, for plotting."""
    y, scores = _check(y, scores)
    fpr, tpr, _ = roc_curve(y, scores)
    return np.asarray(fpr), np.asarray(tpr)


def reference_scores(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int
) -> np.ndarray:
    """Predicted probabilities of the reference LightGBM fitted on the training rows."""
    model = lgb.train(reference_params(seed), lgb.Dataset(x_train, y_train), REFERENCE_TREES)
    return np.asarray(model.predict(x_test), dtype=np.float64)
