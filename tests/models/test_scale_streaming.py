"""Rows spilled to disk and read a block at a time train and evaluate exactly like rows in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcrm.models.batches import ArrayRows, SpillRows, epoch_order
from fedcrm.models.nets import build_model
from fedcrm.models.params import get_arrays
from fedcrm.models.train import TrainConfig, evaluate, evaluate_rows, train_local, train_rows


def _data(n: int = 1_000, width: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, width)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(np.float32)
    return x, y


def _spill(x: np.ndarray, y: np.ndarray, directory: Path, block: int = 128) -> SpillRows:
    rows = SpillRows(x.shape[1], directory=directory)
    for lo in range(0, len(x), block):
        rows.append(x[lo : lo + block], y[lo : lo + block])
    return rows


def test_spilled_rows_read_back_exactly_and_leave_no_file(tmp_path: Path) -> None:
    x, y = _data()
    rows = _spill(x, y, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the spill file never has a name
    bx, by = rows.read(100, 350)
    np.testing.assert_array_equal(bx, x[100:350])
    np.testing.assert_array_equal(by, y[100:350])
    index = np.array([999, 0, 512, 3, 3, 640])
    tx, ty = rows.take(index)
    np.testing.assert_array_equal(tx, x[index])
    np.testing.assert_array_equal(ty, y[index])
    rows.close()


@pytest.mark.parametrize("block_rows", [10_000, 96])  # one block (the old global shuffle), and many blocks
def test_streamed_training_equals_in_memory_training(tmp_path: Path, block_rows: int) -> None:
    x, y = _data()
    cfg = TrainConfig(epochs=2, batch_size=32, seed=5)
    in_memory = build_model("mlp", x.shape[1])
    streamed = build_model("mlp", x.shape[1])
    a = train_rows(in_memory, ArrayRows(x, y), cfg, block_rows=block_rows)
    rows = _spill(x, y, tmp_path)
    b = train_rows(streamed, rows, cfg, block_rows=block_rows)
    assert a.loss == b.loss and a.num_examples == b.num_examples == len(x)
    for p, q in zip(get_arrays(in_memory), get_arrays(streamed), strict=True):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_allclose(list(evaluate_rows(streamed, rows, block_rows=block_rows).values()),
                               list(evaluate(in_memory, x, y).values()), rtol=1e-6, atol=1e-7)
    rows.close()


def test_one_block_order_is_the_global_permutation_of_before() -> None:
    import torch

    order = np.concatenate([idx for _, _, idx in epoch_order(300, 64, torch.Generator().manual_seed(1))])
    np.testing.assert_array_equal(order, torch.randperm(300, generator=torch.Generator().manual_seed(1)).numpy())
    blocks = list(epoch_order(300, 64, torch.Generator().manual_seed(1), block_rows=100))
    seen = np.concatenate([lo + idx for lo, _, idx in blocks])
    assert sorted(seen.tolist()) == list(range(300))  # every row once per epoch
    assert all(len(idx) <= 64 and hi - lo <= 100 for lo, hi, idx in blocks)


def test_train_local_keeps_its_signature_and_results() -> None:
    x, y = _data(400)
    cfg = TrainConfig(epochs=1, batch_size=0)
    a, b = build_model("logistic", x.shape[1]), build_model("logistic", x.shape[1])
    train_local(a, x, y, cfg)
    train_rows(b, ArrayRows(x, y), cfg)
    for p, q in zip(get_arrays(a), get_arrays(b), strict=True):
        np.testing.assert_array_equal(p, q)
