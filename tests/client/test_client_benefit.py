"""A partner's benefit report: federated model vs a local-only twin on the partner's own hold-out.

Fast tests build a run directory with the coordinator's own writers (plan, status, model,
manifest); the end-to-end test on a real Flower run lives in test_client_score.py, where it
shares that module's one 1-round SecAgg+ simulation.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedcrm.client.benefit import METRICS, benefit_report, paired_bootstrap, resampled_metrics, verdict
from fedcrm.client.cli import app as client_app
from fedcrm.client.config import load_partner_config
from fedcrm.client.ingest import LABEL
from fedcrm.consent.events import UsageEvent
from fedcrm.consent.ledger import Ledger
from fedcrm.coordinator.registry import write_manifest
from fedcrm.coordinator.run_config import RunConfig, RunPlan
from fedcrm.errors import ModelIntegrityError
from fedcrm.models.io import save_model_arrays
from fedcrm.models.nets import build_model
from fedcrm.models.params import get_arrays, get_names
from fedcrm.paths import DATASETS, REPO_ROOT
from fedcrm.protocol import load_task_schema

TASK_FILE = DATASETS / "tasks" / "telco_churn.yaml"
TASK = load_task_schema(TASK_FILE)


# --- the paired bootstrap (numpy only) -----------------------------------------------------------


def test_a_model_compared_with_itself_differs_by_exactly_zero_in_every_resample() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(float)
    scores = rng.random(300) + y * 0.5
    metrics, degenerate = paired_bootstrap(y, scores, scores.copy(), resamples=200)
    assert degenerate == 0
    for m in metrics:  # the same indices for both models: every resampled difference is 0
        assert (m.difference.estimate, m.difference.low, m.difference.high) == (0.0, 0.0, 0.0)
        assert m.federated == m.local and m.p_not_better == 1.0
    assert verdict(metrics[0], 0.95)[0] == "unclear"


def test_a_clearly_better_model_is_reported_as_a_help_with_an_interval_above_zero() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(800) < 0.25).astype(float)
    good, noise = y + rng.normal(0, 0.6, 800), rng.random(800)
    metrics, _ = paired_bootstrap(y, good, noise, resamples=300, seed=3)
    by_name = {m.metric: m for m in metrics}
    assert set(by_name) == {"roc_auc", "pr_auc", "top_decile_lift"}
    roc = by_name["roc_auc"]
    assert roc.federated.low <= roc.federated.estimate <= roc.federated.high
    assert roc.difference.low > 0 and roc.p_not_better == 0.0
    kind, answer = verdict(roc, 0.95)
    assert kind == "helped" and answer.startswith("Yes") and "95% interval" in answer
    assert verdict(paired_bootstrap(y, noise, good, resamples=300)[0][0], 0.95)[0] == "hurt"


@pytest.mark.parametrize("ties", [False, True])
def test_vectorised_resamples_equal_the_metrics_of_the_resampled_arrays(ties: bool) -> None:
    rng = np.random.default_rng(2)
    y = (rng.random(500) < 0.3).astype(float)
    scores = rng.random(500) + 0.3 * y
    scores = np.round(scores, 1) if ties else scores  # ties: many customers share a score
    draws = rng.integers(0, 500, (6, 500))
    counts = np.stack([np.bincount(d, minlength=500) for d in draws])
    fast = resampled_metrics(y, scores, counts)
    for b, d in enumerate(draws):
        for name, (fn, _) in METRICS.items():
            if name == "top_decile_lift" and ties:
                continue  # a tied group split at the top-decile boundary is ordered differently (documented)
            assert fast[name][b] == pytest.approx(fn(y[d], scores[d]), abs=1e-12), (name, b)


# --- on a bundled partner with a run directory written by the coordinator's writers -------------


@pytest.fixture()
def partner_a(tmp_path: Path) -> Path:
    shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / "A", tmp_path / "A")
    config = tmp_path / "A" / "partner.toml"
    assert CliRunner().invoke(client_app, ["init", "--config", str(config)]).exit_code == 0
    return config


def _untrained_run(root: Path, **final_meta: object) -> Path:
    """A finished 2-round run whose final model is the untrained initial model (so the local twin beats it)."""
    cfg = RunConfig(task=TASK_FILE, rounds=2, architecture="logistic", aggregation="plain", local_epochs=1,
                    learning_rate=0.1, batch_size=0, optimizer="sgd", seed=4, run_id="run-untrained")
    run_dir = root / "runs" / "run-untrained"
    (run_dir / "metrics").mkdir(parents=True)
    RunPlan(run_id="run-untrained", run_dir=run_dir, num_partners=3, task_schema_json=TASK.canonical_json().decode(),
            config=cfg).save()
    (run_dir / "status.json").write_text(json.dumps({"succeeded": True, "outcome": "completed", "after_round": 2}))
    (run_dir / "task_schema.json").write_text(TASK.canonical_json().decode())
    scaling = {"tenure_months": [32.0, 24.0], "monthly_charges": [65.0, 30.0], "total_charges": [2280.0, 2266.0]}
    (run_dir / "metrics" / "statistics.json").write_text(json.dumps({"scaling": scaling}))
    model = build_model("logistic", TASK.width, seed=99)
    save_model_arrays(run_dir / "model" / "final.safetensors", get_names(model), get_arrays(model),
                      {"architecture": "logistic", "n_features": TASK.width, "task_schema_sha256": TASK.sha256(),
                       **final_meta})
    write_manifest(run_dir)
    return run_dir


def test_the_twin_trains_as_many_rounds_as_the_final_model_had(tmp_path: Path) -> None:
    from fedcrm.run_artifacts import read_run_model, read_run_training

    last = _untrained_run(tmp_path / "last")
    assert read_run_training(last, read_run_model(last, TASK)).rounds == 2  # the last completed round
    best = _untrained_run(tmp_path / "best", round=1, rule="best", best_round=1)  # the registry's best-round final
    assert read_run_training(best, read_run_model(best, TASK)).rounds == 1


def test_the_report_answers_with_intervals_writes_its_files_and_is_a_recorded_use(partner_a: Path,
                                                                                 tmp_path: Path) -> None:
    run_dir = _untrained_run(tmp_path)
    report = benefit_report(partner_a, run_dir, resamples=200)
    assert report.verdict == "hurt" and report.answer.startswith("No")  # an untrained model loses to the twin
    assert report.training["rounds"] == 2 and report.training["local_epochs"] == 1
    assert report.training["optimizer"] == "sgd" and report.training["seed"] == 4
    assert report.training["param_bound"] is None  # plain aggregation: no SecAgg+ projection
    cfg = load_partner_config(partner_a)
    saved = json.loads(Path(report.files["json"]).read_text())
    assert Path(report.files["json"]).parent == cfg.work_path / "benefit"
    assert saved["verdict"] == "hurt" and len(saved["metrics"]) == 3
    for m in saved["metrics"]:
        for side in ("federated", "local", "difference"):
            assert m[side]["low"] <= m[side]["estimate"] <= m[side]["high"]
    assert "Did joining help A?" in Path(report.files["table"]).read_text()
    assert Path(report.files["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = Path(report.files["scores"]).read_text().splitlines()
    assert scores[0] == "label,federated,local" and len(scores) == report.holdout_customers + 1
    ledger = Ledger.open(cfg.ledger_url)
    try:
        uses = [e.event for e in ledger.events() if isinstance(e.event, UsageEvent) and e.event.stage == "benefit"]
        assert ledger.verify().ok
    finally:
        ledger.close()
    assert len(uses) == 1 and uses[0].job_id == report.job_id and uses[0].purpose == "churn_prediction"
    assert uses[0].model_version == "run-untrained:final" and LABEL in uses[0].columns
    assert uses[0].n_subjects == report.holdout_customers + report.training_customers


def test_the_command_prints_the_answer_and_the_table(partner_a: Path, tmp_path: Path) -> None:
    run_dir = _untrained_run(tmp_path)
    result = CliRunner().invoke(client_app, ["benefit", "--config", str(partner_a), "--run", str(run_dir),
                                             "--resamples", "150", "--out-dir", str(tmp_path / "out")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Did joining help A?" in result.output and "No: the local-only model is better" in result.output
    assert (tmp_path / "out" / "run-untrained.json").exists()


def test_a_plan_edited_after_the_run_is_refused(partner_a: Path, tmp_path: Path) -> None:
    run_dir = _untrained_run(tmp_path)
    plan = run_dir / "plan.json"
    plan.write_text(plan.read_text().replace('"local_epochs": 1', '"local_epochs": 50'))
    with pytest.raises(ModelIntegrityError, match=r"plan\.json.*manifest"):
        benefit_report(partner_a, run_dir, resamples=150)


def test_no_client_module_imports_the_coordinator() -> None:
    offenders = []
    for path in sorted((REPO_ROOT / "client").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("fedcrm.coordinator")]
    assert offenders == []
