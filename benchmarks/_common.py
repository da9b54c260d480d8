"""Shared pieces of the benchmark harnesses: result rows on disk, summaries, Markdown, the bootstrap.

Rows are kept in one JSON list per benchmark and written after every measurement
(atomically), so a long run that is cut off still leaves what it measured; a row is
identified by its key fields and a re-run replaces rows with the same key.

The paired bootstrap resamples the customers of the common test set: every method's
scores are evaluated on the *same* resample, so the interval of a difference reflects
how much the comparison depends on which customers happen to be in the test set, with
the correlation between the two models' errors kept. ROC AUC is computed for all
resamples at once from ranks (Mann-Whitney), because calling scikit-learn thousands of
times per comparison would dominate the harness's run time; the test checks it against
scikit-learn.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

ROW_KEY = ("dataset", "split", "method", "seed")


# -- rows on disk ---------------------------------------------------------------------------------

def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a results file (empty when it does not exist yet)."""
    if not path.exists():
        return []
    rows = json.loads(path.read_text())
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of rows, found {type(rows).__name__}")
    return rows


def row_key(row: dict[str, Any], key: Sequence[str] = ROW_KEY) -> tuple[Any, ...]:
    """The identifying fields of a row."""
    missing = [k for k in key if k not in row]
    if missing:
        raise ValueError(f"row {row!r} lacks key field(s) {missing}")
    return tuple(row[k] for k in key)


def upsert_rows(path: Path, rows: Iterable[dict[str, Any]], key: Sequence[str] = ROW_KEY) -> list[dict[str, Any]]:
    """Add ``rows`` to the file, replacing rows with the same key; written atomically."""
    new = list(rows)
    replaced = {row_key(r, key) for r in new}
    kept = [r for r in read_rows(path) if row_key(r, key) not in replaced]
    merged = kept + [_finite(r) for r in new]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(merged, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)  # readers never see a half-written file
    return merged


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN (e.g. the metrics of a failed run) as null, so the file is strict JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


# -- summaries and Markdown -----------------------------------------------------------------------

def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count, ignoring NaN."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return math.nan, math.nan, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def fmt_mean_std(values: Iterable[float], digits: int = 4) -> str:
    """``mean ± std`` as text (``–`` when there is nothing)."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- paired bootstrap -----------------------------------------------------------------------------

@dataclass(frozen=True)
class BootstrapInterval:
    """Point estimate and percentile interval of a difference of ROC AUCs."""

    estimate: float
    low: float
    high: float
    n_resamples: int
    level: float

    def text(self, digits: int = 4) -> str:
        """``+0.0012 [−0.0030, +0.0051]``."""
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """``n_resamples`` resamples (with replacement) of ``n`` test customers, shape (B, n)."""
    if n < 2 or n_resamples < 1:
        raise ValueError(f"need at least 2 customers and 1 resample, got n={n}, n_resamples={n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def roc_auc_resampled(y: np.ndarray, scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` on each resample of ``indices`` (shape (B, n)); NaN where one class is absent.

    Mann-Whitney form with average ranks for ties, equal to scikit-learn's
    ``roc_auc_score(y[idx], scores[idx])`` for every row ``idx``.
    """
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    if y.shape != scores.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {scores.shape} must be 1-D of the same length")
    yb = y[indices].astype(bool)
    ranks = rankdata(scores[indices], method="average", axis=1)
    n_pos = yb.sum(axis=1).astype(np.float64)
    n_neg = indices.shape[1] - n_pos
    rank_sum = np.where(yb, ranks, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def seed_mean_auc_resampled(y: np.ndarray, scores_by_seed: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Mean over seeds of each resample's ROC AUC; ``scores_by_seed`` has shape (seeds, n)."""
    s = np.atleast_2d(np.asarray(scores_by_seed, dtype=np.float64))
    return np.mean([roc_auc_resampled(y, row, indices) for row in s], axis=0)


def percentile_interval(estimate: float, resampled: np.ndarray, level: float = 0.95) -> BootstrapInterval:
    """Percentile interval of a bootstrap distribution (resamples yielding NaN are dropped)."""
    finite = resampled[np.isfinite(resampled)]
    if len(finite) == 0:
        return BootstrapInterval(estimate, math.nan, math.nan, 0, level)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return BootstrapInterval(float(estimate), float(low), float(high), int(len(finite)), level)


def paired_bootstrap_auc_diff(
    y: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapInterval:
    """Paired bootstrap interval of AUC(a) − AUC(b) on one test set.

    Parameters
    ----------
    y:
        Labels of the test customers (0/1), shape (n,).
    scores_a, scores_b:
        Scores of the two methods, shape (n,) or (seeds, n). With several seeds the
        statistic is the difference of seed-averaged AUCs; each resample draws one set of
        customers and evaluates every seed's scores of both methods on it, so the interval
        covers test-set sampling of the seed-averaged difference (seed-to-seed spread is
        reported separately).
    """
    y = np.asarray(y)
    a = np.atleast_2d(np.asarray(scores_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(scores_b, dtype=np.float64))
    if a.shape[1] != len(y) or b.shape[1] != len(y):
        raise ValueError(f"scores {a.shape} / {b.shape} do not match {len(y)} labels")
    full = np.arange(len(y))[None, :]
    estimate = float(seed_mean_auc_resampled(y, a, full)[0] - seed_mean_auc_resampled(y, b, full)[0])
    idx = bootstrap_indices(len(y), n_resamples, seed)
    diff = seed_mean_auc_resampled(y, a, idx) - seed_mean_auc_resampled(y, b, idx)
    return percentile_interval(estimate, diff, level)
