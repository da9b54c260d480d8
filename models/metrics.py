"""Ranking metrics used for customer models: ROC AUC, PR AUC, top-decile lift.

Written in numpy rather than taken from scikit-learn on purpose: these run on the
partner's side in every evaluation message, and importing ``sklearn.metrics`` costs
about 2 s of CPU per process (it pulls in scipy and most of scikit-learn) for three
one-line formulas. The definitions are scikit-learn's exactly — ``roc_auc_score``
(Mann-Whitney U with average ranks for tied scores) and ``average_precision_score``
(step-wise sum over distinct score thresholds) — and tests/models check them against
scikit-learn to 1e-9 on data with and without ties.
"""

from __future__ import annotations

import math

import numpy as np


def both_classes(y: np.ndarray) -> bool:
    """Whether ``y`` holds positives and negatives (needed for AUCs)."""
    return 0 < float(np.sum(y)) < len(y)


def _labels_and_scores(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(y).astype(bool).ravel()
    values = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != values.shape:
        raise ValueError(f"{labels.shape[0]} labels but {values.shape[0]} scores")
    if not np.all(np.isfinite(values)):
        raise ValueError("scores contain NaN or infinity")
    return labels, values


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    return ((ends - counts + 1.0 + ends) / 2.0)[inverse.ravel()]


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (NaN when only one class is present)."""
    labels, values = _labels_and_scores(y, scores)
    if not both_classes(labels):
        return math.nan
    n_pos = float(labels.sum())
    n_neg = float(len(labels)) - n_pos
    rank_sum = float(average_ranks(values)[labels].sum())
    return (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)


def pr_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Average precision, the usual estimate of the area under the precision-recall curve.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds in decreasing
    order (tied scores form one threshold), as scikit-learn's ``average_precision_score``.
    """
    labels, values = _labels_and_scores(y, scores)
    if not both_classes(labels):
        return math.nan
    order = np.argsort(-values, kind="mergesort")
    sorted_values, sorted_labels = values[order], labels[order]
    # Last index of each run of equal scores: one threshold per distinct value.
    last = np.r_[np.flatnonzero(np.diff(sorted_values)), len(sorted_values) - 1]
    true_pos = np.cumsum(sorted_labels, dtype=np.float64)[last]
    precision = true_pos / (last + 1.0)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def top_decile_lift(y: np.ndarray, scores: np.ndarray) -> float:
    """Positive rate among the 10% highest scores divided by the overall positive rate."""
    y = np.asarray(y, dtype=float)
    base = y.mean() if len(y) else 0.0
    if base == 0:
        return math.nan
    k = max(1, int(math.ceil(0.1 * len(y))))
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return float(y[order].mean() / base)


def binary_metrics(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC and top-decile lift together."""
    return {"roc_auc": roc_auc(y, scores), "pr_auc": pr_auc(y, scores), "top_decile_lift": top_decile_lift(y, scores)}
