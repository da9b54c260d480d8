"""`fedcrm client benefit`: did joining the federation help us? (on our own hold-out)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from fedcrm.errors import FedcrmError

console = Console()


def benefit(
    config: Path = typer.Option(..., "--config", "-c", help="The partner config file (TOML or YAML)."),
    run: Path = typer.Option(..., "--run", help="The finished run directory (manifest, plan, task schema, model)."),
    out_dir: Path = typer.Option(None, "--out-dir", help="Where the report goes (default: <work_dir>/benefit)."),
    resamples: int = typer.Option(2000, "--resamples", min=100, max=100_000, help="Paired-bootstrap resamples."),
    level: float = typer.Option(0.95, "--level", min=0.5, max=0.999, help="Interval level."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resampling."),
    scaling: str = typer.Option("run", "--scaling", help="'run': the local twin uses the run's federated "
                                "scaling (like for like); 'own': your own training statistics."),
) -> None:
    """Compare the run's federated model with a local-only twin trained the same way on your own data."""
    from fedcrm.client.benefit import benefit_report, report_table

    if scaling not in ("run", "own"):
        console.print(f"[bold red]error:[/] --scaling '{scaling}': use 'run' or 'own'")
        raise typer.Exit(2)
    try:
        with console.status(f"training the local-only twin of {run.name} and bootstrapping …"):
            report = benefit_report(config, run, resamples=resamples, level=level, seed=seed,
                                    scaling=scaling, out_dir=out_dir)  # type: ignore[arg-type]
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(report_table(report))
    colour = {"helped": "green", "hurt": "red", "unclear": "yellow"}[report.verdict]
    console.print(f"[bold {colour}]{report.answer}[/]")
    if report.n_excluded:
        console.print(f"  {report.n_excluded} customer(s) left out: their consent does not cover '{report.purpose}'")
    console.print(f"  local twin: {report.training['rounds']} round(s) × {report.training['local_epochs']} epoch(s), "
                  f"{report.training['architecture']}, {report.training['optimizer']}, seed {report.training['seed']}, "
                  f"{report.scaling} scaling")
    if report.training.get("federated_dp"):
        console.print(f"  the run trained with differential privacy (mode {report.training['federated_dp']['mode']}); "
                      "the local twin does not: training that stays with you releases nothing")
    for name, path in report.files.items():
        console.print(f"  {name}: {path}")
    console.print(f"  recorded in the consent ledger as job {report.job_id} (stage 'benefit')")


def register(app: typer.Typer) -> None:
    """Add ``benefit`` to the ``fedcrm client`` command group (once, however often called)."""
    if not any(c.name == "benefit" for c in app.registered_commands):
        app.command("benefit")(benefit)
