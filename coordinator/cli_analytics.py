"""`fedcrm coordinator analytics RUN`: federated segments, profiles and overlap, and the consortium report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from fedcrm.errors import FedcrmError

console = Console()


def _pairs(values: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        a, sep, b = value.partition(":")
        if not sep or not a or not b or a == b:
            raise typer.BadParameter(f"--overlap {value!r}: expected COUNTING:OTHER, two different partner names")
        pairs.append((a, b))
    return pairs


def analytics(
    run: str = typer.Argument(..., help="Run id of the analytics run (its directory under --runs-dir)."),
    partner: list[Path] = typer.Option(None, "--partner", "-p", help="A partner config path (repeat per partner)."),
    task: Path = typer.Option(None, help="Task schema whose encoding is segmented (the partners approve it)."),
    k: str = typer.Option("2,3,4,5,6", help="Candidate numbers of segments, comma-separated."),
    overlap: list[str] = typer.Option(None, "--overlap", help="COUNTING:OTHER partner pair for PSI (repeatable)."),
    seed: int = typer.Option(0),
    restarts: int = typer.Option(1, "--restarts", help="Federated seedings per k (more secure sums, lower inertia)."),
    max_iter: int = typer.Option(30, "--max-iter", help="Most Lloyd steps (secure sums) per seeding."),
    candidates: int = typer.Option(40, "--candidates", help="Seeding candidates per k (one secure sum per seeding)."),
    min_count: int = typer.Option(10, "--min-count", help="Report no number over fewer customers than this."),
    stage_timeout: float = typer.Option(300.0, "--stage-timeout", help="Longest wait at one stage (s)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run directories go."),
    superlink: str = typer.Option(None, "--superlink", help="HOST:PORT of a SuperLink: run on the deployment engine."),
    partners: int = typer.Option(None, "--partners", help="With --superlink: how many partner SuperNodes join."),
    root_certificates: Path = typer.Option(None, "--root-certificates", help="With --superlink: the deployment CA."),
    insecure: bool = typer.Option(False, "--insecure", help="With --superlink: plain HTTP (loopback tests only)."),
    report_only: bool = typer.Option(False, "--report-only", help="Rewrite the report of an existing run."),
) -> None:
    """Federated k-means segments, segment profiles, distributions and customer overlap: HTML + JSON report.

    Every number reaching the coordinator is a SecAgg+ sum over partners or a PSI count a partner
    released over its minimum count; the report shows only aggregates over at least --min-count.
    On the simulation engine with --partner configs, or on the deployment engine with --superlink
    and --partners N (the partners join with `fedcrm client join`; their files stay with them).
    """
    from fedcrm.coordinator.analytics_report import write_report

    try:
        run_dir = runs_dir.resolve() / run
        if not report_only:
            from fedcrm.coordinator.analytics_run import AnalyticsSettings
            from fedcrm.coordinator.link_security import tls_choice
            from fedcrm.coordinator.run_config import RunConfig
            from fedcrm.coordinator.runner import plan_run, run_planned

            ca = tls_choice(superlink, root_certificates, insecure)
            if task is None:
                raise typer.BadParameter("an analytics run needs --task")
            if superlink is None and (not partner or len(partner) < 2):
                raise typer.BadParameter("an analytics run needs at least two --partner (or --superlink and --partners)")
            if superlink is not None and (partner or partners is None or partners < 2):
                raise typer.BadParameter("with --superlink give --partners N (at least 2) and no --partner: "
                                         "partners join the SuperLink with their own configs")
            settings = AnalyticsSettings(k_values=tuple(int(x) for x in k.split(",") if x.strip()),
                                         overlap_pairs=_pairs(overlap or []), seed=seed, report_min_count=min_count,
                                         federated_restarts=restarts, max_iter=max_iter, candidates_per_k=candidates)
            cfg = RunConfig(task=task, run_id=run, stage_timeout=stage_timeout, seed=seed)
            if superlink is not None:
                from fedcrm.coordinator.deployment import run_deployment

                with console.status(f"analytics run {run}: waiting for {partners} partners at {superlink}, "
                                    "secure sums through SecAgg+ …"):
                    result = run_deployment(cfg, partners, superlink, runs_dir, timeout_s=7200.0,
                                            root_certificates=ca, analytics=settings.model_dump(mode="json"))
            else:
                plan = plan_run(cfg, len(partner), runs_dir)
                plan.analytics = settings.model_dump(mode="json")
                path = plan.save()
                with console.status(f"analytics run {run}: secure sums through SecAgg+ …"):
                    result = run_planned(plan, path, [str(p.resolve()) for p in partner], timeout_s=7200.0)
            if not result.succeeded:
                console.print(f"[bold red]analytics run failed:[/] {result.error}")
                raise typer.Exit(1)
            run_dir = result.run_dir
        html = write_report(run_dir)
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"report: {html} (and {html.with_suffix('.json')})")


def register(app: typer.Typer) -> None:
    """Add `analytics` to the coordinator's commands."""
    app.command("analytics")(analytics)
