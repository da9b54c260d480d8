"""Ingestion of a transaction-level export (one row per purchase) into one row per customer.

The export is read in chunks (``iter_raw_chunks``) and every cell is parsed with the same
rules and rejects semantics as customer-level ingestion (``parse_column``: line, column,
reason). The kept purchases are aggregated per customer with ``fedcrm.client.transactions``
for the partner's observation date:

- features come only from purchases on or before ``transactions.observation_end`` (the
  calibration period); customers whose first purchase is later are not in the table;
- when ``transactions.label_window_end`` is set, the label is *any purchase in
  (observation_end, label_window_end]* (the purchase-propensity target).

For a transaction-level partner the ``[columns]`` table describes the per-customer table
this module derives: the export's customer-id column, and one entry per derived summary
(the entry's name is a name from :data:`DERIVED_FEATURES`, ``feature`` the task feature it
feeds, ``category`` its data category, optional ``value_map``/``generalise``), plus the
derived label :data:`DERIVED_LABEL`. The export's date, amount and quantity columns are
named in ``[transactions]``. Nothing data-set specific lives here.

Outputs are those of customer-level ingestion (``customers.parquet``, ``id_map.parquet``,
``rejects.csv``) plus a pseudonymised purchase table (``transactions.parquet``: subject,
date, amount, quantity) for local analytics. All-or-nothing: files are written to
temporary names and renamed only when the reject fraction is within the limit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedcrm.client.config import ColumnSpec, PartnerConfig
from fedcrm.client.ingest import (
    CUSTOMERS_FILE,
    ID_MAP_FILE,
    LABEL,
    REJECTS_FILE,
    SUBJECT,
    IngestReport,
    Reject,
    check_reject_fraction,
    iter_raw_chunks,
    load_table,
    parse_column,
    write_private_parquet,
    write_rejects,
)
from fedcrm.client.pseudonymise import load_key, pseudonymise_series
from fedcrm.client.transactions import holdout_summary, summarise_transactions
from fedcrm.errors import DataValidationError
from fedcrm.logging import get_logger

log = get_logger(__name__)

TRANSACTIONS_FILE = "transactions.parquet"

#: Columns of the pseudonymised purchase table kept for local analytics.
TX_DATE, TX_AMOUNT, TX_QUANTITY = "date", "amount", "quantity"

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

#: Derived per-customer summaries a partner config may map to task features (see module docstring).
DERIVED_FEATURES: dict[str, str] = {
    "frequency": "repeat purchase days in the calibration period (distinct purchase days - 1)",
    "recency": "time from first to last purchase day (time unit)",
    "T": "time from first purchase day to observation_end (time unit)",
    "monetary_value": "mean spend per repeat purchase day (0 without a repeat)",
    "purchase_days": "distinct purchase days",
    "transactions": "purchase rows",
    "total_spend": "sum of amounts",
    "average_spend": "spend per purchase day",
    "total_quantity": "sum of quantities (needs transactions.quantity)",
    "days_since_first": "days from first purchase to observation_end",
    "days_since_last": "days from last purchase to observation_end",
    "mean_gap_days": "mean days between purchase days (missing with one purchase day)",
    "first_purchase_weekday": f"weekday of the first purchase ({', '.join(WEEKDAYS)})",
    "first_purchase_month": f"calendar month of the first purchase ({', '.join(MONTHS)})",
}
#: The derived label: any purchase in (observation_end, label_window_end].
DERIVED_LABEL = "purchased_in_label_window"

# Internal names of the parsed purchase frame (prefixed: cannot clash with a partner's columns).
_CID, _DATE, _AMT, _QTY = "_cid", "_date", "_amount", "_quantity"


@dataclass
class CustomerTable:
    """Everything transaction ingestion derives, before it is written."""

    customers: pd.DataFrame
    id_map: pd.DataFrame
    transactions: pd.DataFrame
    report: IngestReport


def _raw_specs(config: PartnerConfig) -> dict[str, tuple[str, ColumnSpec]]:
    """Export column → (internal name, parse spec) for the purchase columns."""
    tx = config.transactions
    assert tx is not None
    id_col = config.customer_id_column
    specs = {
        id_col: (_CID, config.columns[id_col]),
        tx.date: (_DATE, ColumnSpec(role="ignore", type="date", required=True)),
        tx.amount: (_AMT, ColumnSpec(role="ignore", type="numeric", required=True)),
    }
    if tx.quantity:
        specs[tx.quantity] = (_QTY, ColumnSpec(role="ignore", type="numeric", required=True))
    return specs


def check_derived_columns(config: PartnerConfig) -> None:
    """Every non-id entry of ``[columns]`` must name a derived summary or the derived label."""
    tx = config.transactions
    if tx is None:
        raise DataValidationError(f"{config.config_path}: source.level = 'transaction' needs a [transactions] table")
    for name, spec in config.columns.items():
        if spec.role == "customer_id":
            continue
        if spec.role == "label":
            if name != DERIVED_LABEL:
                raise DataValidationError(
                    f"{config.config_path}: [columns.{name}]: the label of a transaction-level partner is derived; "
                    f"name it '{DERIVED_LABEL}'"
                )
            if tx.label_window_end is None:
                raise DataValidationError(
                    f"{config.config_path}: [columns.{name}] needs transactions.label_window_end to define the label"
                )
            continue
        if spec.role in ("feature", "quasi_identifier") and name not in DERIVED_FEATURES:
            raise DataValidationError(
                f"{config.config_path}: [columns.{name}] is not a derived summary; known: {sorted(DERIVED_FEATURES)}"
            )
        if name == "total_quantity" and not tx.quantity:
            raise DataValidationError(f"{config.config_path}: [columns.{name}] needs transactions.quantity")


def read_purchases(
    config: PartnerConfig, report: IngestReport, on_chunk: Callable[[int], None] | None = None
) -> pd.DataFrame:
    """All parseable purchase rows (internal column names); problems go to ``report.rejects``."""
    specs = _raw_specs(config)
    source = config.resolve(config.source.path)
    parts: list[pd.DataFrame] = []
    for chunk in iter_raw_chunks(config, source, report):
        report.rows_read += len(chunk)
        missing = [c for c in specs if c not in chunk.columns]
        if missing:
            raise DataValidationError(
                f"{source}: column(s) {missing} named in {config.config_path} are not in the export "
                f"(found {[c for c in chunk.columns if c != '__line__']})"
            )
        lines = chunk["__line__"]
        rejects: list[Reject] = []
        parsed = pd.DataFrame(index=chunk.index)
        for column, (internal, spec) in specs.items():
            values = chunk[column].astype("string").fillna("")
            parsed[internal] = parse_column(column, values, spec, config, lines, rejects)
        parsed["__line__"] = lines
        report.rejects.extend(rejects)
        keep = ~lines.isin({r.line for r in rejects})
        parts.append(parsed[keep])
        if on_chunk:
            on_chunk(len(chunk))
    purchases = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*specs, "__line__"])
    start = config.transactions.observation_start if config.transactions else None
    if start is not None:
        purchases = purchases[purchases[_DATE] >= pd.Timestamp(start)].reset_index(drop=True)
    return purchases


def derive_customers(purchases: pd.DataFrame, config: PartnerConfig) -> pd.DataFrame:
    """One row per customer (index: raw customer id) with every derived summary and the label."""
    tx = config.transactions
    assert tx is not None
    quantity = _QTY if _QTY in purchases else None
    summary = summarise_transactions(
        purchases, customer=_CID, date=_DATE, amount=_AMT, quantity=quantity,
        observation_end=tx.observation_end, time_unit=tx.time_unit,
    )
    first = summary["first_purchase"]
    summary["first_purchase_weekday"] = first.dt.dayofweek.map(dict(enumerate(WEEKDAYS))).astype("string")
    summary["first_purchase_month"] = first.dt.month.map(dict(enumerate(MONTHS, start=1))).astype("string")
    if tx.label_window_end is not None:
        label = holdout_summary(
            purchases, tx.observation_end, tx.label_window_end, customer=_CID, date=_DATE
        )["holdout_any"]
        summary[DERIVED_LABEL] = label.reindex(summary.index).fillna(False).astype(bool)
    return summary


def _feature_values(values: pd.Series, spec: ColumnSpec) -> pd.Series:
    """Apply the config's local → task value map and generalisation to one derived column."""
    if spec.generalise is not None:
        labels = spec.generalise.labels or [
            f"{lo:g}-{hi:g}" for lo, hi in zip(spec.generalise.bins[:-1], spec.generalise.bins[1:], strict=True)
        ]
        return pd.cut(values.astype("float64"), bins=spec.generalise.bins, labels=labels, right=False).astype("string")
    if spec.type == "categorical":
        return values.astype("string").map(lambda v: spec.value_map.get(v, v) if isinstance(v, str) else v).astype("string")
    if spec.type == "boolean":
        return values.astype("float64")
    return values.astype("float64")


def build_customer_table(
    config: PartnerConfig,
    key: bytes,
    *,
    report: IngestReport | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> CustomerTable:
    """Read, parse, aggregate and pseudonymise; nothing is written (see :func:`ingest_transactions`).

    Raises ``RejectFractionExceeded`` above the config's reject fraction; ``report`` (when
    given) holds the rejects either way.
    """
    check_derived_columns(config)
    report = report if report is not None else IngestReport(source=config.resolve(config.source.path))
    purchases = read_purchases(config, report, on_chunk)
    report.rows_kept = len(purchases)
    check_reject_fraction(report, config, f"the rejects file ({REJECTS_FILE})")
    if purchases.empty:
        raise DataValidationError(f"{report.source}: no valid purchase rows")
    derived = derive_customers(purchases, config)
    raw_ids = pd.Series(derived.index.astype(str), dtype="string")
    subjects = pseudonymise_series(raw_ids, key)
    out = pd.DataFrame({SUBJECT: subjects.to_numpy()})
    for feature, column in config.feature_columns().items():
        out[feature] = _feature_values(derived[column], config.columns[column]).to_numpy()
    if config.label_column:
        out[LABEL] = derived[DERIVED_LABEL].astype("int8").to_numpy()
    id_map = pd.DataFrame({SUBJECT: subjects.to_numpy(), "customer_id": raw_ids.to_numpy()})
    # The purchase table for analytics: every kept purchase, keyed by pseudonym only.
    subject_of = dict(zip(raw_ids, subjects, strict=True))
    known = purchases[_CID].isin(subject_of.keys())  # purchases of customers first seen after observation_end
    tx_table = pd.DataFrame({
        SUBJECT: purchases.loc[known, _CID].map(subject_of).astype("string").to_numpy(),
        TX_DATE: purchases.loc[known, _DATE].to_numpy(),
        TX_AMOUNT: purchases.loc[known, _AMT].astype("float64").to_numpy(),
        TX_QUANTITY: (purchases.loc[known, _QTY].astype("float64") if _QTY in purchases
                      else pd.Series(np.nan, index=purchases.index[known])).to_numpy(),
    })
    return CustomerTable(out, id_map, tx_table, report)


def ingest_transactions(
    config: PartnerConfig, *, out_dir: Path | None = None, on_chunk: Callable[[int], None] | None = None
) -> IngestReport:
    """Ingest a transaction-level export into ``out_dir`` (default: the partner's work dir).

    All-or-nothing like :func:`fedcrm.client.ingest.ingest`; the rejects file is written either way.
    """
    key = load_key(config.key_path)  # refuse before touching customer data
    out_dir = out_dir or config.work_path
    out_dir.mkdir(parents=True, exist_ok=True)
    report = IngestReport(source=config.resolve(config.source.path))
    try:
        table = build_customer_table(config, key, report=report, on_chunk=on_chunk)
    finally:
        # The rejects file is written even when ingestion fails, so the team can see why.
        write_rejects(report.rejects, out_dir / REJECTS_FILE)
    report.outputs["rejects"] = out_dir / REJECTS_FILE
    outputs = {
        "customers": (CUSTOMERS_FILE, table.customers),
        "id_map": (ID_MAP_FILE, table.id_map),
        "transactions": (TRANSACTIONS_FILE, table.transactions),
    }
    tmps = [(out_dir / f".{filename}.tmp", out_dir / filename, name, frame)
            for name, (filename, frame) in outputs.items()]
    try:
        for tmp, _, _, frame in tmps:
            write_private_parquet(frame, tmp)  # 0600 from the first byte: the id map holds raw ids
        for tmp, final, name, _ in tmps:
            os.replace(tmp, final)
            report.outputs[name] = final
    except BaseException:
        for tmp, _, _, _ in tmps:
            tmp.unlink(missing_ok=True)
        raise
    log.info("ingested transactions", extra={"rows_read": report.rows_read, "rows_kept": report.rows_kept,
                                             "rows_rejected": report.rows_rejected,
                                             "customers": len(table.customers)})
    return report


def load_transactions(config: PartnerConfig) -> pd.DataFrame:
    """The pseudonymised purchase table (ingesting first if it is missing or stale)."""
    return load_table(config, TRANSACTIONS_FILE)


def customer_rows(config: PartnerConfig) -> pd.DataFrame:
    """Per-customer rows of a transaction export under a throw-away key (for neutral evaluation only).

    Nothing is written and no identity survives: the pseudonyms cannot be linked to anything.
    """
    import secrets  # noqa: PLC0415

    return build_customer_table(config, secrets.token_bytes(32)).customers
