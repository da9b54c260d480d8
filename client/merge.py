"""The unified customer view: one customer table from several systems' exports.

A partner often holds the same customers in several systems (billing, CRM, web shop),
with ids formatted differently and different columns. A merge config (TOML) lists the
sources — each with its path, delimiter, id column, id normalisation and column
renames — and the rules: records join when their normalised ids are equal, and
optionally, for records left unmatched, when a name- or email-like column is similar
enough (rapidfuzz ratio). Where two sources disagree on a shared column the conflict is
resolved by the configured precedence of sources, or by the most recent record (a date
column), and recorded. The output is a CSV that a normal partner config ingests; the
merge report (JSON + a readable summary) says what matched, what did not, and every
conflict with its resolution.

The sources are read whole (not in chunks): a join needs every key of every source,
and the unified view is built once per export cycle. Only ingestion has a memory cap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rapidfuzz import fuzz, process

from fedcrm.client.config import load_partner_config
from fedcrm.client.normalise import IdNormalisation, normalise_ids
from fedcrm.client.pseudonymise import load_key
from fedcrm.errors import DataValidationError
from fedcrm.config_files import load_config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MergeSource(_Strict):
    """One system's export."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path
    delimiter: str = ","
    encoding: str = "utf-8"
    id_column: str
    id: IdNormalisation = Field(default_factory=IdNormalisation)
    rename: dict[str, str] = Field(default_factory=dict, description="Source column → output column")
    columns: list[str] | None = Field(None, description="Output columns to take from this source (default: all)")
    missing_values: list[str] = Field(default_factory=lambda: ["", "NA", "N/A", "null", "NULL", "NaN"])


class MergeRules(_Strict):
    """How records join and how conflicts resolve."""

    fuzzy_column: str | None = Field(None, description="Output column compared for records the ids leave unmatched")
    fuzzy_threshold: float = Field(92.0, ge=0.0, le=100.0)
    resolution: Literal["precedence", "most_recent"] = "precedence"
    precedence: list[str] | None = Field(None, description="Source names, most trusted first (default: listed order)")
    recent_column: str | None = Field(None, description="Output date column for resolution = 'most_recent'")
    date_formats: list[str] = Field(default_factory=lambda: ["%Y-%m-%d"])
    numeric_tolerance: float = Field(1e-9, ge=0.0, description="Numbers this close are not a conflict")


class MergeConfig(_Strict):
    """The whole merge config file. Relative paths are relative to the file."""

    partner_config: Path = Field(description="The partner config whose key guards the customer data")
    output: Path
    report: Path | None = Field(None, description="Merge report JSON (default: <output stem>.merge.json)")
    id_column: str = "customer_id"
    source_column: str | None = Field(None, description="Optional output column listing each row's sources")
    match: MergeRules = Field(default_factory=MergeRules)
    sources: list[MergeSource] = Field(min_length=2)
    config_path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> MergeConfig:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be distinct, got {names}")
        if self.match.precedence is not None and sorted(self.match.precedence) != sorted(names):
            raise ValueError(f"match.precedence {self.match.precedence} must list every source once: {names}")
        if self.match.resolution == "most_recent" and not self.match.recent_column:
            raise ValueError("match.resolution = 'most_recent' needs match.recent_column")
        return self

    def resolve(self, path: Path) -> Path:
        """A path from the file, resolved against the file's directory."""
        base = self.config_path.parent if self.config_path else Path.cwd()
        return path if path.is_absolute() else base / path

    @property
    def order(self) -> list[str]:
        """Source names, most trusted first."""
        return self.match.precedence or [s.name for s in self.sources]


def load_merge_config(path: Path | str) -> MergeConfig:
    """Read and validate a merge config; errors name the file and key."""
    config = load_config(path, MergeConfig, "merge config")
    return config.model_copy(update={"config_path": Path(path).resolve()})


@dataclass
class MergeReport:
    """What the merge joined, left alone and had to decide."""

    rows: dict[str, int] = field(default_factory=dict)
    duplicates_within_source: dict[str, int] = field(default_factory=dict)
    missing_id: dict[str, int] = field(default_factory=dict)
    customers: int = 0
    matched: int = 0  # customers found in two or more sources
    matched_by_fuzzy: int = 0
    unmatched: dict[str, int] = field(default_factory=dict)  # customers found only in this source
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    resolution: str = ""
    outputs: dict[str, str] = field(default_factory=dict)

    def conflict_counts(self) -> dict[str, int]:
        """Conflicts per output column."""
        out: dict[str, int] = {}
        for c in self.conflicts:
            out[c["column"]] = out.get(c["column"], 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON form (partner-local: it names customers)."""
        return {"exportable": False, "rows": self.rows, "duplicates_within_source": self.duplicates_within_source,
                "missing_id": self.missing_id, "customers": self.customers, "matched": self.matched,
                "matched_by_fuzzy": self.matched_by_fuzzy, "unmatched": self.unmatched,
                "conflicts_per_column": self.conflict_counts(), "resolution": self.resolution,
                "conflicts": self.conflicts, "outputs": self.outputs}

    def summary(self) -> str:
        """A few readable lines."""
        lines = [f"{self.customers} customers from {sum(self.rows.values())} rows in {len(self.rows)} sources",
                 f"matched in two or more sources: {self.matched} ({self.matched_by_fuzzy} by the fuzzy rule)"]
        lines += [f"only in {name}: {n}" for name, n in self.unmatched.items()]
        lines += [f"{name}: {n} duplicate id(s) (first row kept)" for name, n in self.duplicates_within_source.items()
                  if n]
        lines += [f"{name}: {n} row(s) without an id (left out)" for name, n in self.missing_id.items() if n]
        counts = self.conflict_counts()
        lines.append(f"conflicts resolved by {self.resolution}: " +
                     (", ".join(f"{c} {n}" for c, n in counts.items()) if counts else "none"))
        return "\n".join(lines)


def _read_source(src: MergeSource, config: MergeConfig, report: MergeReport) -> pd.DataFrame:
    path = config.resolve(src.path)
    if not path.exists():
        raise DataValidationError(f"{path}: export of source '{src.name}' not found")
    try:
        frame = pd.read_csv(path, sep=src.delimiter, dtype=str, keep_default_na=False, na_filter=False,
                            encoding=src.encoding, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"{path}: malformed CSV: {exc}") from exc
    if src.id_column not in frame:
        raise DataValidationError(f"{path}: id column '{src.id_column}' of source '{src.name}' not in the export "
                                  f"(found {list(frame.columns)})")
    frame.insert(0, "__line__", frame.index + 2)
    frame = frame.rename(columns=src.rename)
    key = normalise_ids(frame[src.id_column if src.id_column not in src.rename else src.rename[src.id_column]],
                        src.id)
    markers = {m.strip() for m in src.missing_values}
    for col in frame.columns[1:]:
        frame[col] = frame[col].where(~frame[col].str.strip().isin(markers), "")
    frame["__key__"] = key.fillna("")
    report.rows[src.name] = len(frame)
    report.missing_id[src.name] = int((frame["__key__"] == "").sum())
    frame = frame[frame["__key__"] != ""]
    dup = frame["__key__"].duplicated()
    report.duplicates_within_source[src.name] = int(dup.sum())
    keep = src.columns if src.columns is not None else [c for c in frame.columns if not c.startswith("__")]
    absent = [c for c in keep if c not in frame]
    if absent:
        raise DataValidationError(f"{path}: column(s) {absent} listed for source '{src.name}' in "
                                  f"{config.config_path} are not in the export (after renames)")
    id_out = src.rename.get(src.id_column, src.id_column)
    keep = [c for c in keep if c != id_out]
    return frame[~dup].set_index("__key__")[["__line__", *keep]]


def _fuzzy_link(frames: dict[str, pd.DataFrame], order: list[str], rules: MergeRules) -> int:
    """Join records the ids left unmatched to a customer of another source by a similar text column.

    A record joins a customer only if its own source does not hold that customer already,
    each customer takes at most one record per source, and the joined customer keeps the
    key of the more trusted source. Returns the number of joins.
    """
    column = rules.fuzzy_column
    joined = 0
    for name in order:  # most trusted source first
        if column not in frames[name]:
            continue
        mine = set(frames[name].index)
        elsewhere = {k for o in order if o != name for k in frames[o].index}
        candidates: dict[str, str] = {}
        owner: dict[str, str] = {}
        for other in order:
            if other == name or column not in frames[other]:
                continue
            for key, value in frames[other][column].items():
                if key not in mine and value.strip() and key not in candidates:
                    candidates[key], owner[key] = value.strip().casefold(), other
        mine_renames: dict[str, str] = {}
        for key, value in frames[name][column].items():
            if key in elsewhere or not value.strip() or not candidates:
                continue  # already joined by id, or nothing to compare with
            best = process.extractOne(value.strip().casefold(), candidates, scorer=fuzz.ratio,
                                      score_cutoff=rules.fuzzy_threshold)
            if best is None:
                continue
            theirs = best[2]
            del candidates[theirs]
            joined += 1
            if order.index(owner[theirs]) < order.index(name):
                mine_renames[key] = theirs
            else:  # the less trusted sources take this source's key
                for other in order:
                    if other != name and theirs in frames[other].index:
                        frames[other] = frames[other].rename(index={theirs: key})
        frames[name] = frames[name].rename(index=mine_renames)
    return joined


def _same(a: str, b: str, tolerance: float) -> bool:
    if a.strip() == b.strip():
        return True
    try:
        return abs(float(a) - float(b)) <= tolerance
    except ValueError:
        return False


def merge(config: MergeConfig) -> tuple[pd.DataFrame, MergeReport]:
    """Join the sources into one customer table (refuses without the partner key)."""
    partner = load_partner_config(config.resolve(config.partner_config))
    load_key(partner.key_path)  # refuse before reading customer data
    report = MergeReport(resolution=config.match.resolution if config.match.resolution == "most_recent"
                         else f"precedence {config.order}")
    frames = {s.name: _read_source(s, config, report) for s in config.sources}
    order = config.order
    if config.match.fuzzy_column:
        report.matched_by_fuzzy = _fuzzy_link(frames, order, config.match)
    columns = list(dict.fromkeys(c for name in order for c in frames[name].columns if c != "__line__"))
    keys = list(dict.fromkeys(k for s in config.sources for k in frames[s.name].index))
    holders = {k: [n for n in order if k in frames[n].index] for k in keys}
    recency = _recency(frames, config) if config.match.resolution == "most_recent" else {}
    rows = []
    for key in keys:
        held = holders[key]
        if config.match.resolution == "most_recent":
            held = sorted(held, key=lambda n: (recency[n].get(key, pd.Timestamp.min), -order.index(n)), reverse=True)
        row: dict[str, str] = {config.id_column: key}
        for col in columns:
            values = [(n, frames[n].at[key, col]) for n in held if col in frames[n] and frames[n].at[key, col] != ""]
            row[col] = values[0][1] if values else ""
            if col == config.match.recent_column and config.match.resolution == "most_recent":
                continue  # the most recent date is the rule itself, not a conflict
            if len(values) > 1 and any(not _same(values[0][1], v, config.match.numeric_tolerance)
                                       for _, v in values[1:]):
                report.conflicts.append({
                    "customer": key, "column": col, "values": {n: v for n, v in values},
                    "lines": {n: int(frames[n].at[key, "__line__"]) for n, _ in values},
                    "chosen": values[0][0], "rule": config.match.resolution})
        if config.source_column:
            row[config.source_column] = "+".join(holders[key])
        rows.append(row)
    out = pd.DataFrame(rows, columns=[config.id_column, *columns] + ([config.source_column]
                                                                      if config.source_column else []))
    report.customers = len(out)
    report.matched = sum(len(h) > 1 for h in holders.values())
    report.unmatched = {s.name: sum(h == [s.name] for h in holders.values()) for s in config.sources}
    return out, report


def _recency(frames: dict[str, pd.DataFrame], config: MergeConfig) -> dict[str, dict[str, pd.Timestamp]]:
    col = config.match.recent_column
    out: dict[str, dict[str, pd.Timestamp]] = {}
    for name, frame in frames.items():
        if col not in frame:
            out[name] = {}
            continue
        parsed = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns]")
        for fmt in config.match.date_formats:
            todo = parsed.isna()
            parsed[todo] = pd.to_datetime(frame.loc[todo, col].str.strip(), format=fmt, errors="coerce")
        out[name] = parsed.dropna().to_dict()
    return out


def write_merge(config: MergeConfig) -> MergeReport:
    """Merge and write the customer CSV and the report (JSON + summary text), all or nothing."""
    table, report = merge(config)
    output = config.resolve(config.output)
    report_path = config.resolve(config.report) if config.report else output.with_suffix(".merge.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    report.outputs = {"customers": str(output), "report": str(report_path),
                      "summary": str(report_path.with_suffix(".txt"))}
    tmp = output.with_name(f".{output.name}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, output)
    report_path.write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
    report_path.with_suffix(".txt").write_text(report.summary() + "\n", encoding="utf-8")
    return report
