"""`fedcrm client …`: the partner data team's commands. No command needs code written."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcrm.errors import FedcrmError

app = typer.Typer(no_args_is_help=True)
console = Console()

ConfigOpt = typer.Option(..., "--config", "-c", help="The partner config file (TOML or YAML).", exists=False)


def fail(exc: Exception) -> typer.Exit:
    """Print a fedcrm error and return the exit to raise."""
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=1)


def ledger_origin(name: str) -> str:
    """Origin line of a partner's consent-ledger checkpoints."""
    return f"fedcrm/{name}"


@app.command()
def init(config: Path = ConfigOpt) -> None:
    """Create the partner's secret pseudonymisation key (mode 0600), its consent ledger and its SuperNode key pair."""
    from fedcrm.client.config import load_partner_config
    from fedcrm.client.keys import refuse_new_key_on_used_ledger
    from fedcrm.client.pseudonymise import create_key
    from fedcrm.consent.checkpoint import generate_signing_key
    from fedcrm import node_keys
    from fedcrm.consent.ledger import Ledger

    try:
        cfg = load_partner_config(config)
        refuse_new_key_on_used_ledger(cfg)  # a new key on a used ledger would orphan every receipt
        key_id = create_key(cfg.key_path)
        if not cfg.ledger_key_path.exists():
            generate_signing_key(cfg.ledger_key_path)
        node_key = node_keys.fingerprint(node_keys.load_private_key(cfg.node_key_path).public_key()) \
            if cfg.node_key_path.exists() else node_keys.create_node_key(cfg.node_key_path, comment=f"fedcrm-{cfg.name}")
        ledger = Ledger.open(cfg.ledger_url, signing_key_path=cfg.ledger_key_path, origin=ledger_origin(cfg.name))
        head = ledger.latest_checkpoint()
        ledger.close()
        cfg.work_path.mkdir(parents=True, exist_ok=True)
    except FedcrmError as exc:
        raise fail(exc) from exc
    console.print(f"[green]partner {cfg.name} initialised[/]")
    console.print(f"  pseudonymisation key: {cfg.key_path} (id {key_id}, mode 0600 — never share or commit it)")
    console.print(f"  consent ledger:       {cfg.ledger_url} (size {head.size}, signed by {cfg.ledger_key_path})")
    console.print(f"  node key:             {cfg.node_key_path} ({node_key}) — give the operator only "
                  f"{node_keys.public_path(cfg.node_key_path)}")


@app.command()
def ingest(
    config: Path = ConfigOpt,
    out: Path = typer.Option(None, help="Output directory (default: the partner's work dir)."),
) -> None:
    """Read the export in chunks through the declared schema; write the pseudonymised table and rejects."""
    from fedcrm.client.config import load_partner_config
    from fedcrm.client.ingest import ingest as run_ingest

    try:
        cfg = load_partner_config(config)
        source = cfg.resolve(cfg.source.path)
        with Progress(TextColumn("[bold]ingest[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            task = progress.add_task(source.name, total=None)
            report = run_ingest(cfg, out_dir=out, on_chunk=lambda n: progress.advance(task, n))
    except FedcrmError as exc:
        raise fail(exc) from exc
    table = Table(title=f"Ingested {report.source}")
    table.add_column("rows read")
    table.add_column("rows kept")
    table.add_column("rows rejected")
    table.add_column("gaps filled")
    table.add_row(str(report.rows_read), str(report.rows_kept), str(report.rows_rejected),
                  ", ".join(f"{k}: {v}" for k, v in report.filled_gaps.items()) or "—")
    console.print(table)
    for name, path in report.outputs.items():
        console.print(f"  {name}: {path}")


@app.command()
def status(config: Path = ConfigOpt) -> None:
    """Show the partner's key, ledger, ingested data and egress journal."""
    from fedcrm.client.config import load_partner_config
    from fedcrm.client.ingest import CUSTOMERS_FILE
    from fedcrm.client.keys import orphaned_receipts
    from fedcrm.client.pseudonymise import key_id, load_key
    from fedcrm.consent.ledger import Ledger

    try:
        cfg = load_partner_config(config)
        key = load_key(cfg.key_path)
        ledger = Ledger.open(cfg.ledger_url)
        head = ledger.latest_checkpoint()
        report = ledger.verify()
        orphaned = orphaned_receipts(ledger, key_id(key)) if report.ok else None
        ledger.close()
    except FedcrmError as exc:
        raise fail(exc) from exc
    if not report.ok:
        verdict = f"[bold red]NO[/] ({report.message})"
    elif orphaned:
        # A ledger whose receipts no longer reach any customer does not do its job, however intact.
        verdict = (f"[bold red]NO[/] ({sum(orphaned.values())} receipt(s) under key id(s) {', '.join(sorted(orphaned))} "
                   f"that no logged rotation maps to the current key {key_id(key)}: orphaned. Restore that key "
                   "from backup, then rotate with `fedcrm client rotate-key`)")
    else:
        verdict = "yes"
    table = Table(title=f"Partner {cfg.name}", show_header=False)
    table.add_row("key id", key_id(key))
    table.add_row("key file mode", oct(cfg.key_path.stat().st_mode & 0o777))
    table.add_row("consent ledger", f"{cfg.ledger_url} — size {head.size}, verifies: {verdict}")
    customers = cfg.work_path / CUSTOMERS_FILE
    table.add_row("ingested table", str(customers) if customers.exists() else "not ingested yet")
    journal = cfg.work_path / "egress" / "journal.jsonl"
    sent = len(journal.read_text().splitlines()) if journal.exists() else 0
    table.add_row("messages sent (egress journal)", str(sent))
    console.print(table)
    if verdict != "yes":
        raise typer.Exit(code=1)


@app.command()
def quality(
    config: Path = ConfigOpt,
    out: Path = typer.Option(None, help="Output directory (default: the partner's work dir)."),
    task: Path = typer.Option(None, "--task", "-t", help="Task schema: also find values outside its vocabularies."),
) -> None:
    """Data-quality report of the export: quality.json (local part + exportable part) and quality.html."""
    from fedcrm.client.config import load_partner_config
    from fedcrm.client.pseudonymise import load_key
    from fedcrm.client.quality import assess
    from fedcrm.client.quality_report import write_quality
    from fedcrm.protocol import load_task_schema

    try:
        cfg = load_partner_config(config)
        load_key(cfg.key_path)  # refuse before reading customer data
        report = assess(cfg, task=load_task_schema(task) if task else None)
        json_path, html_path = write_quality(report, out or cfg.work_path)
    except FedcrmError as exc:
        raise fail(exc) from exc
    table = Table(title=f"Data quality of {report.source}")
    for col in ("finding", "column", "rows", "what ingestion does"):
        table.add_column(col)
    for (kind, column), group in sorted(report.groups.items()):
        table.add_row(kind, column, str(group.count), group.action)
    console.print(table)
    console.print(f"rows read {report.rows_read}, reaching training {report.rows_kept}, "
                  f"rejected {report.rows_rejected}")
    console.print(f"  report: {json_path}\n  page:   {html_path}")


@app.command()
def merge(
    merge_config: Path = typer.Option(..., "--merge-config", "-m", help="The merge config file (TOML)."),
) -> None:
    """Join several systems' exports into one customer table (CSV) with a merge report."""
    from fedcrm.client.merge import load_merge_config, write_merge

    try:
        cfg = load_merge_config(merge_config)
        report = write_merge(cfg)  # loads the partner key first: refuses without it
    except FedcrmError as exc:
        raise fail(exc) from exc
    table = Table(title="Unified customer view")
    for col in ("source", "rows", "only in this source", "duplicate ids", "no id"):
        table.add_column(col)
    for name, rows in report.rows.items():
        table.add_row(name, str(rows), str(report.unmatched[name]), str(report.duplicates_within_source[name]),
                      str(report.missing_id[name]))
    console.print(table)
    console.print(report.summary())
    for name, path in report.outputs.items():
        console.print(f"  {name}: {path}")


# Commands kept in their own modules (one job each): approve tasks, join a run, score, analytics.
from fedcrm.client import cli_approve, cli_benefit, cli_check, cli_join, cli_keys, cli_score  # noqa: E402
from fedcrm.client.cli_analytics import register as register_analytics  # noqa: E402

cli_approve.register(app)
cli_benefit.register(app)
cli_check.register(app)
cli_join.register(app)
cli_keys.register(app)
cli_score.register(app)
register_analytics(app)
