"""models/: metrics against scikit-learn, deterministic training, safe files, baselines."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedcrm.errors import ModelIntegrityError
from fedcrm.models.baselines import lightgbm_scores, logistic_regression_scores
from fedcrm.models.io import load_model_arrays, save_model_arrays, sha256_file
from fedcrm.models.metrics import binary_metrics, top_decile_lift
from fedcrm.models.nets import build_model
from fedcrm.models.params import get_arrays, get_names, max_abs, set_arrays
from fedcrm.models.train import TrainConfig, evaluate, train_local


def _data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=n) > 0).astype(np.float32)
    return x, y


def test_top_decile_lift_by_hand() -> None:
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0] * 2, dtype=float)  # base rate 0.1
    scores = np.where(y == 1, 0.9, 0.1)
    assert top_decile_lift(y, scores) == pytest.approx(10.0)
    assert math.isnan(binary_metrics(np.zeros(5), np.arange(5))["roc_auc"])


def test_full_batch_training_is_deterministic_and_learns() -> None:
    x, y = _data()
    cfg = TrainConfig(epochs=30, learning_rate=0.5, batch_size=0, optimizer="sgd")
    runs = []
    for _ in range(2):
        model = build_model("mlp", 5, seed=3)
        train_local(model, x, y, cfg)
        runs.append(get_arrays(model))
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))
    model = build_model("mlp", 5, seed=3)
    set_arrays(model, runs[0])
    assert evaluate(model, x, y)["roc_auc"] > 0.85


def test_projection_keeps_parameters_inside_the_bound() -> None:
    x, y = _data()
    model = build_model("logistic", 5)
    train_local(model, x * 100, y, TrainConfig(epochs=5, learning_rate=1.0, param_bound=0.25))
    assert max_abs(get_arrays(model)) <= 0.25 + 1e-7


def test_model_files_round_trip_and_refuse_tampering_and_pickles(tmp_path: Path) -> None:
    model = build_model("mlp", 4)
    path = save_model_arrays(tmp_path / "m.safetensors", get_names(model), get_arrays(model), {"architecture": "mlp"})
    names, arrays, meta = load_model_arrays(path, sha256_file(path))
    assert names == get_names(model) and meta["architecture"] == "mlp"
    assert all(np.array_equal(a, b) for a, b in zip(arrays, get_arrays(model), strict=True))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_model_arrays(path, "0" * 64)
    pickled = tmp_path / "m.pkl"
    pickled.write_bytes(pickle.dumps({"w": arrays}))
    with pytest.raises(ModelIntegrityError, match="refusing"):
        load_model_arrays(pickled)


def test_baselines_rank_like_the_truth() -> None:
    x, y = _data(1500)
    xt, yt = _data(800, seed=1)
    for scores in (logistic_regression_scores(x, y, xt, seed=0), lightgbm_scores(x, y, xt, seed=0)):
        assert roc_auc_score(yt, scores) > 0.85
