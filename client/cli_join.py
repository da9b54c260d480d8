"""`fedcrm client join`: take part in a real federated run as a Flower SuperNode."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from fedcrm.errors import FedcrmError

console = Console()


def join(
    config: Path = typer.Option(..., "--config", "-c", help="The partner config file (TOML or YAML)."),
    superlink: str = typer.Option(..., "--superlink", help="The coordinator's SuperLink, HOST:PORT."),
    port: int = typer.Option(None, "--port", help="Port of this SuperNode's local runtime API (default 9094)."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP (loopback tests only)."),
    root_certificates: Path = typer.Option(None, "--root-certificates", help="CA certificate of the SuperLink (TLS)."),
    isolation: str = typer.Option(
        "process", "--isolation",
        help="'process': one long-lived ClientApp worker (default); 'subprocess': Flower's stock "
             "new process per message (slower, for comparison)."),
) -> None:
    """Run this partner's SuperNode in the foreground until the SuperLink ends it or you press Ctrl-C."""
    from fedcrm.client.config import load_partner_config
    from fedcrm.client.join import JoinSettings
    from fedcrm.client.join import join as run_join
    from fedcrm.client.node_auth import refusal_message, refused_by_superlink

    if isolation not in ("process", "subprocess"):
        console.print(f"[bold red]error:[/] --isolation {isolation!r}: expected 'process' or 'subprocess'")
        raise typer.Exit(1)
    settings = JoinSettings(superlink=superlink, port=port, insecure=insecure, root_certificates=root_certificates,
                            isolation=isolation)  # type: ignore[arg-type]
    try:
        name = load_partner_config(config).name
        with console.status(f"partner {name}: connecting to SuperLink {superlink} …") as status:
            def on_line(line: str) -> None:
                status.update(f"partner {name} @ {superlink}: {line[-100:]}")

            code = run_join(config, settings, on_line=on_line)
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    if code == 130:
        console.print(f"partner {name}: stopped (Ctrl-C); the SuperNode has exited")
    elif code != 0 and refused_by_superlink(load_partner_config(config)):
        console.print(f"[bold red]{refusal_message(load_partner_config(config), superlink)}[/]")
    elif code != 0:
        console.print(f"[bold red]partner {name}: SuperNode exited with code {code}[/] (log: work_dir/flwr_home/supernode.log)")
    raise typer.Exit(0 if code in (0, 130) else code)


def register(app: typer.Typer) -> None:
    """Add ``join`` to the ``fedcrm client`` command group (once, however often called)."""
    if not any(c.name == "join" for c in app.registered_commands):
        app.command("join")(join)
