"""`benchmarks.accuracy --federation`: the pooled/local/federated comparison on any task and partner set."""

from __future__ import annotations

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
