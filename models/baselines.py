"""Reference models on an encoded feature matrix: scikit-learn logistic regression and LightGBM.

Pure functions over numpy arrays (fit on a training matrix, return scores for a test
matrix), used by the benchmark harness to put the torch models next to the standard
tabular baselines. Both take the matrix the task schema's encoding produces, so every
method in a comparison sees the same features. Hyper-parameters are fixed, common
defaults chosen before looking at any test set (no tuning against the data the
comparison reports on).
"""

from __future__ import annotations

import numpy as np

__all__ = ["LIGHTGBM_PARAMS", "lightgbm_scores", "logistic_regression_scores"]

# Small trees and a slow learning rate: Telco-sized data (thousands of rows) overfits
# quickly with LightGBM's defaults (31 leaves, 100 trees at 0.1, no bagging).
LIGHTGBM_PARAMS: dict[str, float | int | str | bool] = {
    "n_estimators": 300,
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_child_samples": 30,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
}


def _check(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> None:
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"feature matrices disagree: train {x_train.shape}, test {x_test.shape}")
    if len(x_train) != len(y_train):
        raise ValueError(f"{len(x_train)} training rows but {len(y_train)} labels")
    if not 0 < float(np.sum(y_train)) < len(y_train):
        raise ValueError("training labels hold a single class; a classifier needs both")


def logistic_regression_scores(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *, seed: int = 0, c: float = 1.0
) -> np.ndarray:
    """Positive-class probabilities from an L2-regularised logistic regression (lbfgs).

    Parameters
    ----------
    c:
        Inverse regularisation strength (scikit-learn's ``C``).
    """
    from sklearn.linear_model import LogisticRegression

    _check(x_train, y_train, x_test)
    model = LogisticRegression(C=c, max_iter=5000, random_state=seed)
    model.fit(x_train, y_train)
    return model.predict_proba(x_test)[:, 1].astype(np.float64)


def lightgbm_scores(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    seed: int = 0,
    params: dict[str, float | int | str | bool] | None = None,
    n_jobs: int = 1,
) -> np.ndarray:
    """Positive-class probabilities from a LightGBM gradient-boosted tree ensemble.

    Parameters
    ----------
    params:
        Overrides of :data:`LIGHTGBM_PARAMS` (LightGBM scikit-learn API names).
    n_jobs:
        Threads; with ``deterministic`` set, results repeat for a given seed and thread count.
    """
    from lightgbm import LGBMClassifier

    _check(x_train, y_train, x_test)
    model = LGBMClassifier(
        **{**LIGHTGBM_PARAMS, **(params or {})},
        random_state=seed,
        n_jobs=n_jobs,
        deterministic=True,
        force_row_wise=True,
        verbose=-1,
    )
    model.fit(x_train, y_train)
    return model.predict_proba(x_test)[:, 1].astype(np.float64)
