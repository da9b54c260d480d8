"""The benchmark harness's paired bootstrap and result-row file (benchmarks/_common.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks._common import (bootstrap_indices, mean_std, paired_bootstrap_auc_diff, read_rows,
                                roc_auc_resampled, upsert_rows)


def _data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int8)
    signal = rng.normal(size=n) + 1.2 * y
    return y, signal


def test_resampled_auc_equals_sklearn_on_each_resample_including_ties() -> None:
    y, signal = _data()
    tied = np.round(signal, 1)  # many ties, as tree ensembles produce
    idx = bootstrap_indices(len(y), 25, seed=3)
    for scores in (signal, tied):
        fast = roc_auc_resampled(y, scores, idx)
        slow = [roc_auc_score(y[i], scores[i]) for i in idx]
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_resample_without_both_classes_gives_nan() -> None:
    y = np.array([0, 0, 1, 1])
    idx = np.array([[0, 1, 0, 1], [0, 1, 2, 3]])
    auc = roc_auc_resampled(y, np.array([0.1, 0.2, 0.8, 0.9]), idx)
    assert np.isnan(auc[0]) and auc[1] == 1.0


def test_identical_models_give_a_zero_width_interval_at_zero() -> None:
    y, s = _data()
    result = paired_bootstrap_auc_diff(y, s, s.copy(), n_resamples=500, seed=1)
    assert result.estimate == 0.0 and result.low == 0.0 and result.high == 0.0
    assert result.n_resamples == 500


def test_pairing_makes_the_interval_narrower_than_independent_resamples() -> None:
    # Two strongly correlated models: the paired interval of their difference must be much
    # narrower than one computed by resampling each model's customers independently.
    y, s = _data(n=600, seed=5)
    rng = np.random.default_rng(9)
    a, b = s + 0.05 * rng.normal(size=len(s)), s + 0.05 * rng.normal(size=len(s))
    paired = paired_bootstrap_auc_diff(y, a, b, n_resamples=1000, seed=2)
    ia, ib = bootstrap_indices(len(y), 1000, 11), bootstrap_indices(len(y), 1000, 12)
    independent = roc_auc_resampled(y, a, ia) - roc_auc_resampled(y, b, ib)
    lo, hi = np.quantile(independent, [0.025, 0.975])
    assert (paired.high - paired.low) < 0.5 * (hi - lo)
    assert paired.low <= paired.estimate <= paired.high


def test_better_model_has_an_interval_above_zero_and_estimate_matches_sklearn() -> None:
    y, s = _data(n=800, seed=7)
    rng = np.random.default_rng(1)
    noisy = s + 1.5 * rng.normal(size=len(s))
    result = paired_bootstrap_auc_diff(y, s, noisy, n_resamples=1000, seed=0)
    assert result.estimate == pytest.approx(roc_auc_score(y, s) - roc_auc_score(y, noisy), abs=1e-12)
    assert 0.0 < result.low < result.estimate < result.high


def test_seeds_are_pooled_as_the_difference_of_seed_averaged_aucs() -> None:
    y, s = _data(n=300, seed=2)
    rng = np.random.default_rng(4)
    a = np.stack([s + rng.normal(scale=0.5, size=len(s)) for _ in range(3)])
    b = np.stack([s + rng.normal(scale=1.0, size=len(s)) for _ in range(3)])
    result = paired_bootstrap_auc_diff(y, a, b, n_resamples=200, seed=0)
    expected = np.mean([roc_auc_score(y, r) for r in a]) - np.mean([roc_auc_score(y, r) for r in b])
    assert result.estimate == pytest.approx(expected, abs=1e-12)


def test_same_seed_gives_the_same_interval_and_shapes_are_checked() -> None:
    y, s = _data()
    first = paired_bootstrap_auc_diff(y, s, s[::-1].copy(), n_resamples=300, seed=8)
    again = paired_bootstrap_auc_diff(y, s, s[::-1].copy(), n_resamples=300, seed=8)
    assert first == again
    with pytest.raises(ValueError, match="do not match"):
        paired_bootstrap_auc_diff(y, s[:-1], s, n_resamples=10)


def test_upsert_replaces_rows_with_the_same_key_and_keeps_others(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "rows.json"
    base = {"dataset": "telco", "split": "iid", "seed": 0}
    upsert_rows(path, [{**base, "method": "pooled_lr", "roc_auc": 0.8}, {**base, "method": "pooled_mlp", "roc_auc": 0.7}])
    upsert_rows(path, [{**base, "method": "pooled_mlp", "roc_auc": float("nan")}])
    rows = read_rows(path)
    assert sorted((r["method"], r["roc_auc"]) for r in rows) == [("pooled_lr", 0.8), ("pooled_mlp", None)]
    json.loads(path.read_text())  # strict JSON: NaN was written as null
    with pytest.raises(ValueError, match="lacks key"):
        upsert_rows(path, [{"dataset": "telco", "method": "x"}])


def test_mean_std_ignores_missing_values() -> None:
    assert mean_std([0.8, None, float("nan"), 0.6]) == pytest.approx((0.7, 0.1414213562, 2))
