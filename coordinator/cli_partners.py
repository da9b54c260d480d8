"""`fedcrm coordinator partners …`: register, list and remove partners' SuperNode keys."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedcrm.errors import FedcrmError

app = typer.Typer(no_args_is_help=True, help="Partner node keys: register with the SuperLink, list, remove.")
console = Console()

RegistryOpt = typer.Option(Path("partners.json"), "--registry", help="The operator's partner registry file.")
SuperlinkOpt = typer.Option(..., "--superlink", help="The SuperLink's HOST:PORT (TLS).")
CaOpt = typer.Option(..., "--root-certificates", help="The deployment CA certificate (ca.pem).")


@app.command("add")
def add(
    name: str = typer.Argument(..., help="The partner's name (as in its partner config)."),
    public_key: Path = typer.Argument(..., help="The partner's node.key.pub (OpenSSH EC public key)."),
    superlink: str = SuperlinkOpt,
    root_certificates: Path = CaOpt,
    registry: Path = RegistryOpt,
) -> None:
    """Register a partner's node public key with the SuperLink (`flwr supernode register`) and record it."""
    from fedcrm.coordinator.partners import add_partner

    try:
        entry = add_partner(name, public_key, superlink, root_certificates, registry)
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"[green]partner {entry.name} registered[/]: node {entry.node_id}, key {entry.fingerprint}")
    console.print("  compare this fingerprint with the partner (by phone, not by the channel the key came over)")


@app.command("list")
def list_partners(
    registry: Path = RegistryOpt,
    superlink: str = typer.Option(None, "--superlink", help="Also show each node's live status from this SuperLink."),
    root_certificates: Path = typer.Option(None, "--root-certificates", help="CA certificate (with --superlink)."),
) -> None:
    """List registered partners: name, key fingerprint, node id, and (with --superlink) whether it is online."""
    from fedcrm.coordinator.partners import live_nodes, read_registry

    try:
        entries = read_registry(registry)
        live = {}
        if superlink:
            if root_certificates is None:
                raise typer.BadParameter("--superlink needs --root-certificates")
            live = live_nodes(superlink, root_certificates)
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    table = Table(title=f"Partners in {registry}")
    for column in ("partner", "node key fingerprint", "node id", "registered", *(["status", "online since"]
                                                                               if superlink else [])):
        table.add_column(column)
    for entry in entries.values():
        row = [entry.name, entry.fingerprint, entry.node_id, entry.added_at]
        if superlink:
            node = live.get(entry.node_id)
            row += [node["status"], node.get("online-at", "N/A")] if node else ["not on SuperLink", "—"]
        table.add_row(*row)
    console.print(table)
    if not entries:
        console.print("no partners registered: `fedcrm coordinator partners add NAME node.key.pub --superlink …`")


@app.command("remove")
def remove(
    name: str = typer.Argument(..., help="The partner to remove."),
    superlink: str = SuperlinkOpt,
    root_certificates: Path = CaOpt,
    registry: Path = RegistryOpt,
) -> None:
    """Unregister a partner's node from the SuperLink (it is refused from now on) and drop it from the registry."""
    from fedcrm.coordinator.partners import remove_partner

    try:
        entry = remove_partner(name, superlink, root_certificates, registry)
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"partner {entry.name} removed: node {entry.node_id}, key {entry.fingerprint} no longer admitted")


def register(parent: typer.Typer) -> None:
    """Add the ``partners`` group to ``fedcrm coordinator`` (once, however often called)."""
    if not any(g.name == "partners" for g in parent.registered_groups):
        parent.add_typer(app, name="partners")
