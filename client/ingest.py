"""Ingestion: the only module that reads a partner's export files.

Reads CSV or Parquet in chunks through the partner's declared schema, parses every
column by its type, applies known-gap rules, pseudonymises the customer id, drops
direct identifiers, and writes one typed, pseudonymised customer table (Parquet) plus
a partner-local id map. Every rejected row goes to a rejects file with line, column and
reason; above the configured reject fraction nothing is written and ingestion stops.
Output files are written to temporary names and renamed only on success, so a failed
ingest never leaves half a table behind.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fedcrm.client.config import ColumnSpec, PartnerConfig
from fedcrm.client.pseudonymise import load_key, pseudonymise_series
from fedcrm.client.quality_rules import SpellingMaps, apply_spellings, learn_spellings, quality_rules
from fedcrm.errors import DataValidationError, RejectFractionExceeded
from fedcrm.logging import get_logger

log = get_logger(__name__)

SUBJECT = "subject"
LABEL = "label"
CUSTOMERS_FILE = "customers.parquet"
ID_MAP_FILE = "id_map.parquet"
REJECTS_FILE = "rejects.csv"


@dataclass(frozen=True)
class Reject:
    """One problem in one row of an export."""

    line: int
    column: str
    value: str
    reason: str


@dataclass
class IngestReport:
    """What ingestion read, kept and rejected."""

    source: Path
    rows_read: int = 0
    rows_kept: int = 0
    rejects: list[Reject] = field(default_factory=list)
    filled_gaps: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def rows_rejected(self) -> int:
        """Number of distinct rows with at least one problem."""
        return len({r.line for r in self.rejects})


# --- reading ------------------------------------------------------------------------------


def iter_raw_chunks(config: PartnerConfig, path: Path | None = None) -> Iterator[pd.DataFrame]:
    """Yield the export as string-typed chunks with a ``__line__`` column (1-based file line)."""
    src = config.source
    path = path or config.resolve(src.path)
    if not path.exists():
        raise DataValidationError(f"{path}: export file not found")
    first_data_line = 2 if src.header else 1
    if src.resolved_format == "parquet":
        parquet = pq.ParquetFile(path)
        offset = 0
        for batch in parquet.iter_batches(batch_size=src.chunk_rows):
            chunk = batch.to_pandas().astype("string").fillna("")
            chunk["__line__"] = np.arange(offset, offset + len(chunk)) + 1  # row number in the file
            offset += len(chunk)
            yield chunk
        return
    reader = pd.read_csv(
        path,
        sep=r"\s+" if src.whitespace_delimited else src.delimiter,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        encoding=src.encoding,
        chunksize=src.chunk_rows,
        header=0 if src.header else None,
        names=src.column_names,
        skipinitialspace=True,
    )
    try:
        for chunk in reader:
            # With one record per line, the data row at index i sits on file line i + first_data_line.
            chunk["__line__"] = chunk.index.to_numpy() + first_data_line
            yield chunk
    except pd.errors.ParserError as exc:
        raise DataValidationError(f"{path}: malformed CSV: {exc}") from exc


# --- parsing one column ---------------------------------------------------------------------


def _missing_mask(values: pd.Series, markers: set[str]) -> pd.Series:
    return values.str.strip().isin(markers)


def _parse_number(values: pd.Series, spec: ColumnSpec, config: PartnerConfig) -> pd.Series:
    text = values.str.strip()
    if config.source.thousands:
        text = text.str.replace(config.source.thousands, "", regex=False)
    if config.source.decimal != ".":
        text = text.str.replace(config.source.decimal, ".", regex=False)
    return pd.to_numeric(text, errors="coerce")


def _parse_date(values: pd.Series, config: PartnerConfig) -> pd.Series:
    text = values.str.strip()
    parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    for fmt in config.source.date_formats:
        todo = parsed.isna()
        if not todo.any():
            break
        parsed[todo] = pd.to_datetime(text[todo], format=fmt, errors="coerce")
    return parsed


def parse_column(
    name: str, values: pd.Series, spec: ColumnSpec, config: PartnerConfig, lines: pd.Series, rejects: list[Reject]
) -> pd.Series:
    """Parse one string column by its spec; problems are appended to ``rejects``."""
    markers = set(config.source.missing_values)
    missing = _missing_mask(values, markers)

    def reject(mask: pd.Series, reason: Callable[[str], str]) -> None:
        for line, value in zip(lines[mask], values[mask], strict=True):
            rejects.append(Reject(int(line), name, str(value), reason(str(value))))

    if (spec.required or spec.role in ("customer_id", "label")) and missing.any():
        reject(missing, lambda v: "missing value")

    if spec.role == "label":
        text = values.str.strip()
        positive = text.isin(spec.positive)
        if spec.negative:
            negative = text.isin(spec.negative)
            reject(~positive & ~negative & ~missing, lambda v: f"label value '{v}' is neither positive nor negative")
        out = positive.astype("float64")
        out[missing] = np.nan
        return out
    if spec.role == "customer_id" or spec.type == "string":
        out = values.str.strip().astype("string")
        out[missing] = pd.NA
        return out
    if spec.type in ("numeric", "integer"):
        out = _parse_number(values, spec, config)
        bad = out.isna() & ~missing
        reject(bad, lambda v: f"not a number: '{v}'")
        if spec.type == "integer":
            frac = out.notna() & (out != out.round())
            reject(frac, lambda v: f"not an integer: '{v}'")
        if spec.min is not None:
            reject(out < spec.min, lambda v: f"below minimum {spec.min}: '{v}'")
        if spec.max is not None:
            reject(out > spec.max, lambda v: f"above maximum {spec.max}: '{v}'")
        return out.astype("float64")
    if spec.type == "boolean":
        text = values.str.strip().str.lower()
        truthy = text.isin([v.lower() for v in spec.true_values])
        falsy = text.isin([v.lower() for v in spec.false_values])
        reject(~truthy & ~falsy & ~missing, lambda v: f"not a boolean: '{v}'")
        out = truthy.astype("float64")
        out[~truthy & ~falsy] = np.nan
        return out
    if spec.type == "date":
        out = _parse_date(values, config)
        reject(out.isna() & ~missing, lambda v: f"date not in formats {config.source.date_formats}: '{v}'")
        return out
    # categorical
    text = values.str.strip()
    out = text.map(lambda v: spec.value_map.get(v, v)).astype("string")
    out[missing] = pd.NA
    return out


def _fill_gaps(chunk: pd.DataFrame, config: PartnerConfig, report: IngestReport) -> pd.DataFrame:
    markers = set(config.source.missing_values)
    for name, spec in config.columns.items():
        if spec.gap is None or name not in chunk:
            continue
        other = chunk[spec.gap.when_column].str.strip()
        condition = _missing_mask(chunk[name], markers) & _equals(other, spec.gap.equals, config)
        if condition.any():
            chunk.loc[condition, name] = str(spec.gap.value)
            report.filled_gaps[name] = report.filled_gaps.get(name, 0) + int(condition.sum())
    return chunk


def _equals(values: pd.Series, target: str | float, config: PartnerConfig) -> pd.Series:
    if isinstance(target, str):
        return values == target
    numbers = pd.to_numeric(values.str.replace(config.source.decimal, ".", regex=False), errors="coerce")
    return numbers == float(target)


def _generalise(values: pd.Series, spec: ColumnSpec) -> pd.Series:
    assert spec.generalise is not None
    labels = spec.generalise.labels or [
        f"{lo:g}-{hi:g}" for lo, hi in zip(spec.generalise.bins[:-1], spec.generalise.bins[1:], strict=True)
    ]
    return pd.cut(values, bins=spec.generalise.bins, labels=labels, right=False).astype("string")


# --- the pipeline ---------------------------------------------------------------------------


def parse_chunk(
    chunk: pd.DataFrame, config: PartnerConfig, key: bytes, report: IngestReport, seen_ids: dict[str, int]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn one raw chunk into (customer rows, id-map rows); problems go to ``report.rejects``."""
    missing_cols = [c for c in config.columns if c not in chunk.columns]
    if missing_cols:
        raise DataValidationError(
            f"{config.resolve(config.source.path)}: column(s) {missing_cols} declared in "
            f"{config.config_path} are not in the export (found {list(chunk.columns[:-1])})"
        )
    chunk = _fill_gaps(chunk, config, report)
    lines = chunk["__line__"]
    rejects: list[Reject] = []
    parsed: dict[str, pd.Series] = {}
    for name, spec in config.columns.items():
        if spec.role in ("direct_identifier", "ignore"):
            continue  # dropped here: never parsed, never stored
        values = parse_column(name, chunk[name].astype("string").fillna(""), spec, config, lines, rejects)
        if spec.generalise is not None:
            values = _generalise(values, spec)
        parsed[name] = values

    id_col = config.customer_id_column
    raw_ids = parsed[id_col]
    for line, raw in zip(lines, raw_ids, strict=True):
        if pd.isna(raw):
            continue
        first = seen_ids.setdefault(raw, int(line))
        if first != int(line):
            rejects.append(Reject(int(line), id_col, str(raw), f"duplicate customer id (first seen on line {first})"))

    bad_lines = {r.line for r in rejects}
    keep = ~lines.isin(bad_lines)
    report.rejects.extend(rejects)

    out = pd.DataFrame(index=chunk.index[keep])
    out[SUBJECT] = pseudonymise_series(raw_ids[keep], key)
    for feature, column in config.feature_columns().items():
        out[feature] = parsed[column][keep]
    if config.label_column:
        out[LABEL] = parsed[config.label_column][keep].astype("int8")
    id_map = pd.DataFrame({SUBJECT: out[SUBJECT], "customer_id": raw_ids[keep].astype("string")})
    return out.reset_index(drop=True), id_map.reset_index(drop=True)


def ingest(
    config: PartnerConfig,
    *,
    out_dir: Path | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> IngestReport:
    """Ingest the partner's export into ``out_dir`` (default: the partner's work dir).

    All-or-nothing: outputs appear only when the reject fraction is within the limit.
    The rejects file is written either way, so the team can see why rows failed.
    """
    if config.source.level == "transaction":
        from fedcrm.client.transaction_ingest import ingest_transactions  # noqa: PLC0415 (it imports this module)

        return ingest_transactions(config, out_dir=out_dir, on_chunk=on_chunk)
    key = load_key(config.key_path)  # refuse before touching customer data
    out_dir = out_dir or config.work_path
    out_dir.mkdir(parents=True, exist_ok=True)
    source = config.resolve(config.source.path)
    report = IngestReport(source=source)
    tmp_customers = out_dir / f".{CUSTOMERS_FILE}.tmp"
    tmp_ids = out_dir / f".{ID_MAP_FILE}.tmp"
    writers: dict[str, pq.ParquetWriter] = {}
    seen_ids: dict[str, int] = {}
    rules = quality_rules(config)
    # Spelling repair needs each column's canonical spelling first: one extra chunked pass.
    spellings = learn_spellings(config, rules) if rules.spelling.action != "report" else SpellingMaps()
    try:
        for chunk in iter_raw_chunks(config, source):
            report.rows_read += len(chunk)
            chunk = apply_spelling_rule(chunk, spellings, rules.spelling.action, report)
            customers, id_map = parse_chunk(chunk, config, key, report, seen_ids)
            report.rows_kept += len(customers)
            _append(writers, "customers", tmp_customers, customers)
            _append(writers, "ids", tmp_ids, id_map)
            if on_chunk:
                on_chunk(len(chunk))
    finally:
        for writer in writers.values():
            writer.close()
    write_rejects(report.rejects, out_dir / REJECTS_FILE)
    report.outputs["rejects"] = out_dir / REJECTS_FILE
    fraction = report.rows_rejected / max(report.rows_read, 1)
    if fraction > config.source.max_reject_fraction:
        for tmp in (tmp_customers, tmp_ids):
            tmp.unlink(missing_ok=True)
        first = min(report.rejects, key=lambda r: r.line)
        raise RejectFractionExceeded(
            f"{source}: line {first.line}, column '{first.column}': {first.reason}. "
            f"{report.rows_rejected} of {report.rows_read} rows rejected ({fraction:.1%}), above the "
            f"limit of {config.source.max_reject_fraction:.1%} set in {config.config_path}; nothing was written. "
            f"See {out_dir / REJECTS_FILE} (line, column, reason)."
        )
    if report.rows_kept == 0:
        raise DataValidationError(f"{source}: no valid rows")
    os.replace(tmp_customers, out_dir / CUSTOMERS_FILE)
    os.replace(tmp_ids, out_dir / ID_MAP_FILE)
    report.outputs.update(customers=out_dir / CUSTOMERS_FILE, id_map=out_dir / ID_MAP_FILE)
    log.info("ingested", extra={"rows_read": report.rows_read, "rows_kept": report.rows_kept,
                                "rows_rejected": report.rows_rejected})
    return report


def apply_spelling_rule(chunk: pd.DataFrame, spellings: SpellingMaps, action: str,
                        report: IngestReport) -> pd.DataFrame:
    """Apply the ``[quality.spelling]`` rule to a raw chunk: repair spellings, or reject their rows."""
    chunk, rejected = apply_spellings(chunk, spellings, action)
    if not rejected:
        return chunk
    report.rejects.extend(Reject(*r) for r in rejected)
    return chunk[~chunk["__line__"].isin({r[0] for r in rejected})]


def _append(writers: dict[str, pq.ParquetWriter], name: str, path: Path, frame: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if name not in writers:
        writers[name] = pq.ParquetWriter(path, table.schema)
    else:
        table = table.cast(writers[name].schema)
    writers[name].write_table(table)


def write_rejects(rejects: list[Reject], path: Path) -> None:
    """Write the rejects file: one row per (line, column, problem)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["line", "column", "value", "reason"])
        for r in sorted(rejects, key=lambda r: (r.line, r.column)):
            writer.writerow([r.line, r.column, r.value, r.reason])


def load_table(config: PartnerConfig, filename: str) -> pd.DataFrame:
    """A table ingestion wrote in the work dir, re-ingesting first if it is missing or older than the export."""
    path = config.work_path / filename
    source = config.resolve(config.source.path)
    if not path.exists() or (source.exists() and source.stat().st_mtime > path.stat().st_mtime):
        ingest(config)
    load_key(config.key_path)
    return pd.read_parquet(path)


def load_customers(config: PartnerConfig) -> pd.DataFrame:
    """The ingested, pseudonymised customer table (ingesting first if it is missing or stale)."""
    return load_table(config, CUSTOMERS_FILE)


def load_id_map(config: PartnerConfig) -> pd.DataFrame:
    """Partner-local pseudonym → own customer id table (never leaves the partner)."""
    load_key(config.key_path)
    return pd.read_parquet(config.work_path / ID_MAP_FILE)
