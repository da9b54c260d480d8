"""Helpers for tests that run real federations: fresh partner copies, init, approve the task, run."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.coordinator.run_config import RunConfig
from fedcrm.coordinator.runner import RunResult, run_federation
from fedcrm.paths import DATASETS

TELCO = DATASETS / "partners" / "telco"
TELCO_TASK = DATASETS / "tasks" / "telco_churn.yaml"


def init_partner(config: Path) -> None:
    """`fedcrm client init` for one partner, as its data team would run it."""
    result = CliRunner().invoke(app, ["client", "init", "--config", str(config)])
    assert result.exit_code == 0, result.output


def approve_task(config: Path, task: Path = TELCO_TASK) -> None:
    """`fedcrm client approve`: the partner agrees to take part in this exact task schema."""
    result = CliRunner().invoke(app, ["client", "approve", "--config", str(config), "--task", str(task),
                                      "--by", "test data team"])
    assert result.exit_code == 0, result.output


def copy_partners(tmp: Path, split: str = "skewed", names: tuple[str, ...] = ("A", "B", "C"),
                  egress: str | None = None, task: Path | None = TELCO_TASK) -> list[Path]:
    """Fresh copies of bundled partners, initialised and (unless ``task`` is None) approving the task."""
    configs = []
    for name in names:
        target = tmp / name
        shutil.copytree(TELCO / split / name, target)
        config = target / "partner.toml"
        if egress is not None:
            text = config.read_text().replace("[privacy]\n", f'[privacy]\negress_journal = "{egress}"\n')
            config.write_text(text)
        init_partner(config)
        if task is not None:
            approve_task(config, task)
        configs.append(config)
    return configs


def run(tmp: Path, partners: list[Path], **overrides: object) -> RunResult:
    """A federated run on the simulation engine with test-friendly defaults."""
    settings: dict[str, object] = {"task": TELCO_TASK, "rounds": 2, "seed": 0}
    settings.update(overrides)
    return run_federation(RunConfig.model_validate(settings), partners, runs_dir=tmp / "runs", timeout_s=900)
