"""`fedcrm client score`: apply a run's final model to the partner's own customers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from fedcrm.errors import FedcrmError

console = Console()


def score(
    config: Path = typer.Option(..., "--config", "-c", help="The partner config file (TOML or YAML)."),
    run: Path = typer.Option(..., "--run", help="The finished run directory (manifest, task schema, final model)."),
    out: Path = typer.Option(None, "--out", help="Output .csv or .parquet (default: <work_dir>/scores/<run_id>.csv)."),
    explain: int = typer.Option(0, "--explain", min=0, max=50, metavar="K",
                                help="Also write each customer's top K reasons (your column, your value, effect)."),
    explain_steps: int = typer.Option(None, "--explain-steps", min=4, max=1000,
                                      help="Compute the reasons numerically with Captum in N steps instead of "
                                           "the exact closed form (a slower cross-check)."),
) -> None:
    """Score current customers through the consent gate; output keyed by your own customer id."""
    from fedcrm.client.score import score_partner

    try:
        with console.status(f"scoring with {run.name}:final …"):
            result = score_partner(config, run, out, explain=explain, steps=explain_steps)
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"[green]scored {result.rows} customers[/] with model {result.model_version} → {result.path}")
    if result.n_excluded:
        console.print(f"  {result.n_excluded} customer(s) left out: their consent does not cover the task's purpose")
    if result.explain_gap is not None:
        how = f"Captum, {explain_steps} steps" if explain_steps else "exact"
        console.print(f"  top {explain} reasons per customer (integrated gradients, {how}; largest completeness "
                      f"gap {result.explain_gap:.2g} logit)")
    console.print(f"  recorded in the consent ledger as job {result.job_id} (stage 'score')")


def register(app: typer.Typer) -> None:
    """Add ``score`` to the ``fedcrm client`` command group (once, however often called)."""
    if not any(c.name == "score" for c in app.registered_commands):
        app.command("score")(score)
