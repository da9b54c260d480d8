"""`fedcrm demo`: the whole product on the bundled Telco partners, in a few minutes.

Copies the bundled partners (skewed by contract type: A month-to-month, B one year,
C two year) to a fresh working directory, runs ``fedcrm client init`` for each, has each
partner approve the task (``fedcrm client approve``: a partner takes part only in tasks it
approved), runs ``fedcrm coordinator run`` with secure aggregation on, and prints a comparison on the
bundled common test set (kept apart from every partner): the pooled model of the same
architecture, the federated model and each partner's local-only model.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedcrm.paths import DATASETS

console = Console()

PARTNERS = ("A", "B", "C")


def _fedcrm(*args: str) -> None:
    """Run a fedcrm command as a user would, in its own process."""
    console.print(f"[dim]$ fedcrm {' '.join(args)}[/]")
    result = subprocess.run([sys.executable, "-m", "fedcrm.cli", *args], check=False)
    if result.returncode != 0:
        raise typer.Exit(result.returncode)


def demo_command(
    workdir: Path = typer.Option(None, help="Fresh working directory (default: ./demo-work/<time>)."),
    split: str = typer.Option("skewed", help="Bundled split to use: skewed | iid."),
    run_config: Path = typer.Option(DATASETS / "telco" / "run.toml", help="Run config for the federated run."),
) -> None:
    """End-to-end demo on the bundled Telco partners."""
    from fedcrm.coordinator.run_config import load_run_config

    workdir = workdir or Path("demo-work") / time.strftime("%Y%m%dT%H%M%S")
    if workdir.exists() and any(workdir.iterdir()):
        console.print(f"[red]{workdir} is not empty; the demo needs a fresh directory[/]")
        raise typer.Exit(1)
    bundled = DATASETS / "partners" / "telco"
    workdir.mkdir(parents=True, exist_ok=True)
    for name in PARTNERS:
        shutil.copytree(bundled / split / name, workdir / name)
    shutil.copytree(bundled / "common_test", workdir / "common_test")
    console.rule("1. each partner creates its own key and consent ledger")
    for name in PARTNERS:
        _fedcrm("client", "init", "--config", str(workdir / name / "partner.toml"))
    cfg = load_run_config(run_config, {})
    console.rule("2. each partner reviews the task schema and approves it (hash and purpose into its ledger)")
    for name in PARTNERS:
        _fedcrm("client", "approve", "--config", str(workdir / name / "partner.toml"), "--task", str(cfg.task),
                "--by", f"partner {name} data team (demo)")
    console.rule("3. the coordinator runs federated training (SecAgg+ on)")
    run_id = "demo-" + time.strftime("%Y%m%dT%H%M%S")
    partner_args = [a for name in PARTNERS for a in ("--partner", str(workdir / name / "partner.toml"))]
    _fedcrm("coordinator", "run", *partner_args, "--config", str(run_config), "--run-id", run_id,
            "--runs-dir", str(workdir / "runs"))
    console.rule("4. comparison on the common test set")
    table = compare(workdir, workdir / "runs" / run_id, cfg)
    console.print(table)
    console.print(f"run directory: {workdir / 'runs' / run_id} (report.md, report.html, manifest.json)")


def compare(workdir: Path, run_dir: Path, cfg) -> Table:  # noqa: ANN001
    """Pooled vs federated vs local-only on the common test set, as a Rich table."""
    import pandas as pd

    from fedcrm.evaluation import (TrainingRecipe, evaluate_scores, federated_model, load_rows, local_scaling,
                                   score, train_model)
    from fedcrm.protocol import load_task_schema

    task = load_task_schema(cfg.task)
    test = load_rows(workdir / "common_test" / "partner.toml")
    partners = {name: load_rows(workdir / name / "partner.toml") for name in PARTNERS}
    recipe = TrainingRecipe(architecture=cfg.architecture, epochs=cfg.rounds * cfg.local_epochs,
                            learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, seed=cfg.seed)
    rows: list[tuple[str, dict[str, float]]] = []
    pooled = pd.concat(partners.values(), ignore_index=True)
    scaling = local_scaling(pooled, task)
    rows.append(("pooled (same architecture, all rows in one place)",
                 evaluate_scores(test, score(train_model(pooled, task, scaling, recipe), test, task, scaling))))
    model, fed_scaling = federated_model(run_dir, task)
    rows.append((f"federated ({cfg.aggregation}, {cfg.rounds} rounds)",
                 evaluate_scores(test, score(model, test, task, fed_scaling))))
    for name, frame in partners.items():
        s = local_scaling(frame, task)
        rows.append((f"partner {name} alone ({len(frame)} customers)",
                     evaluate_scores(test, score(train_model(frame, task, s, recipe), test, task, s))))
    table = Table(title=f"Common test set: {len(test)} customers never seen by any partner")
    for col in ("model", "ROC AUC", "PR AUC", "top-decile lift"):
        table.add_column(col)
    for label, m in rows:
        table.add_row(label, f"{m['roc_auc']:.4f}", f"{m['pr_auc']:.4f}", f"{m['top_decile_lift']:.2f}")
    return table
