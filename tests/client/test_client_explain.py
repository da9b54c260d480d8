"""Scoring without torch, and explained scores in the partner's own column names and values."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fedcrm.client.cli import app as client_app
from fedcrm.client.explain import baseline_vector, exact_attributions, feature_attributions
from fedcrm.client.score import ScoringModel, score_partner
from fedcrm.coordinator.registry import write_manifest
from fedcrm.models.io import save_model_arrays
from fedcrm.models.nets import build_model
from fedcrm.models.params import get_arrays, get_names, set_arrays
from fedcrm.paths import DATASETS
from fedcrm.protocol import load_task_schema

TASK = load_task_schema(DATASETS / "tasks" / "telco_churn.yaml")
SCALING = {"tenure_months": (32.0, 24.0), "monthly_charges": (65.0, 30.0), "total_charges": (2280.0, 2266.0)}


def _model(arch: str, seed: int = 3) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    model = build_model(arch, TASK.width, seed=seed)
    return model, dict(zip(get_names(model), get_arrays(model), strict=True))


def _inputs(n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.where(rng.random((n, TASK.width)) > 0.6, rng.normal(size=(n, TASK.width)), 0.0).astype(np.float32)


@pytest.mark.parametrize("arch", ["logistic", "mlp"])
def test_numpy_scoring_equals_the_torch_model(arch: str) -> None:
    model, arrays = _model(arch)
    x = _inputs()
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(ScoringModel(arch, arrays).scores(x), expected, rtol=1e-5, atol=1e-6)


def test_integrated_gradients_of_a_linear_model_are_weight_times_distance_to_baseline() -> None:
    _, arrays = _model("logistic")
    x = _inputs()
    base = baseline_vector(TASK, SCALING)
    attributions, gap = feature_attributions("logistic", arrays, x, base, TASK, steps=8)
    per_column = arrays["linear.weight"][0] * (x - base)
    blocks = np.cumsum([0, *(f.width for f in TASK.features)])
    np.testing.assert_allclose(attributions, np.add.reduceat(per_column, blocks[:-1], axis=1), atol=1e-4)
    assert gap < 1e-4


def test_mlp_attributions_add_up_to_the_logit_difference_from_the_baseline() -> None:
    _, arrays = _model("mlp")
    x = _inputs()
    base = baseline_vector(TASK, SCALING)
    attributions, gap = feature_attributions("mlp", arrays, x, base, TASK, steps=64)
    model = ScoringModel("mlp", arrays)
    np.testing.assert_allclose(attributions.sum(axis=1), model.logits(x) - model.logits(base[None, :])[0],
                               atol=0.02)
    assert gap < 0.02
    # A feature sitting at its baseline (here: every column of it zero-distance) gets exactly nothing.
    x[:, :1] = base[:1]
    assert np.all(feature_attributions("mlp", arrays, x, base, TASK, steps=8)[0][:, 0] == 0.0)


@pytest.mark.parametrize("arch", ["logistic", "mlp"])
def test_exact_attributions_add_up_to_the_models_own_logit_difference(arch: str) -> None:
    _, arrays = _model(arch)
    x = _inputs(2000) * 3.0  # large enough that paths cross hidden units' kinks
    base = baseline_vector(TASK, SCALING)
    attributions, gap = feature_attributions(arch, arrays, x, base, TASK)  # default: exact closed form
    model = ScoringModel(arch, arrays)  # the plain scorer's numpy arithmetic, independent of explain.py
    np.testing.assert_allclose(attributions.sum(axis=1), model.logits(x) - model.logits(base[None, :])[0],
                               atol=1e-4)
    assert attributions.shape == (len(x), len(TASK.features)) and gap < 1e-4


def test_exact_mlp_attributions_equal_captums_numerical_integration() -> None:
    _, arrays = _model("mlp", seed=5)
    x = _inputs(300) * 3.0
    base = baseline_vector(TASK, SCALING)
    h_x = x @ arrays["net.0.weight"].T + arrays["net.0.bias"]
    h_b = base @ arrays["net.0.weight"].T + arrays["net.0.bias"]
    assert np.mean(np.sign(h_x) != np.sign(h_b)) > 0.1  # many paths cross a ReLU kink: the hard case
    exact, _ = feature_attributions("mlp", arrays, x, base, TASK)
    numerical, gap = feature_attributions("mlp", arrays, x, base, TASK, steps=512)  # Captum, Gauss-Legendre
    np.testing.assert_allclose(exact, numerical, atol=5e-3)
    columns, _ = exact_attributions("mlp", arrays, x, base)
    assert columns.dtype == np.float32 and columns.shape == x.shape


@pytest.fixture()
def german_partner(tmp_path: Path) -> Path:
    """Partner A with its contract column in its own (German) spelling, mapped by a value map."""
    shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / "A", tmp_path / "A")
    config = tmp_path / "A" / "partner.toml"
    export = tmp_path / "A" / "customers.csv"
    frame = pd.read_csv(export, dtype=str, keep_default_na=False)
    german = {"Month-to-month": "Monatlich", "One year": "Ein Jahr", "Two year": "Zwei Jahre"}
    frame["Contract"] = frame["Contract"].map(german)
    frame.to_csv(export, index=False)
    text = config.read_text().replace('feature = "contract"', 'feature = "contract"\nvalue_map = { Monatlich = '
                                      '"Month-to-month", "Ein Jahr" = "One year", "Zwei Jahre" = "Two year" }')
    config.write_text(text)
    assert CliRunner().invoke(client_app, ["init", "--config", str(config)]).exit_code == 0
    return config


def _run_dir(root: Path) -> Path:
    """A finished run whose logistic model leans heavily on a month-to-month contract."""
    model = build_model("logistic", TASK.width)
    names = TASK.encoded_names()
    weight = np.zeros((1, TASK.width), dtype=np.float32)
    weight[0, names.index("contract=Month-to-month")] = 3.0
    weight[0, names.index("tenure_months")] = -0.5
    set_arrays(model, [weight, np.zeros(1, dtype=np.float32)])
    run_dir = root / "run-explain"
    (run_dir / "metrics").mkdir(parents=True)
    (run_dir / "task_schema.json").write_text(TASK.canonical_json().decode())
    (run_dir / "metrics" / "statistics.json").write_text(json.dumps({"scaling": SCALING}))
    save_model_arrays(run_dir / "model" / "final.safetensors", get_names(model), get_arrays(model),
                      {"architecture": "logistic", "n_features": TASK.width, "task_schema_sha256": TASK.sha256()})
    write_manifest(run_dir)
    return run_dir


def test_reasons_name_the_partners_own_columns_and_values(german_partner: Path, tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    result = CliRunner().invoke(client_app, ["score", "--config", str(german_partner), "--run", str(run_dir),
                                             "--out", str(tmp_path / "why.csv"), "--explain", "2"])
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(tmp_path / "why.csv", dtype={"customer_id": str})
    export = pd.read_csv(german_partner.parent / "customers.csv", dtype=str).set_index("customerID")
    monthly = scores[export.loc[scores["customer_id"], "Contract"].to_numpy() == "Monatlich"]
    assert len(monthly) > 0
    assert (monthly["reason_1_column"] == "Contract").all()
    assert (monthly["reason_1_value"] == "Monatlich").all()  # the partner's own spelling, not the task's
    np.testing.assert_allclose(monthly["reason_1_effect"], 3.0, atol=1e-3)
    short_tenure = scores[pd.to_numeric(export.loc[scores["customer_id"], "tenure"]).to_numpy() < 32]
    assert (short_tenure["reason_1_column"].eq("tenure") | short_tenure["reason_2_column"].eq("tenure")).all()


def test_plain_scoring_never_imports_torch(german_partner: Path, tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from fedcrm.client.score import score_partner\n"
        f"r = score_partner(Path({str(german_partner)!r}), Path({str(run_dir)!r}), Path({str(tmp_path / 's.csv')!r}))\n"
        "print(r.rows, sorted(m for m in ('torch', 'flwr', 'ray', 'sklearn', 'captum') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rows, modules = out.stdout.strip().split(" ", 1)
    assert int(rows) > 0 and modules == "[]"
    assert score_partner(german_partner, run_dir, tmp_path / "t.csv").explain_gap is None
