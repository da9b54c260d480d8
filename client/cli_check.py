"""`fedcrm client check`: the preflight, as a table (or JSON), exit 1 when anything would fail."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()

_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}


def print_report(report, out: Console = console) -> None:  # noqa: ANN001 - a CheckReport
    """One Rich table of a partner's findings, errors first."""
    table = Table(title=f"Preflight of partner {report.partner}" + (f" for task {report.task}" if report.task else ""))
    for col in ("", "check", "column", "finding"):
        table.add_column(col, overflow="fold")
    for f in report.sorted_findings():
        table.add_row(f"[{_STYLE[f.severity]}]{f.severity}[/]", f.kind, escape(f.column or ""), escape(f.message))
    out.print(table)
    verdict = "[green]ready[/]" if report.ok else f"[bold red]{len(report.errors)} problem(s) to fix[/]"
    out.print(f"{report.partner}: {verdict}")


def check(
    config: list[Path] = typer.Option(..., "--config", "-c",
                                      help="The partner config file (TOML or YAML); repeat to check several."),
    task: Path = typer.Option(None, "--task", "-t", help="The task schema to check against (YAML or JSON)."),
    purpose: str = typer.Option(None, help="Purpose to check categories and consent for (default: the task's)."),
    min_count: int = typer.Option(None, "--min-count", help="The run's minimum count, if above the partner's."),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON instead of a table."),
    dp_mode: str = typer.Option("off", "--dp-mode", help="The run's differential privacy: off, record or client."),
    dp_epsilon: float = typer.Option(None, "--dp-epsilon", help="The run's planned ε (record-level DP)."),
    dp_statistics: bool = typer.Option(False, "--dp-statistics",
                                       help="The run asks for a noised statistics round ([run.dp] statistics)."),
) -> None:
    """Check config, export, task mapping, value maps, categories, consent and minimum counts in seconds."""
    from fedcrm.client.check import check_partner, report_json

    if dp_mode not in ("off", "record", "client"):
        raise typer.BadParameter(f"'{dp_mode}' is not one of off, record, client", param_hint="--dp-mode")
    reports = [check_partner(c, task, purpose=purpose, min_count=min_count, dp_mode=dp_mode,
                             planned_epsilon=dp_epsilon, dp_statistics=dp_statistics) for c in config]
    if as_json:
        typer.echo(report_json(reports))
    else:
        for report in reports:
            print_report(report)
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)


def register(app: typer.Typer) -> None:
    """Add ``check`` to the ``fedcrm client`` command group (once)."""
    if not any(c.name == "check" for c in app.registered_commands):
        app.command("check")(check)
