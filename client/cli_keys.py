"""`fedcrm client erase` and `fedcrm client rotate-key`: the two operations that change who a pseudonym is."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedcrm.errors import FedcrmError

__all__ = ["register"]


def erase(
    config: Annotated[Path, typer.Option("--config", "-c", help="The partner config file (TOML or YAML).")],
    customer_id: Annotated[str, typer.Option("--customer-id", help="The customer's own (raw) id; pseudonymised here.")],
    request_id: Annotated[str, typer.Option("--request-id", help="Your reference of the erasure request.")] = "client-cli",
) -> None:
    """Erase a customer: logged in the consent ledger, then removed from the ingested tables and id map.

    The ledger keeps only what proves the erasure (which receipts lost their subject, what
    remains of each subject set, a suppression hash): the customer is never gated in again
    under this key, even if a later export still lists them.
    """
    from fedcrm.client.cli import console, fail  # noqa: PLC0415 (cli imports this module)
    from fedcrm.client.config import load_partner_config  # noqa: PLC0415
    from fedcrm.client.erase import erase_customer  # noqa: PLC0415

    try:
        cfg = load_partner_config(config)
        done = erase_customer(cfg, customer_id, request_id=request_id)
    except FedcrmError as exc:
        raise fail(exc) from exc
    table = Table(title=f"Customer erased (request {request_id})", show_header=False)
    table.add_row("erasure entry", f"#{done.ledger.index} (signed head size {done.ledger.checkpoint.size})")
    table.add_row("consent receipts emptied", str(done.ledger.payloads))
    table.add_row("usage subject sets updated", str(done.ledger.subject_sets))
    table.add_row("rotation mappings removed", str(done.ledger.rotation_rows))
    for name, rows in done.rows_removed.items():
        table.add_row(f"rows removed from {name}", str(rows))
    console.print(table)


def rotate_key(
    config: Annotated[Path, typer.Option("--config", "-c", help="The partner config file (TOML or YAML).")],
) -> None:
    """Rotate the pseudonymisation key; the old -> new mapping is logged so earlier receipts stay in force."""
    from fedcrm.client.cli import console, fail  # noqa: PLC0415
    from fedcrm.client.config import load_partner_config  # noqa: PLC0415
    from fedcrm.client.keys import rotate_key as run_rotation  # noqa: PLC0415

    try:
        cfg = load_partner_config(config)
        done = run_rotation(cfg)
    except FedcrmError as exc:
        raise fail(exc) from exc
    console.print(f"[green]key rotated[/] {done.old_key_id} -> {done.new_key_id}: {done.mapped} customers mapped"
                  + (f" (ledger size {done.checkpoint.size})" if done.checkpoint else " (rotation was logged already)"))
    console.print(f"  old key kept as {done.retired_key} (mode 0600): destroy it once your backups hold the new key")
    console.print("  ingested tables removed: the next command re-ingests under the new key")
    if done.orphaned:
        console.print(f"[bold red]warning:[/] {sum(done.orphaned.values())} receipt(s) name customers not in the "
                      f"ingested table (key ids {', '.join(sorted(done.orphaned))}); they stay under the old key")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``erase`` and ``rotate-key`` to the ``client`` app."""
    app.command("erase")(erase)
    app.command("rotate-key")(rotate_key)
