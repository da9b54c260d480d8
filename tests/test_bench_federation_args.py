"""`benchmarks.accuracy --federation`: the pooled/local/federated comparison on any task and partner set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import accuracy
from fedcrm.paths import DATASETS

TELCO = DATASETS / "partners" / "telco"


def _federation(root: Path) -> Path:
    for name in ("A", "B"):
        shutil.copytree(TELCO / "skewed" / name, root / "north" / name)
    shutil.copytree(TELCO / "common_test", root / "common_test")
    (root / "lonely").mkdir()
    shutil.copytree(TELCO / "skewed" / "C", root / "lonely" / "C")  # one partner is no federation: not a split
    return root


def test_any_partner_set_becomes_a_data_set_with_its_own_outputs(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accuracy, "DATASETS", dict(accuracy.DATASETS))
    root = _federation(tmp_path / "fed")
    args = accuracy.parse_args(["--federation", str(root), "--task", str(DATASETS / "tasks" / "telco_churn.yaml"),
                                "--run-config", str(DATASETS / "telco" / "run.toml"), "--name", "consortium"])
    spec = accuracy.DATASETS["consortium"]
    assert args.datasets == ["consortium"]
    assert spec.splits == ("north",) and spec.partners("north") == ["A", "B"]
    assert spec.task.name == "telco_churn.yaml" and spec.partner_root == root.resolve()
    assert args.results.name == "accuracy-consortium.json" and args.report.name == "benchmarks-consortium.md"
    assert args.report.parent == accuracy.RAW  # never the project's own docs/benchmarks.md


def test_a_federation_without_a_test_set_or_splits_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "fed"
    shutil.copytree(TELCO / "skewed" / "A", root / "north" / "A")
    task, run = DATASETS / "tasks" / "telco_churn.yaml", DATASETS / "telco" / "run.toml"
    with pytest.raises(SystemExit, match="common_test"):
        accuracy.federation_spec(root, task, run)
    shutil.copytree(TELCO / "common_test", root / "common_test")
    with pytest.raises(SystemExit, match="no split directory"):
        accuracy.federation_spec(root, task, run)


def test_explicit_partner_configs_need_two_distinct_partners_and_a_test_set(tmp_path: Path) -> None:
    task = DATASETS / "tasks" / "cdnow_propensity.yaml"
    cdnow = DATASETS / "partners" / "cdnow"
    spec = accuracy.partner_set_spec(task, [cdnow / "M01" / "partner.toml", cdnow / "M02" / "partner.toml"],
                                     cdnow / "common_test" / "partner.toml")
    assert spec.splits == ("federation",) and spec.partners("federation") == ["M01", "M02"]
    assert spec.run_config is None and spec.config_of("federation", "M02") == (cdnow / "M02" / "partner.toml")
    assert spec.run_settings({"rounds": 1}).task == task.resolve()  # the task given, not a run config's
    with pytest.raises(SystemExit, match="at least two"):
        accuracy.partner_set_spec(task, [cdnow / "M01" / "partner.toml"], cdnow / "common_test" / "partner.toml")
    with pytest.raises(SystemExit, match="distinct names"):
        accuracy.partner_set_spec(task, [cdnow / "M01" / "partner.toml"] * 2, cdnow / "common_test" / "partner.toml")
    with pytest.raises(SystemExit, match="not found"):
        accuracy.partner_set_spec(task, [cdnow / "M01" / "partner.toml", tmp_path / "nope.toml"],
                                  cdnow / "common_test" / "partner.toml")


@pytest.mark.slow
def test_any_task_and_partner_set_compares_pooled_local_and_federated(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The purchase-propensity task on two bundled shops (transaction exports, imported consents), 1 round."""
    monkeypatch.setattr(accuracy, "DATASETS", dict(accuracy.DATASETS))
    cdnow = DATASETS / "partners" / "cdnow"
    out = tmp_path / "out"
    accuracy.main(["--task", str(DATASETS / "tasks" / "cdnow_propensity.yaml"),
                   "--partners", str(cdnow / "M01" / "partner.toml"), str(cdnow / "M02" / "partner.toml"),
                   "--test-config", str(cdnow / "common_test" / "partner.toml"), "--name", "shops",
                   "--rounds", "1", "--seeds", "0", "--aggregations", "plain", "--resamples", "200",
                   "--workdir", str(tmp_path / "work"), "--results", str(out / "rows.json"),
                   "--report", str(out / "report.md"), "--img-dir", str(out / "img"),
                   "--scores-dir", str(out / "scores")])
    rows = {r["method"]: r for r in json.loads((out / "rows.json").read_text())}
    assert set(rows) >= {"pooled_lr", "pooled_mlp", "local_M01", "local_M02", "federated_plain"}
    for method in ("pooled_lr", "pooled_mlp", "local_M01", "local_M02", "federated_plain"):
        assert 0.5 < rows[method]["roc_auc"] <= 1.0, (method, rows[method])
        assert rows[method]["dataset"] == "shops" and rows[method]["split"] == "federation"
    assert rows["federated_plain"]["rounds"] == 1 and rows["federated_plain"]["partners"] == 2
    assert "shops" in (out / "report.md").read_text()
