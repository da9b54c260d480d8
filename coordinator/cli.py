"""`fedcrm coordinator …`: the operator's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcrm.errors import FedcrmError

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command()
def run(
    partner: list[Path] = typer.Option(None, "--partner", "-p", help="A partner config path (repeat per partner)."),
    config: Path = typer.Option(None, "--config", help="Run config TOML (settings under a run table)."),
    task: Path = typer.Option(None, help="Task-schema file (overrides the run config)."),
    rounds: int = typer.Option(None, help="Number of training rounds."),
    aggregation: str = typer.Option(None, help="'secagg' (default) or 'plain' (comparison only)."),
    strategy: str = typer.Option(None, help="fedavg | fedprox | fedadam | fedyogi | fedavgm"),
    architecture: str = typer.Option(None, help="mlp | logistic"),
    seed: int = typer.Option(None),
    run_id: str = typer.Option(None, help="Run id (default: time stamp + random suffix)."),
    runs_dir: Path = typer.Option(None, help="Where run directories go (default: FEDCRM_RUNS_DIR or ./runs)."),
    superlink: str = typer.Option(None, "--superlink", help="HOST:PORT of a SuperLink: run on the deployment engine."),
    partners: int = typer.Option(None, "--partners", help="With --superlink: how many partner SuperNodes join."),
    root_certificates: Path = typer.Option(None, "--root-certificates", help="With --superlink: the deployment CA."),
    insecure: bool = typer.Option(False, "--insecure", help="With --superlink: plain HTTP (loopback tests only)."),
    min_partners: int = typer.Option(None, "--min-partners",
                                     help="Fewest partners a round may complete with (default: all)."),
    stage_timeout: float = typer.Option(None, "--stage-timeout", help="Longest wait for replies at one stage (s)."),
    registry: str = typer.Option(None, "--registry", envvar="FEDCRM_REGISTRY_URL",
                                 help="Registry database URL (default: registry.db next to the runs directory)."),
) -> None:
    """Train a federated model (simulation, or a real deployment with --superlink), SecAgg+ on by default."""
    from fedcrm.coordinator.link_security import tls_choice
    from fedcrm.coordinator.run_config import load_run_config
    from fedcrm.faults import check_fault_for_run

    overrides: dict[str, Any] = {"task": task, "rounds": rounds, "aggregation": aggregation, "strategy": strategy,
                                 "architecture": architecture, "seed": seed, "run_id": run_id,
                                 "min_partners": min_partners, "stage_timeout": stage_timeout}
    try:
        cfg = load_run_config(config, overrides)
        check_fault_for_run(cfg.aggregation)  # a malformed test fault spec is refused before anything else
        if partner and not superlink:  # every partner's problems in one message, before Flower starts
            from fedcrm.coordinator.check import require_preflight

            require_preflight(cfg.task, partner, dp=cfg.dp)
        result = _run_with_progress(cfg, partner or [], runs_dir, superlink, partners,
                                    root_certificates=tls_choice(superlink, root_certificates, insecure))
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    _index(result.run_dir, registry)
    _report(result)


@app.command()
def resume(
    run_dir: Path = typer.Argument(..., help="The run directory of a killed or failed run."),
    partner: list[Path] = typer.Option(None, "--partner", "-p",
                                       help="Partner config paths (default: those the run started with)."),
    registry: str = typer.Option(None, "--registry", envvar="FEDCRM_REGISTRY_URL",
                                 help="Registry database URL (default: registry.db next to the runs directory)."),
) -> None:
    """Continue a killed or failed run from its newest checkpoint; round numbers continue."""
    from fedcrm.coordinator.checkpoint import latest_round
    from fedcrm.coordinator.run_config import RunPlan

    try:
        if not (run_dir / "plan.json").exists():
            raise FedcrmError(f"{run_dir}: not a run directory (no plan.json)")
        cfg = RunPlan.load(run_dir / "plan.json").config
        done = latest_round(run_dir)
        result = _run_with_progress(cfg, [], None, resume_dir=run_dir, resume_partners=partner or None,
                                    completed=done)
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    _index(result.run_dir, registry)
    _report(result)


def _index(run_dir: Path, registry: str | None) -> None:
    """Index the ended run in the SQL registry; a registry problem is reported, never fails the run."""
    from fedcrm.coordinator.cli_registry import index_quietly

    index_quietly(run_dir, registry, console)


def _report(result: Any) -> None:
    print_rounds(result.rounds)
    if result.interrupted_by:
        console.print(f"[bold red]run {result.run_id} killed by {result.interrupted_by}[/] — {result.error}")
        console.print(f"resume it with: fedcrm coordinator resume {result.run_dir}")
        raise typer.Exit(130 if result.interrupted_by == "SIGINT" else 143)
    if not result.succeeded:
        console.print(f"[bold red]run {result.run_id} {result.outcome}:[/] {result.error}")
        console.print(f"run directory: {result.run_dir}")
        raise typer.Exit(2)
    console.print(f"[green]run {result.run_id} succeeded[/] in {result.wall_s:.1f} s — {result.run_dir}")


def _run_with_progress(cfg: Any, partners: list[Path], runs_dir: Path | None, superlink: str | None = None,
                       num_partners: int | None = None, *, root_certificates: Path | None = None,
                       resume_dir: Path | None = None,
                       resume_partners: list[Path] | None = None, completed: int = 0) -> Any:
    from fedcrm.coordinator.deployment import run_deployment
    from fedcrm.coordinator.runner import resume_federation, run_federation

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("starting Flower simulation", total=cfg.rounds, completed=completed)

        def on_event(event: dict[str, Any]) -> None:
            kind = event["event"]
            if kind == "statistics":
                progress.update(task, description=f"statistics round done ({event['partners']} partners)")
            elif kind == "round_start":
                progress.update(task, description=f"round {event['round']}/{cfg.rounds}: training")
            elif kind == "evaluate":
                auc = event["federated"].get("roc_auc")
                progress.update(task, advance=1, description=f"round {event['round']}: ROC AUC "
                                + (f"{auc:.4f}" if auc is not None else "withheld"))
            elif kind == "dropout":
                names = ", ".join(f"{p} ({why})" for p, why in event["partners"].items())
                progress.console.print(f"[yellow]round {event['round']}, {event['stage']}: missing {names}[/]")

        if resume_dir is not None and (resume_dir / "deployment.json").exists():
            from fedcrm.coordinator.deployment import resume_deployment  # partners rejoin through the SuperLink

            progress.update(task, description="stopping the old Flower run, then resuming")
            return resume_deployment(resume_dir, on_event=on_event)
        if resume_dir is not None:
            return resume_federation(resume_dir, resume_partners, on_event=on_event)
        if superlink:
            progress.update(task, description=f"waiting for {num_partners or 0} partners at {superlink}")
            return run_deployment(cfg, num_partners or len(partners), superlink, runs_dir, on_event=on_event,
                                  root_certificates=root_certificates)
        return run_federation(cfg, partners, runs_dir=runs_dir, on_event=on_event)


def print_rounds(rounds: list[dict[str, Any]]) -> None:
    """Per-round federated metrics as a table."""
    table = Table(title="Federated metrics per round (example-weighted over partners' local hold-outs)")
    for col in ("round", "ROC AUC", "PR AUC", "top-decile lift", "loss", "SecAgg+ stages"):
        table.add_column(col)
    for r in rounds:
        fed = r.get("federated", {})
        table.add_row(str(r["round"]), *(f"{fed[k]:.4f}" if k in fed else "—"
                                         for k in ("roc_auc", "pr_auc", "top_decile_lift", "loss")),
                      f"{len(r.get('secagg_stages', {}))}/4" if r.get("secagg_stages") else "plain")
    console.print(table)


@app.command("runs")
def list_runs_command(runs_dir: Path = typer.Option(Path("runs"), help="Directory of run directories.")) -> None:
    """List runs in the registry."""
    from fedcrm.coordinator.registry import list_runs

    table = Table(title=f"Runs in {runs_dir}")
    for col in ("run id", "status", "rounds completed", "last-round ROC AUC (local hold-outs)", "error"):
        table.add_column(col)
    for r in list_runs(runs_dir):
        status = r["outcome"] if r["outcome"] in ("completed", "running") else f"{r['outcome']} after round {r['after_round']}"
        table.add_row(r["run_id"], status, str(r["rounds"]),
                      f"{r['roc_auc']:.4f}" if r["roc_auc"] is not None else "—", (r["error"] or "")[:80])
    console.print(table)


# `fedcrm coordinator superlink` lives in its own module.
from fedcrm.coordinator import cli_check, cli_partners, cli_superlink  # noqa: E402

cli_superlink.register(app)
cli_check.register(app)
from fedcrm.coordinator import cli_registry, cli_serve  # noqa: E402

cli_registry.register(app)
cli_serve.register(app)
cli_partners.register(app)
from fedcrm.coordinator import cli_analytics  # noqa: E402

cli_analytics.register(app)


@app.command("head")
def head_command(
    run_dir: Path = typer.Option(..., "--run", help="Run directory."),
    partner: str = typer.Option(..., help="Partner name."),
    server_round: int = typer.Option(None, "--round", help="Round (default: the last head received)."),
    out: Path = typer.Option(None, help="Write the signed note here (default: stdout)."),
) -> None:
    """A partner's signed consent-log head as received during a run, for `fedcrm consent verify --trusted-head`."""
    from fedcrm.coordinator.registry import partner_heads

    heads = partner_heads(run_dir, partner)
    if server_round is not None:
        heads = [h for h in heads if h["round"] == server_round]
    if not heads:
        console.print(f"[bold red]error:[/] no head from partner {partner!r} in {run_dir}"
                      + (f" for round {server_round}" if server_round is not None else ""))
        raise typer.Exit(1)
    note = heads[-1]["checkpoint"]
    if out is None:
        print(note, end="" if note.endswith("\n") else "\n")
    else:
        out.write_text(note)
        console.print(f"head of partner {partner}, round {heads[-1]['round']} ({heads[-1]['stage']}) → {out}")
