"""`fedcrm certs …`: the deployment's TLS certificates (create, rotate, inspect)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedcrm.errors import FedcrmError

app = typer.Typer(no_args_is_help=True, help="TLS certificates for the SuperLink, SuperNodes and HTTP APIs.")
console = Console()


@app.command("create")
def create(
    out: Path = typer.Argument(..., help="Directory for ca.pem, ca.key, server.pem, server.key, clients/."),
    host: list[str] = typer.Option(..., "--host", help="Address clients use to reach the server (repeat; IP or name)."),
    client: list[str] = typer.Option(None, "--client", help="Issue a client certificate with this name (repeat)."),
    days: int = typer.Option(365, "--days", help="Validity of server and client certificates."),
    ca_days: int = typer.Option(3650, "--ca-days", help="Validity of a new CA."),
    organisation: str = typer.Option("fedcrm", "--organisation", help="Organisation named in the CA."),
    new_ca: bool = typer.Option(False, "--new-ca", help="Replace an existing CA (every partner needs the new ca.pem)."),
) -> None:
    """Create a CA (kept if present) and issue the server certificate for the given addresses.

    Run it again to rotate the server and client certificates under the same CA.
    """
    from fedcrm.certs import issue

    try:
        files = issue(out, host, clients=client or [], organisation=organisation, days=days, ca_days=ca_days,
                      new_ca=new_ca)
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"[green]{'new' if files.new_ca else 'kept existing'} CA[/] {files.ca_cert} "
                  f"(key {files.ca_key}, mode 0600 — keep it offline, it signs every certificate)")
    console.print(f"server certificate {files.server_cert} for {', '.join(host)} (key {files.server_key}, mode 0600)")
    for name, (cert, key) in files.clients.items():
        console.print(f"client certificate {name}: {cert} (key {key}, mode 0600)")
    console.print(f"give partners [bold]{files.ca_cert}[/] only; valid {days} days — `fedcrm certs show {out}`")


@app.command("show")
def show(directory: Path = typer.Argument(..., help="A directory written by `fedcrm certs create`."),
         warn_days: int = typer.Option(30, "--warn-days", help="Exit 1 if a certificate expires within this many days.")
         ) -> None:
    """List each certificate's subject, addresses and expiry; exit 1 if one expires soon or has expired."""
    from fedcrm.certs import certificate_files, describe

    try:
        infos = [describe(p) for p in certificate_files(directory)]
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    if not infos:
        console.print(f"[bold red]error:[/] {directory}: no certificates (run `fedcrm certs create {directory}`)")
        raise typer.Exit(1)
    table = Table(title=f"certificates in {directory}")
    for column in ("file", "subject", "addresses", "expires", "days left", "sha256"):
        table.add_column(column)
    soon = False
    for info in infos:
        left = info.days_left()
        soon |= left < warn_days
        style = "red" if left < warn_days else ""
        table.add_row(info.path.name + (" (CA)" if info.is_ca else ""), info.subject, ", ".join(info.sans) or "—",
                      f"{info.not_after:%Y-%m-%d}", f"[{style}]{left}[/]" if style else str(left),
                      info.fingerprint_sha256[:23] + "…")
    console.print(table)
    if soon:
        console.print(f"[bold red]a certificate expires within {warn_days} days:[/] rotate with `fedcrm certs create`")
        raise typer.Exit(1)
