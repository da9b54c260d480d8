"""The data-quality report: what is wrong in a partner's export, where, and what ingestion does about it.

Reads the export in chunks (the same reader as ingestion) and finds, with their file line:
exact duplicate rows; near-duplicate customers (same normalised id, values within the
configured tolerance — see ``NearDuplicateRules``); ids reused with conflicting values;
missing values per column; numbers written with thousands separators or not numbers at
all; dates in a format other than the column's dominant one, or in none; category values
spelt inconsistently ("Yes" / "yes" / "Y "); values outside the column's ``min``/``max``.
Each finding says what ingestion does with it (fixed, rejected, kept). The rows that reach
training are counted by running ingestion's own parser over each chunk, nothing written.

The report is partner-local. Its ``export`` part alone is meant to leave the premises: it
holds counts of distinct customers per cell, and cells under ``privacy.min_count`` are
withheld (see ``fedcrm.client.quality_export``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rapidfuzz import fuzz

from fedcrm.client.config import ColumnSpec, PartnerConfig
from fedcrm.client.ingest import IngestReport, apply_spelling_rule, iter_raw_chunks, parse_chunk
from fedcrm.client.normalise import normalise_ids, spelling_keys
from fedcrm.client.pseudonymise import load_key
from fedcrm.client.quality_rules import (
    QualityRules,
    SpellingMaps,
    learn_spellings,
    quality_rules,
    spelling_columns,
    task_vocabulary,
)
from fedcrm.protocol import TaskSchema

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
ID_CONFLICT = "conflicting_duplicate_id"
MISSING = "missing_value"
THOUSANDS = "thousands_separator"
NOT_A_NUMBER = "not_a_number"
NOT_AN_INTEGER = "not_an_integer"
DATE_FORMAT = "mixed_date_format"
BAD_DATE = "unparseable_date"
SPELLING = "inconsistent_spelling"
NOT_A_BOOLEAN = "not_a_boolean"
UNKNOWN_LABEL = "unknown_label"
OUT_OF_RANGE = "out_of_range"
OUT_OF_VOCABULARY = "outside_task_vocabulary"
ROW = "(row)"  # the column name used for whole-row findings

FAMILY = {
    EXACT_DUPLICATE: "duplicates", NEAR_DUPLICATE: "duplicates", ID_CONFLICT: "duplicates",
    MISSING: "missing", THOUSANDS: "format", NOT_A_NUMBER: "type", NOT_AN_INTEGER: "type",
    DATE_FORMAT: "format", BAD_DATE: "type", SPELLING: "format", NOT_A_BOOLEAN: "type",
    UNKNOWN_LABEL: "type", OUT_OF_RANGE: "range", OUT_OF_VOCABULARY: "vocabulary",
}


@dataclass
class FindingGroup:
    """Every occurrence of one kind of problem in one column (``ROW`` for whole-row problems)."""

    kind: str
    column: str
    action: str
    count: int = 0
    lines: list[int] = field(default_factory=list)
    examples: list[dict[str, object]] = field(default_factory=list)
    id_hashes: list[np.ndarray] = field(default_factory=list)

    @property
    def customers(self) -> int:
        """Distinct customers (normalised ids) behind this group."""
        return int(np.unique(np.concatenate(self.id_hashes)).size) if self.id_hashes else 0


@dataclass
class QualityReport:
    """Everything the quality pass found, plus how many rows ingestion would keep."""

    partner: str
    source: Path
    rules: QualityRules
    min_count: int
    rows_read: int = 0
    rows_kept: int = 0
    rows_rejected: int = 0
    customers_read: int = 0
    groups: dict[tuple[str, str], FindingGroup] = field(default_factory=dict)
    missing_per_column: dict[str, int] = field(default_factory=dict)
    skipped_columns: list[str] = field(default_factory=list)

    def lines(self, kind: str, column: str | None = None) -> set[int]:
        """File lines with a finding of ``kind`` (optionally in one column)."""
        return {ln for (k, c), g in self.groups.items() if k == kind and column in (None, c) for ln in g.lines}

    def counts(self) -> dict[str, int]:
        """Occurrences per kind."""
        out: dict[str, int] = {}
        for (kind, _), g in self.groups.items():
            out[kind] = out.get(kind, 0) + g.count
        return out


class _Collector:
    def __init__(self, report: QualityReport, examples: int, id_column: str) -> None:
        self.report = report
        self.examples = examples
        self.id_column = id_column

    def add(self, kind: str, column: str, mask: pd.Series, chunk: pd.DataFrame, hashes: np.ndarray,
            action: str, detail: Iterable[str] | str | None = None) -> None:
        if not mask.any():
            return
        group = self.report.groups.setdefault((kind, column), FindingGroup(kind, column, action))
        idx = np.flatnonzero(mask.to_numpy())
        lines = chunk["__line__"].to_numpy()[idx]
        group.count += len(idx)
        group.lines.extend(int(x) for x in lines)
        group.id_hashes.append(hashes[idx])
        room = self.examples - len(group.examples)
        if room > 0:
            shown = self.id_column if column == ROW else column  # whole-row findings show the row's id
            values = chunk[shown].to_numpy()[idx[:room]] if shown in chunk else [""] * min(room, len(idx))
            details = [detail] * len(idx) if detail is None or isinstance(detail, str) else list(detail)
            for line, value, text in zip(lines[:room], values, details[:room], strict=False):
                group.examples.append({"line": int(line), "column": column, "value": str(value),
                                       "detail": text or ""})


def assess(config: PartnerConfig, *, rules: QualityRules | None = None, task: TaskSchema | None = None) -> QualityReport:
    """Run every check over the partner's export (refuses without the partner key).

    With ``task``, categorical values that the column's value map does not send into the task
    feature's vocabulary are a finding (``outside_task_vocabulary``: they would train as unknown),
    and the task vocabulary protects valid values from spelling repair.
    """
    key = load_key(config.key_path)  # refuse before touching customer data
    rules = rules or quality_rules(config)
    source = config.resolve(config.source.path)
    report = QualityReport(config.name, source, rules, config.privacy.min_count)
    spellings = learn_spellings(config, rules, task=task)
    report.skipped_columns = spellings.skipped
    out = _Collector(report, rules.examples, config.customer_id_column)
    state = _State()
    ingest_view = IngestReport(source=source)
    seen_ids: dict[str, int] = {}
    all_hashes: list[np.ndarray] = []
    for chunk in iter_raw_chunks(config, source, ingest_view):  # rows the reader rejects count as rejected
        report.rows_read += len(chunk)
        id_col = config.customer_id_column
        if id_col not in chunk:
            break  # parse_chunk below raises the clear "column not in the export" error
        norm = normalise_ids(chunk[id_col], rules.near_duplicates.id)
        hashes = pd.util.hash_array(norm.fillna("").to_numpy(dtype=object))
        all_hashes.append(np.unique(hashes))
        _check_duplicates(chunk, config, rules, spellings, norm, hashes, state, out)
        for name, spec in config.columns.items():
            if name in chunk:
                _check_column(name, spec, chunk, config, rules, spellings, hashes, state, out)
                _check_task_vocabulary(name, spec, chunk, config, rules, spellings, hashes, task, out)
        # What ingestion keeps: its own code on a copy of the chunk, nothing written.
        view = apply_spelling_rule(chunk.copy(), spellings, rules.spelling.action, ingest_view)
        customers, _ = parse_chunk(view, config, key, ingest_view, seen_ids)
        report.rows_kept += len(customers)
    _finish_dates(config, state, out)
    report.rows_read += ingest_view.tally.rows  # records the reader rejected before parsing
    report.rows_rejected = ingest_view.rows_rejected
    report.customers_read = int(np.unique(np.concatenate(all_hashes)).size) if all_hashes else 0
    report.missing_per_column = {c: 0 for c in config.columns} | {
        c: g.count for (k, c), g in report.groups.items() if k == MISSING}
    return report


@dataclass
class _State:
    row_hashes: dict[int, int] = field(default_factory=dict)
    first_by_id: dict[str, tuple[int, tuple[object, ...]]] = field(default_factory=dict)
    date_formats: dict[str, dict[str, list[tuple[pd.DataFrame, pd.Series, np.ndarray]]]] = field(default_factory=dict)


# --- duplicates -------------------------------------------------------------------------------


def _comparable(name: str, spec: ColumnSpec, chunk: pd.DataFrame, config: PartnerConfig, rules: QualityRules,
                spellings: SpellingMaps) -> tuple[str, list[object]]:
    values = chunk[name].astype("string").fillna("")
    missing = values.str.strip().isin({m.strip() for m in config.source.missing_values})
    if spec.type in ("numeric", "integer") and spec.role != "label":
        numbers = _numbers(values, config)[0]
        return "number", [None if m or math.isnan(v) else v for v, m in zip(numbers, missing, strict=True)]
    if name in rules.near_duplicates.fuzzy_columns:
        return "fuzzy", [None if m else v.casefold().strip() for v, m in zip(values, missing, strict=True)]
    keys = spelling_keys(values.map(lambda v: spellings.variants(name).get(v, v)))
    return "text", [None if m else k for k, m in zip(keys, missing, strict=True)]


def _agree(kinds: list[str], a: tuple[object, ...], b: tuple[object, ...], rules: QualityRules) -> list[int]:
    """Indexes of the match columns on which two rows disagree."""
    nd = rules.near_duplicates
    bad = []
    for i, (kind, x, y) in enumerate(zip(kinds, a, b, strict=True)):
        if x is None or y is None:
            continue
        if kind == "number":
            ok = math.isclose(x, y, rel_tol=nd.rel_tolerance, abs_tol=nd.abs_tolerance)  # type: ignore[arg-type]
        elif kind == "fuzzy":
            ok = fuzz.ratio(x, y) >= nd.fuzzy_threshold  # type: ignore[arg-type]
        else:
            ok = x == y
        if not ok:
            bad.append(i)
    return bad


def _check_duplicates(chunk: pd.DataFrame, config: PartnerConfig, rules: QualityRules, spellings: SpellingMaps,
                      norm: pd.Series, hashes: np.ndarray, state: _State, out: _Collector) -> None:
    data_cols = [c for c in chunk.columns if c != "__line__"]
    row_hash = pd.util.hash_pandas_object(chunk[data_cols], index=False).to_numpy()
    lines = chunk["__line__"].to_numpy()
    exact = np.zeros(len(chunk), dtype=bool)
    exact_detail: list[str] = []
    for i, (h, line) in enumerate(zip(row_hash, lines, strict=True)):
        first = state.row_hashes.setdefault(int(h), int(line))
        if first != line:
            exact[i] = True
            exact_detail.append(f"same as line {first}")
    out.add(EXACT_DUPLICATE, ROW, pd.Series(exact), chunk, hashes, "rejected (duplicate customer id)", exact_detail)
    nd = rules.near_duplicates
    if not nd.enabled:
        return
    id_col = config.customer_id_column
    match = nd.match_columns or [c for c, s in config.columns.items()
                                 if c != id_col and s.role not in ("ignore", "direct_identifier")]
    compared = [_comparable(c, config.columns[c], chunk, config, rules, spellings) for c in match if c in chunk]
    kinds = [k for k, _ in compared]
    rows = list(zip(*[v for _, v in compared], strict=True)) if compared else [()] * len(chunk)
    near = np.zeros(len(chunk), dtype=bool)
    conflict = np.zeros(len(chunk), dtype=bool)
    near_detail: list[str] = []
    conflict_detail: list[str] = []
    raw_ids = chunk[id_col].to_numpy()
    for i, (key, line) in enumerate(zip(norm, lines, strict=True)):
        if exact[i] or pd.isna(key) or key == "":
            continue
        prev = state.first_by_id.get(key)
        if prev is None:
            state.first_by_id[key] = (int(line), (raw_ids[i], *rows[i]))
            continue
        differing = _agree(kinds, prev[1][1:], rows[i], rules)
        if differing:
            conflict[i] = True
            conflict_detail.append(f"id of line {prev[0]} with other values in {[match[j] for j in differing]}")
        else:
            near[i] = True
            near_detail.append(f"same customer as line {prev[0]} (id '{prev[1][0]}')")
    out.add(NEAR_DUPLICATE, ROW, pd.Series(near), chunk, hashes, "kept (report only)", near_detail)
    out.add(ID_CONFLICT, ROW, pd.Series(conflict), chunk, hashes, "rejected if the raw ids are equal",
            conflict_detail)


# --- columns ---------------------------------------------------------------------------------


def _thousands_pattern(decimal: str) -> re.Pattern[str]:
    return re.compile(rf"^[+-]?\d{{1,3}}(?:([{_separators(decimal)}])\d{{3}})(?:\1\d{{3}})*"
                      rf"(?:{re.escape(decimal)}\d+)?$")


def _separators(decimal: str) -> str:
    """Regex character-class body of the thousands separators possible next to ``decimal``."""
    return "".join(re.escape(s) for s in (",", ".", " ", "'", "\u00a0") if s != decimal)


def _numbers(values: pd.Series, config: PartnerConfig) -> tuple[pd.Series, pd.Series]:
    """(parsed numbers, mask of values written with thousands separators)."""
    text = values.astype("string").fillna("").str.strip()
    pattern = _thousands_pattern(config.source.decimal)
    grouped = text.str.match(pattern).fillna(False).astype(bool)
    ungrouped = text.str.replace(rf"[{_separators(config.source.decimal)}](?=\d{{3}})", "", regex=True)
    cleaned = text.where(~grouped, ungrouped)
    if config.source.thousands:
        cleaned = cleaned.str.replace(config.source.thousands, "", regex=False)
    if config.source.decimal != ".":
        cleaned = cleaned.str.replace(config.source.decimal, ".", regex=False)
    return pd.to_numeric(cleaned, errors="coerce").astype("float64"), grouped


def _check_column(name: str, spec: ColumnSpec, chunk: pd.DataFrame, config: PartnerConfig, rules: QualityRules,
                  spellings: SpellingMaps, hashes: np.ndarray, state: _State, out: _Collector) -> None:
    values = chunk[name].astype("string").fillna("")
    missing = values.str.strip().isin({m.strip() for m in config.source.missing_values})
    parsed_role = spec.role not in ("ignore", "direct_identifier")
    if missing.any():
        out.add(MISSING, name, missing, chunk, hashes, _missing_action(spec, parsed_role))
    present = ~missing
    if name in spelling_columns(config, rules) and spellings.variants(name):
        variants = spellings.variants(name)
        hit = values.isin(list(variants)) & present
        out.add(SPELLING, name, hit, chunk, hashes, _spelling_action(spec, rules),
                [f"canonical spelling: '{variants[v]}'" for v in values[hit]])
        if rules.spelling.action == "fix":
            values = values.map(lambda v: variants.get(v, v))
    reject = "rejected" if parsed_role else "ignored by ingestion"
    text = values.str.strip()
    if spec.role == "label" and spec.negative:
        bad = present & ~text.isin(spec.positive + spec.negative)
        out.add(UNKNOWN_LABEL, name, bad, chunk, hashes, reject, "neither a positive nor a negative value")
    elif spec.type in ("numeric", "integer") and spec.role != "customer_id":
        numbers, grouped = _numbers(values, config)
        sep_ok = config.source.thousands is not None
        out.add(THOUSANDS, name, grouped & present, chunk, hashes,
                "fixed (source.thousands)" if sep_ok else f"{reject} (set source.thousands to parse)")
        out.add(NOT_A_NUMBER, name, numbers.isna() & present, chunk, hashes, reject)
        if spec.type == "integer":
            out.add(NOT_AN_INTEGER, name, numbers.notna() & (numbers != numbers.round()), chunk, hashes, reject)
        low = numbers < spec.min if spec.min is not None else pd.Series(False, index=values.index)
        high = numbers > spec.max if spec.max is not None else pd.Series(False, index=values.index)
        out.add(OUT_OF_RANGE, name, low | high, chunk, hashes, reject, [
            f"below minimum {spec.min}" if lo else f"above maximum {spec.max}" for lo in low[low | high]])
    elif spec.type == "boolean" and spec.role != "customer_id":
        known = {v.lower() for v in spec.true_values + spec.false_values}
        out.add(NOT_A_BOOLEAN, name, present & ~text.str.lower().isin(known), chunk, hashes, reject)
    elif spec.type == "date" and spec.role != "customer_id":
        _track_dates(name, text, present, chunk, config, rules, hashes, state)


def _check_task_vocabulary(name: str, spec: ColumnSpec, chunk: pd.DataFrame, config: PartnerConfig,
                           rules: QualityRules, spellings: SpellingMaps, hashes: np.ndarray,
                           task: TaskSchema | None, out: _Collector) -> None:
    """Values (after spelling repair and the value map) outside the task feature's vocabulary."""
    vocabulary = set(task_vocabulary(name, spec, task))
    if not vocabulary:
        return
    text = chunk[name].astype("string").fillna("")
    if rules.spelling.action == "fix":
        variants = spellings.variants(name)
        text = text.map(lambda v: variants.get(v, v))
    text = text.str.strip()
    present = ~text.isin({m.strip() for m in config.source.missing_values})
    mapped = text.map(lambda v: spec.value_map.get(v, v))
    outside = present & ~mapped.isin(vocabulary)
    feature = spec.feature or name
    out.add(OUT_OF_VOCABULARY, name, outside, chunk, hashes,
            f"encoded as unknown for task feature '{feature}': add the value to value_map",
            f"not in the task vocabulary {sorted(vocabulary)}")


def _missing_action(spec: ColumnSpec, parsed: bool) -> str:
    if not parsed:
        return "ignored by ingestion"
    if spec.required or spec.role in ("customer_id", "label"):
        return "rejected (required)"
    return "filled by the gap rule where it applies, else kept as missing" if spec.gap else "kept as missing"


def _spelling_action(spec: ColumnSpec, rules: QualityRules) -> str:
    if rules.spelling.action == "fix":
        return "fixed (quality.spelling.action = 'fix')"
    if rules.spelling.action == "reject":
        return "rejected (quality.spelling.action = 'reject')"
    if spec.type == "boolean" and spec.role != "label":
        return "parsed as the same boolean"
    return "kept as written (set quality.spelling.action = 'fix')"


def _track_dates(name: str, text: pd.Series, present: pd.Series, chunk: pd.DataFrame, config: PartnerConfig,
                 rules: QualityRules, hashes: np.ndarray, state: _State) -> None:
    formats = list(dict.fromkeys(config.source.date_formats + rules.date_formats))
    found = pd.Series("", index=text.index, dtype=object)
    for fmt in formats:
        todo = present & (found == "")
        if not todo.any():
            break
        ok = pd.to_datetime(text[todo], format=fmt, errors="coerce").notna()
        found[ok[ok].index] = fmt
    by_format = state.date_formats.setdefault(name, {})
    for fmt in set(found[present]):
        mask = present & (found == fmt)
        by_format.setdefault(fmt, []).append((chunk[["__line__", name]][mask], mask, hashes[mask.to_numpy()]))


def _finish_dates(config: PartnerConfig, state: _State, out: _Collector) -> None:
    """Formats other than a column's dominant one are findings (known only after the last chunk)."""
    for name, by_format in state.date_formats.items():
        counts = {fmt: sum(len(part[0]) for part in parts) for fmt, parts in by_format.items() if fmt}
        dominant = max(counts, key=lambda f: (counts[f], f in config.source.date_formats)) if counts else None
        others = [f for f in counts if f != dominant]
        unlisted = [f for f in others if f not in config.source.date_formats]
        parsed = config.columns[name].role not in ("ignore", "direct_identifier")
        if not parsed:
            action = "ignored by ingestion"
        elif not unlisted:
            action = "parsed (every format is listed in source.date_formats)"
        else:
            action = f"rejected unless listed in source.date_formats (add {unlisted} to parse them)"
        for fmt, parts in by_format.items():
            if fmt == dominant:
                continue
            for frame, _, hashes in parts:
                mask = pd.Series(True, index=frame.index)
                if not fmt:
                    out.add(BAD_DATE, name, mask, frame, hashes, "rejected" if parsed else "ignored by ingestion",
                            "in none of the known date formats")
                else:
                    out.add(DATE_FORMAT, name, mask, frame, hashes, action,
                            f"format {fmt}; the column's usual format is {dominant}")
