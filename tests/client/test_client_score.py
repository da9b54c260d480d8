"""Local scoring: a run's final model applied to the partner's own customers, behind the gate.

The end-to-end tests use one real 1-round SecAgg+ simulation per module (slow). The
refusal tests build a small run directory with the registry's own writers (fast) and
tamper with it the way an attacker on the transfer path would.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedcrm.client.cli import app as client_app
from fedcrm.client.cli_score import register
from fedcrm.client.config import load_partner_config
from fedcrm.client.ingest import LABEL
from fedcrm.client.score import deciles, score_partner
from fedcrm.consent.events import UsageEvent
from fedcrm.consent.ledger import Ledger
from fedcrm.coordinator.registry import write_manifest
from fedcrm.errors import ModelIntegrityError
from fedcrm.models.io import save_model_arrays
from fedcrm.models.nets import build_model
from fedcrm.models.params import get_arrays, get_names
from fedcrm.paths import DATASETS
from fedcrm.protocol import load_task_schema
from tests.federation import approve_task

PARTNERS = ("A", "B", "C")
TASK = DATASETS / "tasks" / "telco_churn.yaml"


def _partners(root: Path) -> dict[str, Path]:
    """Fresh copies of the bundled skewed Telco partners, each initialised by its own CLI."""
    register(client_app)
    configs = {}
    for name in PARTNERS:
        shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / name, root / name)
        configs[name] = root / name / "partner.toml"
        result = CliRunner().invoke(client_app, ["init", "--config", str(configs[name])])
        assert result.exit_code == 0, result.output
        approve_task(configs[name])
    return configs


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    """Three initialised partners and the run directory of a real 1-round SecAgg+ run."""
    from fedcrm.coordinator.run_config import load_run_config
    from fedcrm.coordinator.runner import run_federation

    root = tmp_path_factory.mktemp("score")
    configs = _partners(root)
    cfg = load_run_config(DATASETS / "telco" / "run.toml", {"rounds": 1, "run_id": "score-run"})
    result = run_federation(cfg, list(configs.values()), runs_dir=root / "runs")
    assert result.succeeded, result.error
    return configs, result.run_dir


def _small_run(root: Path) -> Path:
    """A minimal finished run directory written by the registry's own writers."""
    task = load_task_schema(TASK)
    run_dir = root / "run-small"
    (run_dir / "metrics").mkdir(parents=True)
    (run_dir / "task_schema.json").write_text(task.canonical_json().decode())
    (run_dir / "metrics" / "statistics.json").write_text(
        json.dumps({"scaling": {n: [0.0, 1.0] for n in task.numeric_features}}))
    model = build_model("logistic", task.width)
    save_model_arrays(run_dir / "model" / "final.safetensors", get_names(model), get_arrays(model),
                      {"architecture": "logistic", "n_features": task.width, "task_schema_sha256": task.sha256()})
    write_manifest(run_dir)
    return run_dir


@pytest.fixture()
def partner_a(tmp_path: Path) -> Path:
    shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / "A", tmp_path / "A")
    return tmp_path / "A" / "partner.toml"


# --- refusals (fast) ---------------------------------------------------------------------------


def test_a_model_with_one_changed_byte_is_refused_naming_the_file(tmp_path: Path, partner_a: Path) -> None:
    run_dir = _small_run(tmp_path)
    model = run_dir / "model" / "final.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01  # a weight byte, so the header still parses
    model.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"final\.safetensors.*sha256"):
        score_partner(partner_a, run_dir, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


class _Trap:
    """Unpickling this creates a file: proof that a loader executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".joblib"])
def test_a_pickle_format_model_is_refused_by_its_suffix(tmp_path: Path, partner_a: Path, suffix: str) -> None:
    run_dir = _small_run(tmp_path)
    marker = tmp_path / "code-ran"
    (run_dir / "model" / "final.safetensors").unlink()
    (run_dir / "model" / f"final{suffix}").write_bytes(pickle.dumps(_Trap(marker)))
    write_manifest(run_dir)  # even a manifest that vouches for it does not help
    with pytest.raises(ModelIntegrityError, match=rf"final\{suffix}.*execute code"):
        score_partner(partner_a, run_dir, tmp_path / "out.csv")
    assert not marker.exists()


def test_a_pickle_renamed_to_safetensors_is_refused_by_its_content(tmp_path: Path, partner_a: Path) -> None:
    run_dir = _small_run(tmp_path)
    marker = tmp_path / "code-ran"
    (run_dir / "model" / "final.safetensors").write_bytes(pickle.dumps(_Trap(marker), protocol=4))
    write_manifest(run_dir)  # the hash matches: only the content check stands in the way
    with pytest.raises(ModelIntegrityError, match=r"final\.safetensors.*pickle"):
        score_partner(partner_a, run_dir, tmp_path / "out.csv")
    assert not marker.exists()


def test_deciles_are_balanced_and_ranked_from_the_top() -> None:
    scores = np.random.default_rng(0).random(1003)
    d = deciles(scores)
    counts = np.bincount(d)[1:]
    assert len(counts) == 10 and counts.max() - counts.min() <= 1
    for k in range(1, 10):
        assert scores[d == k].min() >= scores[d == k + 1].max()


# --- end to end on a real run (slow) -----------------------------------------------------------


@pytest.mark.slow
def test_scores_are_keyed_by_the_partners_own_customer_ids(federation, tmp_path: Path) -> None:  # noqa: ANN001
    configs, run_dir = federation
    cfg = load_partner_config(configs["B"])
    result = score_partner(configs["B"], run_dir, tmp_path / "scores.csv")
    scores = pd.read_csv(result.path, dtype={"customer_id": str})
    export = pd.read_csv(cfg.resolve(cfg.source.path), dtype=str)
    assert set(scores["customer_id"]) == set(export[cfg.customer_id_column])
    assert len(scores) == result.rows == len(export)
    assert scores["score"].between(0, 1).all()
    assert "subject" not in scores.columns  # pseudonyms stay out of the partner's business files
    assert not any(c.startswith("reason_") for c in scores.columns)  # reasons only with --explain
    explained = pd.read_csv(score_partner(configs["B"], run_dir, tmp_path / "why.csv", explain=3).path,
                            dtype={"customer_id": str})
    own_columns = set(cfg.feature_columns().values())
    for k in (1, 2, 3):
        assert set(explained[f"reason_{k}_column"]) <= own_columns  # the partner's own column names
    assert (explained["reason_1_column"] != explained["reason_2_column"]).all()
    assert (explained["reason_1_effect"] >= explained["reason_2_effect"]).all()


@pytest.mark.slow
def test_parquet_scores_have_balanced_deciles_with_the_highest_scores_in_decile_1(federation, tmp_path: Path) -> None:  # noqa: ANN001
    configs, run_dir = federation
    result = score_partner(configs["A"], run_dir, tmp_path / "scores.parquet")
    scores = pd.read_parquet(result.path)
    counts = scores["decile"].value_counts()
    assert sorted(counts.index) == list(range(1, 11))
    assert counts.max() - counts.min() <= 1
    assert scores.loc[scores["decile"] == 1, "score"].min() >= scores.loc[scores["decile"] == 2, "score"].max()


@pytest.mark.slow
def test_the_score_job_is_recorded_as_a_use_in_the_partners_ledger(federation, tmp_path: Path) -> None:  # noqa: ANN001
    configs, run_dir = federation
    result = score_partner(configs["C"], run_dir, tmp_path / "scores.csv")
    ledger = Ledger.open(load_partner_config(configs["C"]).ledger_url)
    try:
        uses = [e.event for e in ledger.events() if isinstance(e.event, UsageEvent) and e.event.stage == "score"]
        assert ledger.verify().ok
    finally:
        ledger.close()
    assert len(uses) == 1
    use = uses[0]
    assert use.job_id == result.job_id and use.job_id.startswith("score-")
    assert use.model_version == f"{run_dir.name}:final"
    assert use.purpose == "churn_prediction" and use.partner == "C"
    assert use.n_subjects == result.rows
    assert LABEL not in use.columns  # scoring asks the gate for features only, never the label


@pytest.mark.slow
def test_the_score_command_writes_the_file_and_names_the_job(federation, tmp_path: Path) -> None:  # noqa: ANN001
    configs, run_dir = federation
    register(client_app)
    out = tmp_path / "cli.csv"
    result = CliRunner().invoke(client_app, ["score", "--config", str(configs["A"]), "--run", str(run_dir),
                                             "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and "score-" in result.output


@pytest.mark.slow
def test_the_benefit_report_on_a_real_run_compares_on_the_partners_own_holdout(federation, tmp_path: Path) -> None:  # noqa: ANN001
    from fedcrm.client.benefit import benefit_report
    from fedcrm.client.ingest import SUBJECT, load_customers
    from fedcrm.client.partner_session import is_validation_subject

    configs, run_dir = federation
    report = benefit_report(configs["B"], run_dir, resamples=300, out_dir=tmp_path / "benefit")
    cfg = load_partner_config(configs["B"])
    fraction = cfg.privacy.validation_fraction
    holdout = sum(is_validation_subject(s, fraction) for s in load_customers(cfg)[SUBJECT])
    assert report.holdout_customers == holdout  # the federated evaluation's own hold-out (nobody withdrew)
    assert report.training["rounds"] == 1 and report.training["architecture"] == "mlp"
    assert report.training["param_bound"] == 8.0  # SecAgg+ runs project parameters; the twin does too
    assert report.verdict in ("helped", "hurt", "unclear") and "interval" in report.answer
    assert (tmp_path / "benefit" / f"{run_dir.name}.png").exists()
