"""The partner-side metrics (numpy) equal scikit-learn's, and the partner path never imports scikit-learn."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from fedcrm.models.metrics import average_ranks, binary_metrics, pr_auc, roc_auc


def _cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    cases = []
    for n, rate in ((2, 0.5), (10, 0.3), (500, 0.27), (3000, 0.05)):
        y = (rng.random(n) < rate).astype(np.int64)
        y[0], y[-1] = 1, 0  # both classes present
        cases.append((f"continuous-{n}", y, rng.random(n)))
        cases.append((f"ties-{n}", y, np.round(rng.random(n), 1)))  # ~10 distinct values: many ties
        cases.append((f"float32-{n}", y, rng.random(n).astype(np.float32)))
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    cases.append(("all-tied", y, np.full(8, 0.4)))
    cases.append(("perfect", y, y + 0.0))
    cases.append(("reversed", y, 1.0 - y))
    return cases


@pytest.mark.parametrize(("name", "y", "scores"), _cases(), ids=[c[0] for c in _cases()])
def test_roc_auc_and_average_precision_equal_scikit_learn(name: str, y: np.ndarray, scores: np.ndarray) -> None:
    assert abs(roc_auc(y, scores) - roc_auc_score(y, scores)) < 1e-9, name
    assert abs(pr_auc(y, scores) - average_precision_score(y, scores)) < 1e-9, name


def test_average_ranks_share_ties() -> None:
    assert average_ranks(np.array([0.3, 0.1, 0.3, 0.2])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_one_class_gives_nan_and_bad_input_is_refused() -> None:
    metrics = binary_metrics(np.ones(6), np.arange(6.0))
    assert math.isnan(metrics["roc_auc"]) and math.isnan(metrics["pr_auc"])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="labels"):
        pr_auc(np.array([0, 1, 1]), np.array([0.1, 0.2]))


def test_the_partner_path_imports_neither_scikit_learn_nor_scipy() -> None:
    code = ("import sys, fedcrm.client.flower_app, fedcrm.client.partner_session, fedcrm.models.train; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]
