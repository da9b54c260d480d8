"""`fedcrm client approve | approvals | revoke`: the partner decides which tasks it takes part in."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedcrm.errors import FedcrmError

console = Console()

ConfigOpt = typer.Option(..., "--config", "-c", help="The partner config file (TOML or YAML).")


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=1)


def approve(
    config: Path = ConfigOpt,
    task: Path = typer.Option(..., "--task", help="The task-schema file the coordinator proposes (YAML or JSON)."),
    by: str = typer.Option(None, "--by", help="Who approves (recorded; default: the login name)."),
    note: str = typer.Option("", "--note", help="Why, or the review it follows (recorded)."),
) -> None:
    """Approve one exact task schema: its hash and purpose go into the partner's consent ledger."""
    from fedcrm.client.approvals import approve as record_approval
    from fedcrm.client.config import load_partner_config
    from fedcrm.protocol import load_task_schema

    try:
        cfg = load_partner_config(config)
        schema = load_task_schema(task)
        approval, head = record_approval(cfg, schema, approved_by=by, note=note)
    except FedcrmError as exc:
        raise _fail(exc) from exc
    if head is None:
        console.print(f"partner {cfg.name}: task {approval.label} was already approved "
                      f"(ledger entry {approval.index}); nothing recorded")
        return
    console.print(f"[green]partner {cfg.name} approved task {approval.label} for purpose '{approval.purpose}'[/]")
    console.print(f"  ledger entry {approval.index}; signed tree head: size {head.size}")


def approvals(
    config: Path = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the approvals as JSON."),
) -> None:
    """List the task schemas this partner approved (and has not revoked)."""
    from fedcrm.client.approvals import approvals as read_approvals
    from fedcrm.client.approvals import open_partner_ledger
    from fedcrm.client.config import load_partner_config

    try:
        cfg = load_partner_config(config)
        with open_partner_ledger(cfg) as ledger:
            current = list(read_approvals(ledger).values())
    except FedcrmError as exc:
        raise _fail(exc) from exc
    if as_json:
        rows = [{"task": a.task_name, "version": a.task_version, "sha256": a.task_sha256, "purpose": a.purpose,
                 "approved_by": a.approved_by, "note": a.note, "at": a.at.isoformat(), "ledger_index": a.index}
                for a in current]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not current:
        console.print(f"partner {cfg.name} has approved no task: it refuses every order")
        return
    table = Table(title=f"Tasks partner {cfg.name} takes part in")
    for col in ("task", "version", "sha256", "purpose", "approved", "by", "entry"):
        table.add_column(col)
    for a in current:
        table.add_row(a.task_name, a.task_version, a.task_sha256[:16] + "…", a.purpose,
                      a.at.isoformat(timespec="seconds"), a.approved_by, str(a.index))
    console.print(table)


def revoke(
    config: Path = ConfigOpt,
    task_sha256: str = typer.Option(None, "--sha256", help="The task hash, or its first 8+ hex digits."),
    task: Path = typer.Option(None, "--task", help="Or the task-schema file itself."),
    by: str = typer.Option(None, "--by", help="Who revokes (recorded; default: the login name)."),
    note: str = typer.Option("", "--note", help="Why (recorded)."),
) -> None:
    """Revoke an approval: later orders for that task are refused (and recorded)."""
    from fedcrm.client.approvals import revoke as record_revoke
    from fedcrm.client.config import load_partner_config
    from fedcrm.protocol import load_task_schema

    if (task_sha256 is None) == (task is None):
        raise _fail(ValueError("give exactly one of --sha256 and --task"))
    try:
        cfg = load_partner_config(config)
        prefix = task_sha256 if task_sha256 is not None else load_task_schema(task).sha256()
        gone, head = record_revoke(cfg, prefix, approved_by=by, note=note)
    except FedcrmError as exc:
        raise _fail(exc) from exc
    console.print(f"[yellow]partner {cfg.name} revoked its approval of task {gone.label}[/]")
    console.print(f"  signed tree head: size {head.size}")


def register(app: typer.Typer) -> None:
    """Add ``approve``, ``approvals`` and ``revoke`` to the ``fedcrm client`` command group (once)."""
    names = {c.name for c in app.registered_commands}
    for name, command in (("approve", approve), ("approvals", approvals), ("revoke", revoke)):
        if name not in names:
            app.command(name)(command)
