"""`fedcrm up` / `fedcrm down`: the real deployment on one machine, as processes (no containers)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedcrm.errors import FedcrmError

console = Console()
DirOpt = typer.Option(Path(".fedcrm-local"), "--dir", help="Working directory of the stack (state, logs, PIDs).")


def up_command(
    directory: Path = DirOpt,
    run: bool = typer.Option(False, "--run", help="Then run a SecAgg+ federation through it (stack stays up)."),
    rounds: int = typer.Option(2, "--rounds", help="With --run: training rounds."),
) -> None:
    """Start a SuperLink (TLS + node authentication) and three partner SuperNodes on 127.0.0.1."""
    from fedcrm.coordinator.local_stack import STATE_FILE, registry_url, run_on_stack, up

    try:
        with console.status("starting SuperLink, registering partners, waiting for three SuperNodes …"):
            parts = up(directory)
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    table = Table(title=f"fedcrm up: {directory.resolve()} (PIDs in {STATE_FILE})")
    for column in ("part", "pid", "listens on", "log"):
        table.add_column(column)
    for part in parts:
        table.add_row(part.name, str(part.pid), part.listens, part.log)
    console.print(table)
    console.print(f"TLS CA: {directory.resolve() / 'tls' / 'ca.pem'}; registry: {registry_url(directory)} "
                  f"(FEDCRM_REGISTRY_URL); stop everything with `fedcrm down --dir {directory}`")
    if run:
        from fedcrm.coordinator.cli import print_rounds

        with console.status(f"running {rounds} SecAgg+ round(s) through the stack …"):
            try:
                result = run_on_stack(directory, rounds)
            except FedcrmError as exc:
                console.print(f"[bold red]error:[/] {exc}")
                raise typer.Exit(1) from exc
        from fedcrm.coordinator.cli_registry import index_quietly

        print_rounds(result.rounds)
        index_quietly(result.run_dir, registry_url(directory), console)
        if not result.succeeded:
            console.print(f"[bold red]run {result.run_id} failed:[/] {result.error}")
            raise typer.Exit(2)
        console.print(f"[green]run {result.run_id} succeeded[/] in {result.wall_s:.1f} s — {result.run_dir}")


def down_command(directory: Path = DirOpt) -> None:
    """Stop exactly the processes `fedcrm up` started from this directory (and what they started)."""
    from fedcrm.coordinator.local_stack import down, read_stack

    parts = read_stack(directory)
    if not parts:
        console.print(f"nothing to stop: no stack state in {directory}")
        return
    survivors = down(directory)
    if survivors:
        console.print(f"[bold red]processes survived SIGKILL:[/] {sorted(survivors)}")
        raise typer.Exit(1)
    console.print(f"stopped {', '.join(f'{p.name} ({p.pid})' for p in parts)}")


def register(app: typer.Typer) -> None:
    """Add ``up`` and ``down`` to the top-level ``fedcrm`` command (once)."""
    names = {c.name for c in app.registered_commands}
    if "up" not in names:
        app.command("up")(up_command)
    if "down" not in names:
        app.command("down")(down_command)
