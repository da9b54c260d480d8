"""`fedcrm client analytics`: local CRM analytics on the partner's consented data.

Reads the partner's ingested data (for a transaction-level partner the pseudonymised
purchase table, for a customer-level partner the customer table) through the consent
gate for an analytics purpose, so the use is recorded in the partner's ledger like any
other; runs ``analyse_transactions`` / ``analyse_customers`` on the consented frame and
writes the min-count-safe summary (JSON + HTML) and the partner-only per-customer CSV,
keyed by the partner's own customer id (from the id map, which never leaves the partner).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console

from fedcrm.errors import FedcrmError

console = Console()

ANALYTICS_DIR = "analytics"


def _usage(name: str, now: datetime):  # noqa: ANN202
    from fedcrm.consent.gate import UsageContext  # noqa: PLC0415

    return UsageContext(job_id=f"analytics-{now.strftime('%Y%m%dT%H%M%S%fZ')}", partner=name, model_version="",
                        stage="analytics")


def consented_transactions(config, purpose: str, at: datetime, ledger):  # noqa: ANN001, ANN201
    """The gate's view of the partner's purchase table (subject, date, amount, quantity)."""
    from fedcrm.client.transaction_ingest import TX_AMOUNT, TX_DATE, TX_QUANTITY, load_transactions  # noqa: PLC0415
    from fedcrm.consent.gate import gate  # noqa: PLC0415

    from fedcrm.client.vocabulary import vocabulary_for_gate  # noqa: PLC0415

    frame = load_transactions(config)
    category = config.transactions.category
    columns = [TX_DATE, TX_AMOUNT] + ([TX_QUANTITY] if config.transactions.quantity else [])
    return gate(frame, {c: category for c in columns}, purpose, at, columns, ledger=ledger,
                use=_usage(config.name, at), vocabulary=vocabulary_for_gate(config, ledger))


def consented_customers(config, purpose: str, at: datetime, ledger) -> tuple[object, list[str]]:  # noqa: ANN001
    """The gate's view of the customer table, asking only for columns the purpose covers.

    Returns the view and the feature columns left out (their category is outside the purpose).
    """
    from fedcrm.client.ingest import load_customers  # noqa: PLC0415
    from fedcrm.consent.gate import gate  # noqa: PLC0415
    from fedcrm.client.vocabulary import vocabulary_for_gate  # noqa: PLC0415
    from fedcrm.consent.policy import check_category  # noqa: PLC0415

    vocab = vocabulary_for_gate(config, ledger)
    frame = load_customers(config)
    categories = {f: config.columns[c].category or "" for f, c in config.feature_columns().items()}
    wanted = [f for f, cat in categories.items() if cat and check_category(purpose, cat, vocabulary=vocab).allowed]
    left_out = sorted(set(categories) - set(wanted))
    view = gate(frame, categories, purpose, at, wanted, ledger=ledger, use=_usage(config.name, at), vocabulary=vocab)
    return view, left_out



def run_analytics(config_path: Path, purpose: str, out: Path | None, segments: int | None, seed: int) -> dict:
    """Gate, analyse and write; returns a short account of what was done."""
    from fedcrm.client.analytics import analyse_customers, analyse_transactions, write_analytics  # noqa: PLC0415
    from fedcrm.client.config import load_partner_config  # noqa: PLC0415
    from fedcrm.client.ingest import SUBJECT, load_id_map  # noqa: PLC0415
    from fedcrm.client.transaction_ingest import TX_AMOUNT, TX_DATE, TX_QUANTITY  # noqa: PLC0415
    from fedcrm.consent.ledger import Ledger  # noqa: PLC0415

    config = load_partner_config(config_path)
    at = datetime.now(UTC)
    min_count = config.privacy.min_count
    ledger = Ledger.open(config.ledger_url, signing_key_path=config.ledger_key_path, origin=f"fedcrm/{config.name}")
    left_out: list[str] = []
    try:
        if config.source.level == "transaction":
            view = consented_transactions(config, purpose, at, ledger)
        else:
            view, left_out = consented_customers(config, purpose, at, ledger)
    finally:
        ledger.close()
    if config.source.level == "transaction":
        tx = config.transactions
        result = analyse_transactions(
            view, customer=SUBJECT, date=TX_DATE, amount=TX_AMOUNT,
            quantity=TX_QUANTITY if tx.quantity else None, observation_end=tx.observation_end,
            time_unit=tx.time_unit, min_count=min_count, n_segments=segments, seed=seed,
        )
    else:
        types = {f: config.columns[c].type for f, c in config.feature_columns().items()}
        cols = list(view.columns)
        result = analyse_customers(
            view, customer=SUBJECT, numeric=[c for c in cols if types[c] in ("numeric", "integer", "boolean")],
            categorical=[c for c in cols if types[c] in ("categorical", "string")],
            min_count=min_count, n_segments=segments, seed=seed,
        )
    # The per-customer table is for the partner itself: key it by its own customer id, not the pseudonym.
    id_map = load_id_map(config).drop_duplicates(SUBJECT).set_index(SUBJECT)["customer_id"]
    own = config.customer_id_column
    per_customer = result.per_customer.copy()
    per_customer.index = pd.Index(id_map.reindex(per_customer.index.astype(str)).to_numpy(), name=own)
    result.per_customer = per_customer
    result.summary["purpose"] = purpose
    result.summary["consent_as_of"] = at.isoformat()
    out_dir = out or config.work_path / ANALYTICS_DIR
    paths = write_analytics(result, out_dir)
    return {"paths": paths, "customers": len(view.subjects), "excluded": view.n_excluded, "job_id": view.use.job_id,
            "left_out": left_out, "withheld": result.summary.get("withheld_cells", 0)}


def register(app: typer.Typer) -> None:
    """Add ``analytics`` to the ``fedcrm client`` command group."""

    @app.command("analytics")
    def analytics(
        config: Path = typer.Option(..., "--config", "-c", help="The partner config file (TOML or YAML)."),
        purpose: str = typer.Option("customer_segmentation",
                                    help="Consent purpose of this use (customer_segmentation or aggregate_analytics)."),
        out: Path = typer.Option(None, help="Output directory (default: <work dir>/analytics)."),
        segments: int = typer.Option(None, help="Number of k-means segments (default: chosen by silhouette)."),
        seed: int = typer.Option(0, help="Seed of the segmentation."),
    ) -> None:
        """RFM, lifetime value, health, lifecycle and segments on the consented data; min-count-safe summary."""
        try:
            done = run_analytics(config, purpose, out, segments, seed)
        except FedcrmError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(code=1) from exc
        console.print(f"[green]analytics[/] job {done['job_id']}: {done['customers']} customers "
                      f"({done['excluded']} excluded by consent), purpose {purpose}")
        if done["left_out"]:
            console.print(f"  columns outside the purpose, not read: {', '.join(done['left_out'])}")
        console.print(f"  cells withheld under the minimum count: {done['withheld']}")
        for path in done["paths"]:
            console.print(f"  wrote {path}")
