"""Data-quality rules: the optional ``[quality]`` table of a partner config, and spelling repair.

The rules say what counts as a near-duplicate customer, which date formats to recognise,
and whether inconsistent category spellings ("Yes" / "yes" / "Y ") are only reported,
fixed to one canonical spelling before parsing, or rejected. Ingestion applies the
spelling rule (``SpellingMaps``); the quality report applies all of them.

Canonical spellings come from, in order: the rule's ``vocabulary`` for the column, the
column's ``value_map`` keys, the label's positive/negative values, the boolean
true/false values as written in the config; otherwise the most frequent spelling in the
export itself (learnt in one chunked pass, so memory stays bounded by the number of
distinct values).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rapidfuzz import fuzz, process

from fedcrm.client.config import ColumnSpec, PartnerConfig
from fedcrm.client.normalise import IdNormalisation, spelling_key
from fedcrm.errors import ConfigError
from fedcrm.config_files import validation_summary
from fedcrm.protocol import TaskSchema

# Recognised when looking for mixed date formats (ingestion parses only source.date_formats).
COMMON_DATE_FORMATS = [
    "%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%Y/%m/%d", "%d-%m-%Y", "%Y%m%d",
    "%d %b %Y", "%b %d, %Y", "%d %B %Y", "%B %d, %Y", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NearDuplicateRules(_Strict):
    """Two rows are the same customer entered twice when their normalised ids are equal and
    every ``match_columns`` value agrees: numbers within ``rel_tolerance``/``abs_tolerance``
    (``math.isclose`` semantics), text by spelling key, ``fuzzy_columns`` by a rapidfuzz
    ratio of at least ``fuzzy_threshold``. A missing value agrees with anything."""

    enabled: bool = True
    id: IdNormalisation = Field(default_factory=IdNormalisation)
    match_columns: list[str] | None = Field(None, description="Default: every parsed column except the id")
    rel_tolerance: float = Field(0.01, ge=0.0, le=1.0)
    abs_tolerance: float = Field(0.01, ge=0.0)
    fuzzy_columns: list[str] = Field(default_factory=list)
    fuzzy_threshold: float = Field(90.0, ge=0.0, le=100.0)


class SpellingRules(_Strict):
    """Inconsistent category spellings: report only, fix to the canonical spelling, or reject."""

    action: Literal["report", "fix", "reject"] = "report"
    columns: list[str] | None = Field(None, description="Default: categorical, boolean and label columns")
    abbreviations: bool = Field(True, description="'Y' joins 'Yes' when it is a prefix of exactly one spelling")
    fuzzy_threshold: float | None = Field(None, ge=0.0, le=100.0, description="Also join spellings this similar")
    fuzzy_max_share: float = Field(
        0.1, gt=0.0, le=1.0,
        description="A fuzzy variant holds at most this share of its target's rows: two common values "
        "('Female', 'Male') are both real, however similar",
    )
    vocabulary: dict[str, list[str]] = Field(default_factory=dict, description="Column → canonical spellings")
    max_distinct: int = Field(200, gt=0, description="Columns with more distinct values are free text: skipped")


class QualityRules(_Strict):
    """The whole ``[quality]`` table."""

    near_duplicates: NearDuplicateRules = Field(default_factory=NearDuplicateRules)
    spelling: SpellingRules = Field(default_factory=SpellingRules)
    date_formats: list[str] = Field(default_factory=lambda: list(COMMON_DATE_FORMATS))
    examples: int = Field(5, ge=0, le=100, description="Example rows kept per finding and column")
    max_lines: int = Field(100_000, ge=0, description="Line numbers listed per finding and column in the JSON")


def quality_rules(config: PartnerConfig) -> QualityRules:
    """The partner's quality rules (defaults when the config has no ``[quality]`` table)."""
    try:
        rules = QualityRules.model_validate(config.quality or {})
    except ValidationError as exc:
        raise ConfigError(f"{config.config_path}: invalid [quality] table: {validation_summary(exc)}") from exc
    known = set(config.columns)
    named = set(rules.near_duplicates.match_columns or []) | set(rules.near_duplicates.fuzzy_columns)
    named |= set(rules.spelling.columns or []) | set(rules.spelling.vocabulary)
    unknown = sorted(named - known)
    if unknown:
        raise ConfigError(f"{config.config_path}: [quality] names column(s) {unknown} not declared in [columns]")
    return rules


def spelling_columns(config: PartnerConfig, rules: QualityRules) -> list[str]:
    """Columns whose values are checked for inconsistent spellings."""
    if rules.spelling.columns is not None:
        return list(rules.spelling.columns)
    return [c for c, s in config.columns.items()
            if s.role != "customer_id" and (s.role == "label" or s.type in ("categorical", "boolean"))]


def _declared_spellings(name: str, spec: ColumnSpec, rules: QualityRules, task: TaskSchema | None = None) -> list[str]:
    """The column's valid values as the partner (or the task) declares them: never rewritten."""
    if name in rules.spelling.vocabulary:
        return list(rules.spelling.vocabulary[name])
    if spec.value_map:
        return list(spec.value_map)
    if spec.role == "label":
        return spec.positive + spec.negative
    vocabulary = task_vocabulary(name, spec, task)
    return list(vocabulary) if vocabulary else []


def task_vocabulary(name: str, spec: ColumnSpec, task: TaskSchema | None) -> tuple[str, ...]:
    """Vocabulary of the categorical task feature this column feeds (empty if none)."""
    if task is None or spec.role not in ("feature", "quasi_identifier") or spec.type != "categorical":
        return ()
    feature = next((f for f in task.features if f.name == (spec.feature or name)), None)
    return feature.vocabulary if feature is not None and feature.type == "categorical" else ()


@dataclass
class SpellingMaps:
    """Per column: raw spelling → canonical spelling, for spellings that differ from it."""

    maps: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # free-text columns (too many distinct values)

    def variants(self, column: str) -> dict[str, str]:
        """Raw → canonical for one column (empty when nothing to repair)."""
        return self.maps.get(column, {})


def canonical_map(counts: Counter[str], declared: list[str], rules: SpellingRules, *, boolean: tuple[
        list[str], list[str]] | None = None) -> dict[str, str]:
    """Group raw spellings of one column and map every non-canonical one to its group's canonical one."""
    groups: dict[str, Counter[str]] = {}
    for raw, n in counts.items():
        key = _bool_key(raw, boolean) if boolean else spelling_key(raw)
        if key:
            groups.setdefault(key, Counter())[raw] += n
    declared_keys = {spelling_key(d): d for d in declared}
    if not boolean:  # (a boolean's spellings are grouped by true_values / false_values alone)
        _join_variants(groups, set(declared_keys), rules)
    out: dict[str, str] = {}
    for key, spellings in groups.items():
        if key in declared_keys:
            canonical = declared_keys[key]
        else:  # most frequent spelling; ties broken alphabetically so the choice is reproducible
            canonical = min(spellings, key=lambda s: (-spellings[s], s))
        out.update({raw: canonical for raw in spellings if raw != canonical})
    return out


def _bool_key(raw: str, boolean: tuple[list[str], list[str]]) -> str:
    text = raw.strip().lower()
    if text in {v.lower() for v in boolean[0]}:
        return "\x01true"
    if text in {v.lower() for v in boolean[1]}:
        return "\x01false"
    return spelling_key(raw)


def _join_variants(groups: dict[str, Counter[str]], anchors: set[str], rules: SpellingRules) -> None:
    """Merge abbreviation / fuzzy variants into the group they unambiguously belong to.

    A declared valid value (an anchor) is never merged into another: fuzzy similarity cannot
    tell 'Female' from a typo of 'Male', but the vocabulary can. A fuzzy variant must also be
    rare next to its target (``fuzzy_max_share``): typos are a small share, real values are not.
    """
    total = {k: sum(c.values()) for k, c in groups.items()}
    for key in sorted(groups, key=lambda k: total[k]):
        if key not in groups or key in anchors:
            continue
        targets = [k for k in groups if k != key and (k in anchors or total[k] > total[key])]
        match = None
        if rules.abbreviations:
            prefixed = [k for k in targets if k.startswith(key)]
            if len(prefixed) == 1:
                match = prefixed[0]
        rare_next_to = [k for k in targets if total[key] <= rules.fuzzy_max_share * total[k]]
        if match is None and rules.fuzzy_threshold is not None and rare_next_to:
            # rapidfuzz: a maintained C++ implementation of Levenshtein ratios (difflib is ~100x slower).
            found = process.extract(key, rare_next_to, scorer=fuzz.ratio, limit=2,
                                    score_cutoff=rules.fuzzy_threshold)
            if len(found) == 1 or (len(found) == 2 and found[0][1] > found[1][1]):
                match = found[0][0]
        if match is not None:
            groups[match].update(groups.pop(key))


def learn_spellings(config: PartnerConfig, rules: QualityRules, chunks: object | None = None, *,
                    task: TaskSchema | None = None) -> SpellingMaps:
    """One chunked pass over the export: the canonical spelling of every checked column's values.

    With ``task``, a categorical feature's task vocabulary counts as its declared spellings.
    """
    from fedcrm.client.ingest import iter_raw_chunks  # local: ingest imports this module

    columns = spelling_columns(config, rules)
    markers = {m.strip() for m in config.source.missing_values}
    counts: dict[str, Counter[str]] = {c: Counter() for c in columns}
    maps = SpellingMaps()
    for chunk in (chunks if chunks is not None else iter_raw_chunks(config)):  # type: ignore[union-attr]
        for col in list(counts):
            if col not in chunk:
                continue
            values = chunk[col].astype("string").fillna("")
            counts[col].update(v for v in values[~values.str.strip().isin(markers)])
            if len(counts[col]) > rules.spelling.max_distinct:
                maps.skipped.append(col)
                del counts[col]
    for col, seen in counts.items():
        spec = config.columns[col]
        boolean = (spec.true_values, spec.false_values) if spec.type == "boolean" and spec.role != "label" else None
        mapping = canonical_map(seen, _declared_spellings(col, spec, rules, task), rules.spelling, boolean=boolean)
        if mapping:
            maps.maps[col] = mapping
    return maps


def apply_spellings(chunk: pd.DataFrame, maps: SpellingMaps, action: str) -> tuple[pd.DataFrame, list[tuple[
        int, str, str, str]]]:
    """Fix (``action='fix'``) or list for rejection (``'reject'``) non-canonical spellings in a raw chunk.

    Returns the (possibly repaired) chunk and ``(line, column, value, reason)`` for each rejection.
    """
    rejects: list[tuple[int, str, str, str]] = []
    if action == "report":
        return chunk, rejects
    for col, mapping in maps.maps.items():
        if col not in chunk:
            continue
        hit = chunk[col].isin(list(mapping))
        if not hit.any():
            continue
        if action == "fix":
            chunk.loc[hit, col] = chunk.loc[hit, col].map(mapping)
        else:
            for line, value in zip(chunk.loc[hit, "__line__"], chunk.loc[hit, col], strict=True):
                rejects.append((int(line), col, str(value), f"inconsistent spelling '{value}' (canonical: "
                                f"'{mapping[value]}')"))
    return chunk, rejects
