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
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fedcrm.client.config import ColumnSpec, PartnerConfig
from fedcrm.client.export_reader import LINE_COLUMN, CsvExport, CsvLayout, ReadTally, Reject, shown
from fedcrm.client.holdout import HOLDOUT_BUCKET, buckets
from fedcrm.client.pseudonymise import load_key, pseudonymise_series
from fedcrm.client.quality_rules import SpellingMaps, apply_spellings, learn_spellings, quality_rules
from fedcrm.errors import ConfigError, DataValidationError, ExportFormatError, RejectFractionExceeded
from fedcrm.logging import get_logger

log = get_logger(__name__)

SUBJECT = "subject"
LABEL = "label"
CUSTOMERS_FILE = "customers.parquet"
ID_MAP_FILE = "id_map.parquet"
REJECTS_FILE = "rejects.csv"
#: Mode of every file ingestion writes (tables, id map, rejects, their temporary files): owner only.
PRIVATE_MODE = 0o600
#: Integers above this lose precision as 64-bit floats (the table's numeric type).
EXACT_INTEGER_LIMIT = 2**53
#: Roles whose values may hold line breaks when ``source.multiline_values`` is set (never parsed).
FREE_TEXT_ROLES = ("direct_identifier", "ignore")

__all__ = ["Reject"]  # re-exported: transaction ingestion and quality import it from here


@dataclass
class IngestReport:
    """What ingestion read, kept and rejected."""

    source: Path
    rows_read: int = 0
    rows_kept: int = 0
    rejects: list[Reject] = field(default_factory=list)
    filled_gaps: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    tally: ReadTally = field(default_factory=ReadTally)

    @property
    def rows_rejected(self) -> int:
        """Number of distinct rows with at least one problem."""
        return len({r.line for r in self.rejects})


# --- reading ------------------------------------------------------------------------------


def csv_layout(config: PartnerConfig) -> CsvLayout:
    """How the export reader splits this partner's CSV (from ``[source]`` and ``[columns]``)."""
    src = config.source
    free_text = frozenset(name for name, spec in config.columns.items()
                          if spec.role in FREE_TEXT_ROLES or (spec.role in ("feature", "quasi_identifier")
                                                              and spec.type == "string"))
    return CsvLayout(
        delimiter=src.delimiter, encoding=src.encoding, header=src.header,
        column_names=tuple(src.column_names) if src.column_names else None,
        whitespace_delimited=src.whitespace_delimited, multiline_values=src.multiline_values,
        multiline_columns=free_text, chunk_rows=src.chunk_rows, config_path=config.config_path,
    )


def iter_raw_chunks(
    config: PartnerConfig, path: Path | None = None, report: IngestReport | None = None
) -> Iterator[pd.DataFrame]:
    """Yield the export as string-typed chunks with a ``__line__`` column (physical file line; Parquet: row).

    Records the reader rejects before parsing (wrong field count, a quoted value spanning lines)
    go to ``report.rejects`` and count in ``report.rows_read``; without a report they are
    collected and dropped. Unreadable files raise :class:`ExportFormatError` naming file and line.
    """
    src = config.source
    path = path or config.resolve(src.path)
    if not path.exists():
        raise DataValidationError(f"{path}: export file not found")
    if src.resolved_format == "parquet":
        yield from _parquet_chunks(path, src.chunk_rows)
        return
    sink = report if report is not None else IngestReport(source=path)
    export = CsvExport(path, csv_layout(config), sink.rejects, sink.tally)
    counted = sink.tally.rows
    for chunk in export.chunks():
        sink.rows_read += sink.tally.rows - counted  # rows the reader rejected since the last chunk
        counted = sink.tally.rows
        yield chunk
    sink.rows_read += sink.tally.rows - counted


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ExportFormatError(f"{path}: not a readable Parquet file: {exc}") from None
    names = parquet.schema_arrow.names
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if name.strip() in seen:
            raise ExportFormatError(f"{path}: column '{name.strip()}' appears twice (columns {seen[name.strip()]} "
                                    f"and {position}); every column needs its own name — rename one")
        seen[name.strip()] = position
    if parquet.metadata.num_rows == 0:
        raise ExportFormatError(f"{path}: no data rows")
    offset = 0
    batches = parquet.iter_batches(batch_size=chunk_rows)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            raise ExportFormatError(f"{path}: row {offset + 1} onwards cannot be read from the Parquet file: "
                                    f"{exc}") from None
        if batch is None:
            return
        chunk = batch.to_pandas().astype("string").fillna("")
        chunk[LINE_COLUMN] = np.arange(offset, offset + len(chunk)) + 1  # row number in the file
        offset += len(chunk)
        yield chunk


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
    """Dates in the first matching format, at microsecond resolution (years 1–9999 parse; bounds come after)."""
    text = values.str.strip()
    parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us]")
    for fmt in config.source.date_formats:
        todo = parsed.isna()
        if not todo.any():
            break
        aware = "%z" in fmt or "%Z" in fmt  # offsets may differ row to row: compare in UTC
        found = pd.to_datetime(text[todo], format=fmt, errors="coerce", utc=aware)
        if aware:
            found = found.dt.tz_convert(None)
        parsed[todo] = found.astype("datetime64[us]")
    return parsed


def _date_bounds(spec: ColumnSpec, config: PartnerConfig) -> tuple[date, date]:
    return spec.earliest or config.source.earliest_date, spec.latest or config.source.latest_date


def parse_column(
    name: str, values: pd.Series, spec: ColumnSpec, config: PartnerConfig, lines: pd.Series, rejects: list[Reject]
) -> pd.Series:
    """Parse one string column by its spec; problems are appended to ``rejects``."""
    markers = set(config.source.missing_values)
    missing = _missing_mask(values, markers)

    def reject(mask: pd.Series, reason: Callable[[str], str]) -> None:
        if not mask.any():
            return
        for line, value in zip(lines[mask], values[mask], strict=True):
            text = shown(str(value))
            rejects.append(Reject(int(line), name, text, reason(text)))

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
    if spec.role == "customer_id":
        out = values.str.strip().astype("string")
        # A delimiter, quote or line break inside an id is the mark of a shifted quote, never a real id.
        odd = out.str.contains(_id_breakers(config), regex=True).fillna(False).astype(bool) & ~missing
        reject(odd, lambda v: f"customer id holds a delimiter, quote or line break: '{v}' (an unbalanced quote?)")
        out[missing] = pd.NA
        return out
    if spec.type == "string":
        out = values.str.strip().astype("string")
        out[missing] = pd.NA
        return out
    if spec.type in ("numeric", "integer"):
        out = _parse_number(values, spec, config).astype("float64")
        bad = out.isna() & ~missing
        reject(bad, lambda v: f"not a number: '{v}'")
        infinite = pd.Series(np.isinf(out.to_numpy()), index=out.index)
        reject(infinite, lambda v: f"not a finite number (infinite, or beyond the 64-bit float range): '{v}'")
        finite = out.notna() & ~infinite
        if spec.type == "integer":
            frac = finite & (out != out.round())
            reject(frac, lambda v: f"not an integer: '{v}'")
            finite &= ~frac
        limit = config.source.max_magnitude
        default = (f"the default bound ±{limit:g} (source.max_magnitude; declare min/max in [columns.{name}] "
                   "for other values)")
        if spec.min is not None:
            reject(finite & (out < spec.min), lambda v: f"below minimum {spec.min}: '{v}'")
        else:
            reject(finite & (out < -limit), lambda v: f"below {default}: '{v}'")
        if spec.max is not None:
            reject(finite & (out > spec.max), lambda v: f"above maximum {spec.max}: '{v}'")
        else:
            reject(finite & (out > limit), lambda v: f"above {default}: '{v}'")
        if spec.type == "integer":
            low = spec.min if spec.min is not None else -limit
            high = spec.max if spec.max is not None else limit
            reject(finite & (out >= low) & (out <= high) & (out.abs() > EXACT_INTEGER_LIMIT),
                   lambda v: f"integer beyond ±2^53 (not exact as a 64-bit float): '{v}'")
        out[infinite] = np.nan
        return out
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
        earliest, latest = _date_bounds(spec, config)
        early = out < pd.Timestamp(earliest)
        late = out > pd.Timestamp(latest)
        reject(early, lambda v: f"date before the earliest accepted day {earliest}: '{v}'")
        reject(late, lambda v: f"date after the latest accepted day {latest}: '{v}'")
        out[early | late] = pd.NaT
        return out.astype("datetime64[ns]")
    # categorical
    out = values.str.strip().astype("string")
    broken = out.str.contains(r"[\r\n]", regex=True).fillna(False).astype(bool)
    reject(broken & ~missing, lambda v: f"categorical value holds a line break: '{v}' (an unbalanced quote?)")
    if spec.value_map:
        out = out.replace(spec.value_map)
    out[missing] = pd.NA
    return out


def _id_breakers(config: PartnerConfig) -> str:
    """Regex of characters a customer id may not hold (the delimiter, quotes, line breaks)."""
    chars = {"\r", "\n", '"'}
    if not config.source.whitespace_delimited:
        chars.add(config.source.delimiter)
    return "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"


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
    lines = chunk[LINE_COLUMN]
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
    # Computed once here, so a round never re-hashes every pseudonym to find its hold-out.
    out[HOLDOUT_BUCKET] = buckets(out[SUBJECT].astype(str))
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
    try:
        # Spelling repair needs each column's canonical spelling first: one extra chunked pass.
        spellings = learn_spellings(config, rules) if rules.spelling.action != "report" else SpellingMaps()
        try:
            for chunk in iter_raw_chunks(config, source, report):
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
        check_reject_fraction(report, config, out_dir / REJECTS_FILE)
        if report.rows_kept == 0:
            raise DataValidationError(f"{source}: no valid rows; nothing was written. See {out_dir / REJECTS_FILE}.")
        os.replace(tmp_customers, out_dir / CUSTOMERS_FILE)
        os.replace(tmp_ids, out_dir / ID_MAP_FILE)
    except BaseException:
        # Every failure path, interrupts included: no temporary file (the id map's holds raw ids) survives.
        for tmp in (tmp_customers, tmp_ids):
            tmp.unlink(missing_ok=True)
        raise
    report.outputs.update(customers=out_dir / CUSTOMERS_FILE, id_map=out_dir / ID_MAP_FILE)
    log.info("ingested", extra={"rows_read": report.rows_read, "rows_kept": report.rows_kept,
                                "rows_rejected": report.rows_rejected})
    return report


def check_reject_fraction(report: IngestReport, config: PartnerConfig, rejects_path: Path | str) -> None:
    """Raise :class:`RejectFractionExceeded` (first bad line, counts, limit) above the config's limit."""
    fraction = report.rows_rejected / max(report.rows_read, 1)
    if fraction <= config.source.max_reject_fraction:
        return
    first = min(report.rejects, key=lambda r: r.line)
    where = f"line {first.line}, column '{first.column}'" if first.column else f"line {first.line}"
    raise RejectFractionExceeded(
        f"{report.source}: {where}: {first.reason}. "
        f"{report.rows_rejected} of {report.rows_read} rows rejected ({fraction:.1%}), above the "
        f"limit of {config.source.max_reject_fraction:.1%} set in {config.config_path}; nothing was written. "
        f"See {rejects_path} (line, column, reason)."
    )


def apply_spelling_rule(chunk: pd.DataFrame, spellings: SpellingMaps, action: str,
                        report: IngestReport) -> pd.DataFrame:
    """Apply the ``[quality.spelling]`` rule to a raw chunk: repair spellings, or reject their rows."""
    chunk, rejected = apply_spellings(chunk, spellings, action)
    if not rejected:
        return chunk
    report.rejects.extend(Reject(*r) for r in rejected)
    return chunk[~chunk["__line__"].isin({r[0] for r in rejected})]


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 whatever the umask (replacing a leftover), before any content."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)  # the umask may have narrowed it; never wider than 0600 either way
    finally:
        os.close(fd)


def write_private_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write one table to ``path`` (mode 0600 from the first byte)."""
    create_private(path)
    frame.to_parquet(path, index=False)


def _append(writers: dict[str, pq.ParquetWriter], name: str, path: Path, frame: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if name not in writers:
        create_private(path)  # pyarrow truncates the existing file and keeps its mode
        writers[name] = pq.ParquetWriter(path, table.schema)
    else:
        table = table.cast(writers[name].schema)
    writers[name].write_table(table)


def write_rejects(rejects: list[Reject], path: Path) -> None:
    """Write the rejects file (mode 0600: it quotes customer values): one row per (line, column, problem)."""
    create_private(path)
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


def load_customers_lean(config: PartnerConfig) -> pd.DataFrame:
    """The ingested table, lean: text columns as pandas categories, every row's hold-out bucket.

    What a partner's federated rounds read (``partner_session``). Same staleness rule as
    :func:`load_customers` (missing or older than the export: ingest first). Categorical columns stay dictionary-encoded (a few bytes a row instead of
    a Python string each); a table ingested before the bucket column existed is bucketed here.
    """
    path = config.work_path / CUSTOMERS_FILE
    source = config.resolve(config.source.path)
    if not path.exists() or (source.exists() and source.stat().st_mtime > path.stat().st_mtime):
        ingest(config)
    load_key(config.key_path)
    schema = pq.read_schema(path)
    text = [f.name for f in schema if f.name != SUBJECT and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]
    frame = pq.read_table(path, read_dictionary=text).to_pandas()
    if HOLDOUT_BUCKET not in frame.columns:
        frame[HOLDOUT_BUCKET] = buckets(frame[SUBJECT].astype(str))
    return frame


#: The round table: the ingested customers as one uncompressed Arrow IPC file, memory-mapped by every round.
ROUND_TABLE_FILE = ".customers.arrow"
_ROUND_TABLE_SOURCE = b"fedcrm.source"


def open_customers_mapped(config: PartnerConfig) -> pa.Table:
    """The ingested table as a memory-mapped Arrow table: what a partner's federated rounds gate and encode.

    The Parquet table is decoded once into ``.customers.arrow`` beside it (0600, text columns
    dictionary-encoded, the hold-out bucket added for older tables, one record batch), stamped
    with the Parquet file's mtime and size and rebuilt when they change (re-ingest, erasure,
    key rotation). Every later round maps it: opening costs nothing, and only the pages a
    round touches (the subject column for the gate; the rest when rows are encoded) are read,
    from the page cache, instead of decoding the whole table into memory again. Same
    staleness rule as :func:`load_customers` (missing or older than the export: ingest first).
    """
    path = config.work_path / CUSTOMERS_FILE
    source = config.resolve(config.source.path)
    if not path.exists() or (source.exists() and source.stat().st_mtime > path.stat().st_mtime):
        ingest(config)
    load_key(config.key_path)
    stat = path.stat()
    stamp = f"{stat.st_mtime_ns}:{stat.st_size}".encode()
    mapped = config.work_path / ROUND_TABLE_FILE
    table = _read_mapped(mapped)
    if table is None or (table.schema.metadata or {}).get(_ROUND_TABLE_SOURCE) != stamp:
        schema = pq.read_schema(path)
        text = [f.name for f in schema
                if f.name != SUBJECT and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]
        decoded = pq.read_table(path, read_dictionary=text)
        if HOLDOUT_BUCKET not in decoded.column_names:
            subjects = decoded.column(SUBJECT).to_pandas().astype(str)
            decoded = decoded.append_column(HOLDOUT_BUCKET, pa.array(buckets(subjects), type=pa.uint32()))
        decoded = decoded.combine_chunks()
        decoded = decoded.replace_schema_metadata({**(decoded.schema.metadata or {}), _ROUND_TABLE_SOURCE: stamp})
        tmp = mapped.with_name(f"{ROUND_TABLE_FILE}.tmp")
        try:
            create_private(tmp)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, decoded.schema) as writer:
                writer.write_table(decoded, max_chunksize=max(len(decoded), 1))
            os.replace(tmp, mapped)
        finally:
            tmp.unlink(missing_ok=True)
        del decoded
        table = _read_mapped(mapped)
        assert table is not None
    return table


def _read_mapped(path: Path) -> pa.Table | None:
    """The Arrow IPC file at ``path``, memory-mapped (zero copy); None when missing or unreadable."""
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (FileNotFoundError, pa.ArrowInvalid):
        return None


def read_contacts(config: PartnerConfig) -> pd.DataFrame:
    """The partner's contacts file (``[contacts]``) as text columns ``customer_id, email, phone`` (errors name the file).

    Raw identifiers: read only here, pseudonymised and gated by ``client/federated/overlap.py`` at once.
    """
    spec = config.contacts
    if spec is None:
        raise ConfigError(f"partner {config.name}: no [contacts] section in its config: nothing to intersect")
    path = config.resolve(spec.path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter=spec.delimiter))
    except FileNotFoundError:
        raise ConfigError(f"{path}: contacts file not found ([contacts] path)") from None
    wanted = {"customer_id": spec.customer_id, "email": spec.email, "phone": spec.phone}
    header = set(rows[0]) if rows else set()
    for role, column in wanted.items():
        if column is not None and rows and column not in header:
            raise DataValidationError(f"{path}: column '{column}' ([contacts] {role}) is not in the header")
    frame = pd.DataFrame({role: [r.get(col) or "" for r in rows] if col else [""] * len(rows)
                          for role, col in wanted.items()})
    return frame


def load_id_map(config: PartnerConfig) -> pd.DataFrame:
    """Partner-local pseudonym → own customer id table (never leaves the partner)."""
    load_key(config.key_path)
    return pd.read_parquet(config.work_path / ID_MAP_FILE)
