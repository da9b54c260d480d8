"""`fedcrm coordinator check`: every partner's preflight in one table and one message, nothing started."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def check(
    partner: list[str] = typer.Option(..., "--partner", "-p",
                                      help="NAME=CONFIG or CONFIG: a partner config path (repeat per partner)."),
    config: Path = typer.Option(None, "--config", help="Run config TOML (its task is checked)."),
    task: Path = typer.Option(None, help="Task-schema file (overrides the run config)."),
    as_json: bool = typer.Option(False, "--json", help="Print every partner's findings as JSON."),
) -> None:
    """Run each partner's preflight (`fedcrm client check`) and report every partner's problems at once."""
    import json
    from dataclasses import asdict

    from fedcrm.coordinator.check import check_partners, parse_partner_arg, preflight_message
    from fedcrm.coordinator.run_config import load_run_config
    from fedcrm.errors import FedcrmError

    try:
        cfg = load_run_config(config, {"task": task})
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    results = check_partners(cfg.task, [parse_partner_arg(p) for p in partner], dp=cfg.dp)
    message = preflight_message(results)
    if as_json:
        typer.echo(json.dumps({"ok": not message, "task": str(cfg.task),
                               "partners": [asdict(r) | {"config": str(r.config)} for r in results]}, indent=2))
        raise typer.Exit(1 if message else 0)
    table = Table(title=f"Preflight of {len(results)} partner(s) for {cfg.task.name}")
    for col in ("partner", "ready", "customers kept", "errors", "warnings"):
        table.add_column(col)
    for r in results:
        warnings = sum(1 for f in r.findings if f.get("severity") == "warning")
        table.add_row(r.name, "[green]yes[/]" if r.ok else "[bold red]no[/]",
                      "—" if r.customers_kept is None else str(r.customers_kept),
                      str(len(r.errors)) if not r.failure else "check failed", str(warnings))
    console.print(table)
    if message:
        console.print(escape(message))
        raise typer.Exit(1)
    console.print("[green]every partner is ready[/]")


def register(app: typer.Typer) -> None:
    """Add ``check`` to the ``fedcrm coordinator`` command group (once)."""
    if not any(c.name == "check" for c in app.registered_commands):
        app.command("check")(check)
