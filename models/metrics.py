"""Ranking metrics used for customer models: ROC AUC, PR AUC, top-decile lift."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def both_classes(y: np.ndarray) -> bool:
    """Whether ``y`` holds positives and negatives (needed for AUCs)."""
    return 0 < float(np.sum(y)) < len(y)


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (NaN when only one class is present)."""
    return float(roc_auc_score(y, scores)) if both_classes(y) else math.nan


def pr_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Average precision, the usual estimate of the area under the precision-recall curve."""
    return float(average_precision_score(y, scores)) if both_classes(y) else math.nan


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
