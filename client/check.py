"""Preflight: everything that would go wrong in a federated run, found in seconds, before it starts.

``fedcrm client check --config P --task T`` reads the partner config, the export (header and
the values of the columns that need checking), the consent vocabulary and the partner's
consent ledger — never Flower, Ray or torch — and lists *every* problem at once:

* the export's header against the config (a declared column that is not there: "did you mean");
* every task feature mapped by a column, or declared in ``features_not_held`` (anything else is
  an error naming the nearest spelling, because an unmapped feature silently trains on "unknown");
* value maps and boolean/label spellings cover every value in the export (unmapped values with counts);
* every column's data category exists and is allowed for the task's purpose (all offending columns);
* consent coverage: how many customers the purpose keeps, read-only from the ledger;
* minimum-count feasibility of the kept customers, their training and hold-out parts and classes;
* the partner's decision on the task, once task approval exists (:func:`approval_findings`).

The report is a list of :class:`Finding` (error / warning / info); the check passes when it has no error.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd

from fedcrm.client.config import PartnerConfig, load_partner_config
from fedcrm.client.export_reader import LINE_COLUMN
from fedcrm.client.ingest import iter_raw_chunks
from fedcrm.errors import FedcrmError
from fedcrm.protocol import TaskSchema, load_task_schema

if TYPE_CHECKING:
    from fedcrm.consent.taxonomy import Vocabulary

__all__ = ["CheckReport", "Finding", "check_partner", "did_you_mean"]

Severity = Literal["error", "warning", "info"]

#: Finding kinds, in the order the report lists them.
KINDS = ("config", "vocabulary", "header", "feature_mapping", "values", "category", "consent", "min_count", "approval",
         "privacy")


@dataclass(frozen=True)
class Finding:
    """One result of one check: what, where, how bad, and what to do."""

    kind: str
    severity: Severity
    message: str
    column: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class CheckReport:
    """Every finding for one partner, config and task."""

    partner: str
    config: str
    task: str | None
    purpose: str | None
    findings: list[Finding] = field(default_factory=list)
    customers_kept: int | None = None

    @property
    def ok(self) -> bool:
        """True when no finding is an error."""
        return not self.errors

    @property
    def errors(self) -> list[Finding]:
        """The findings that stop a run."""
        return [f for f in self.findings if f.severity == "error"]

    def add(self, kind: str, severity: Severity, message: str, column: str | None = None,
            counts: dict[str, int] | None = None) -> None:
        """Append one finding."""
        self.findings.append(Finding(kind, severity, message, column, dict(counts or {})))

    def sorted_findings(self) -> list[Finding]:
        """Errors first, then by check kind and column."""
        rank = {"error": 0, "warning": 1, "info": 2}
        return sorted(self.findings, key=lambda f: (rank[f.severity], KINDS.index(f.kind), f.column or ""))

    def to_json(self) -> dict[str, object]:
        """The report as plain JSON data."""
        return {"partner": self.partner, "config": self.config, "task": self.task, "purpose": self.purpose,
                "ok": self.ok, "customers_kept": self.customers_kept,
                "findings": [asdict(f) for f in self.sorted_findings()]}

    def summary(self) -> str:
        """One line per error, prefixed with the partner (for a coordinator's one message)."""
        return "\n".join(f"  {self.partner}: [{f.kind}] {f.message}" for f in self.sorted_findings()
                         if f.severity == "error")


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    # difflib is enough for a handful of names (rapidfuzz earns its place on row-level data).
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _counts(counter: Counter[str], limit: int = 20) -> dict[str, int]:
    return dict(counter.most_common(limit))


# --- the export ------------------------------------------------------------------------------


def export_header(config: PartnerConfig) -> list[str]:
    """Column names of the export, read by ingestion's own reader (so its file errors are the same)."""
    path = config.resolve(config.source.path)
    src = config.source
    if src.resolved_format == "parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415

        return list(pq.read_schema(path).names)
    if not src.header:
        return list(src.column_names or [])
    for chunk in iter_raw_chunks(config):
        return [str(c) for c in chunk.columns if c != LINE_COLUMN]
    return []


def export_values(config: PartnerConfig, columns: list[str]) -> pd.DataFrame:
    """The named columns of the export as stripped strings, missing markers as NA.

    Read through ingestion's chunk reader: the preflight sees the rows ingestion would keep
    (records the reader rejects are left out here and counted by ingestion itself).
    """
    chunks = [chunk[columns] for chunk in iter_raw_chunks(config)]
    frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=columns)
    markers = {m.strip() for m in config.source.missing_values}
    out = pd.DataFrame(index=frame.index)
    for col in columns:
        text = frame[col].astype("string").str.strip()
        out[col] = text.mask(text.isin(markers) | text.isna())
    return out


# --- the checks --------------------------------------------------------------------------------


def _check_header(config: PartnerConfig, header: list[str], report: CheckReport) -> list[str]:
    """Declared export columns that are missing (errors); returns the declared ones present."""
    if config.source.level == "transaction":
        tx = config.transactions
        assert tx is not None
        declared = [config.customer_id_column, tx.date, tx.amount] + ([tx.quantity] if tx.quantity else [])
    else:
        declared = list(config.columns)
    for col in declared:
        if col not in header:
            report.add("header", "error", f"column '{col}' is declared in the config but not in the export"
                       f"{did_you_mean(col, header)}", col)
    if config.source.level == "customer":
        extra = [c for c in header if c not in config.columns]
        if extra:
            report.add("header", "warning", f"export column(s) {extra} are not in the config: ingestion ignores them",
                       counts={c: 0 for c in extra})
    return [c for c in declared if c in header]


def _check_features(config: PartnerConfig, task: TaskSchema, report: CheckReport) -> None:
    held = config.feature_columns()
    task_names = [f.name for f in task.features]
    not_held = set(config.features_not_held)
    unused = [f for f in held if f not in task_names]
    for feature in unused:
        column = held[feature]
        near = did_you_mean(feature, [n for n in task_names if n not in held])
        where = f"[columns.{column}]" + (f" feature = '{feature}'" if feature != column else "")
        if near:  # a mapping that nearly names an unmapped task feature is a typo, not a spare column
            report.add("feature_mapping", "error", f"{where}: '{feature}' is not a feature of task {task.name}"
                       f"{near}", column)
        else:
            report.add("feature_mapping", "info", f"{where}: not used by task {task.name}", column)
    for name in task_names:
        if name in held and name in not_held:
            report.add("feature_mapping", "error", f"task feature '{name}' is both mapped (column "
                       f"'{held[name]}') and listed in features_not_held", held[name])
        elif name not in held and name not in not_held:
            unmapped = [f for f in held if f not in task_names]
            hint = did_you_mean(name, unmapped) or did_you_mean(name, config.columns)
            report.add("feature_mapping", "error", f"task feature '{name}' is not mapped by any column{hint}; map it, "
                       "or list it in features_not_held if this partner does not hold it")
    for name in sorted(not_held - set(task_names)):
        report.add("feature_mapping", "error", f"features_not_held names '{name}', which is not a feature of task "
                   f"{task.name}{did_you_mean(name, task_names)}")
    declared_absent = sorted(not_held & set(task_names) - set(held))
    if declared_absent:
        report.add("feature_mapping", "info", f"declared not held (encoded as unknown): {declared_absent}")


def _check_values(config: PartnerConfig, task: TaskSchema | None, values: pd.DataFrame, report: CheckReport) -> None:
    """Every value of a categorical/boolean feature or the label has a meaning (counts of those that don't)."""
    features = {f.name: f for f in task.features} if task else {}
    for feature, column in config.feature_columns().items():
        spec = config.columns[column]
        if feature not in features:
            continue
        if spec.generalise is not None:  # the feature's values are the bands' labels, not the raw numbers
            bands = spec.generalise.labels or [f"{lo:g}-{hi:g}" for lo, hi in
                                               zip(spec.generalise.bins[:-1], spec.generalise.bins[1:], strict=True)]
            vocab = features[feature].vocabulary
            outside = [b for b in bands if vocab and b not in vocab]
            if outside:
                report.add("values", "error", f"[columns.{column}].generalise labels {outside} are not in the "
                           f"vocabulary of task feature '{feature}' {list(vocab)}", column)
            continue
        if column not in values:
            continue
        present = values[column].dropna()
        if spec.type == "boolean":
            known = {v.lower() for v in spec.true_values + spec.false_values}
            bad = Counter(v for v in present if v.lower() not in known)
            if bad:
                report.add("values", "error", f"[columns.{column}]: {sum(bad.values())} value(s) are neither "
                           f"true_values nor false_values: {_counts(bad)} (ingestion rejects these rows)",
                           column, _counts(bad))
        elif features[feature].type == "categorical":
            vocab = set(features[feature].vocabulary)
            mapped = present.map(lambda v, m=spec.value_map: m.get(v, v))
            bad = Counter(v for v, m in zip(present, mapped, strict=True) if m not in vocab)
            if bad:
                how = "value_map" if spec.value_map else "value_map (none given)"
                report.add("values", "error", f"[columns.{column}]: {sum(bad.values())} row(s) have values that "
                           f"the {how} does not send into the vocabulary of task feature '{feature}' "
                           f"{sorted(vocab)}: {_counts(bad)} (they would be encoded as unknown)", column, _counts(bad))
            targets = sorted(set(spec.value_map.values()) - vocab)
            if targets:
                report.add("values", "error", f"[columns.{column}].value_map maps to {targets}, which are not in "
                           f"the vocabulary of task feature '{feature}'{did_you_mean(targets[0], vocab)}", column)
    label = config.label_column
    if label and label in values and config.columns[label].negative:
        spec = config.columns[label]
        bad = Counter(v for v in values[label].dropna() if v not in spec.positive + spec.negative)
        if bad:
            report.add("values", "error", f"[columns.{label}] (label): {sum(bad.values())} value(s) are neither "
                       f"positive {spec.positive} nor negative {spec.negative}: {_counts(bad)}", label, _counts(bad))


def _requested_columns(config: PartnerConfig, task: TaskSchema | None) -> list[str]:
    """Columns a job for ``task`` asks the gate for (every feature and the label without a task)."""
    held = config.feature_columns()
    if task is None:
        columns = list(held.values())
    else:
        columns = [held[f.name] for f in task.features if f.name in held]
    return columns + ([config.label_column] if config.label_column else [])


def _check_categories(config: PartnerConfig, task: TaskSchema | None, purpose: str, vocab,  # noqa: ANN001
                      report: CheckReport) -> dict[str, str]:
    """Every requested column's category known and allowed for the purpose; returns column → category.

    With a task, a refused column stops the run (error); without one, jobs such as analytics
    leave refused columns out, so they are warnings.
    """
    from fedcrm.consent.policy import check_category  # noqa: PLC0415

    severity: Severity = "error" if task is not None else "warning"
    allowed: dict[str, str] = {}
    refused: list[str] = []
    for column in _requested_columns(config, task):
        category = config.columns[column].category or ""
        if category not in vocab.categories:
            report.add("category", "error", f"[columns.{column}]: unknown data category '{category}'"
                       f"{did_you_mean(category, vocab.categories)}", column)
            refused.append(column)
            continue
        decision = check_category(purpose, category, vocabulary=vocab)
        if decision.allowed:
            allowed[column] = category
        else:
            report.add("category", severity, f"[columns.{column}] ({category}): {decision.reason}", column)
            refused.append(column)
    if refused:
        report.add("category", "info", f"{len(refused)} column(s) refused for purpose '{purpose}': {refused}. Drop "
                   "them (role = 'ignore'), correct their category, or — if the partner decides this purpose may "
                   "use them — widen it in a vocabulary file named in the config (purpose_categories)")
    return allowed


def _check_consent(config: PartnerConfig, purpose: str, vocab, categories: list[str], ids: pd.Series,  # noqa: ANN001
                   labels: pd.Series | None, min_count: int, report: CheckReport) -> None:
    """Read-only consent coverage and minimum-count feasibility (nothing is appended to the ledger)."""
    from fedcrm.client.pseudonymise import load_key, pseudonymise_series  # noqa: PLC0415
    from fedcrm.consent.ledger import Ledger  # noqa: PLC0415
    from fedcrm.consent.policy import evaluate_subjects  # noqa: PLC0415

    try:
        key = load_key(config.key_path)
        ledger = Ledger.open(config.ledger_url)
    except FedcrmError as exc:
        report.add("consent", "warning", f"consent coverage not checked: {exc}")
        return
    try:
        size = ledger.tree_size()
        events = ledger.consent_events(upto_size=size)
    finally:
        ledger.close()
    distinct = ids.dropna().drop_duplicates()
    subjects = pseudonymise_series(distinct, key)
    coverage = evaluate_subjects(events, subjects=subjects.to_numpy(), purpose=purpose, categories=categories,
                                 at=datetime.now(UTC), tree_size=size, vocabulary=vocab)
    kept = len(coverage.covered)
    report.customers_kept = kept
    total = len(distinct)
    basis = vocab.purpose(purpose).legal_basis
    report.add("consent", "info", f"purpose '{purpose}' ({basis}) keeps {kept} of {total} customers "
               f"({kept / max(total, 1):.0%}) as of now", counts={"kept": kept, "customers": total})
    if kept == 0:
        report.add("consent", "error", f"no customer's consent covers purpose '{purpose}' for these categories; "
                   "import the consent records first (fedcrm consent import)")
        return
    fraction = config.privacy.validation_fraction
    parts = {"kept customers": kept, "training part (about)": round(kept * (1 - fraction)),
             "hold-out part (about)": round(kept * fraction)}
    for what, n in parts.items():
        if n < min_count:
            severity: Severity = "error" if what != "hold-out part (about)" else "warning"
            report.add("min_count", severity, f"{what}: {n} customers, below the minimum count {min_count}: "
                       "nothing computed over them may leave the partner", counts={what: n})
    if labels is not None:
        covered = set(coverage.covered)
        mask = subjects.isin(covered).to_numpy()
        kept_labels = labels.loc[distinct.index][mask]
        positives = int(kept_labels.sum())
        for cls, n in (("positive", positives), ("negative", len(kept_labels) - positives)):
            if round(n * fraction) < min_count:
                report.add("min_count", "warning", f"about {round(n * fraction)} {cls} customers in the hold-out "
                           f"part, below the minimum count {min_count}: ranking metrics will be withheld",
                           counts={cls: n})


def approval_findings(config: PartnerConfig, task: TaskSchema, report: CheckReport) -> None:
    """The partner's recorded decision on this exact task schema (``fedcrm client approve``), read-only."""
    try:
        from fedcrm.client.approvals import approvals  # noqa: PLC0415
    except ImportError:  # an installation without task approval: nothing to check
        return
    from fedcrm.consent.ledger import Ledger  # noqa: PLC0415

    try:
        ledger = Ledger.open(config.ledger_url)
    except FedcrmError as exc:
        report.add("approval", "error", f"task approval not checked: {exc}")
        return
    try:
        approved = approvals(ledger)
    finally:
        ledger.close()
    mine = approved.get(task.sha256())
    if mine is None:
        others = sorted(f"{a.task_name} {a.task_version}" for a in approved.values() if a.task_name == task.name)
        also = f" (approved versions of it: {others}; the schema must match exactly)" if others else ""
        report.add("approval", "error", f"partner {config.name} has not approved task {task.name} {task.version} "
                   f"(sha256 {task.sha256()[:12]}…){also}: run `fedcrm client approve --config {config.config_path} "
                   "--task <task file>` once the data team agrees")
    else:
        report.add("approval", "info", f"task approved by {mine.approved_by} at {mine.at:%Y-%m-%d %H:%M} UTC "
                   f"for purpose '{mine.purpose}'")


def privacy_findings(config: PartnerConfig, purpose: str, vocab: Vocabulary, report: CheckReport, *,
                     dp_mode: str = "off", planned_epsilon: float | None = None, dp_statistics: bool = False,
                     task: TaskSchema | None = None) -> None:
    """The purpose's DP policy and ε budget against what the run plans (read-only; ``fedcrm.consent.budget``).

    The planned spend is DP-SGD's target ε plus, when the statistics round will be noised (the
    purpose requires DP, or the run asks), the partner's own ``statistics_epsilon``; both are
    charged to the same budget (basic composition, docs/privacy.md).
    """
    from fedcrm.consent import budget  # noqa: PLC0415
    from fedcrm.consent.ledger import Ledger  # noqa: PLC0415

    policy = budget.purpose_privacy(purpose, vocab)
    required = policy is not None and policy.differential_privacy == "required"
    if required and dp_mode != "record":
        report.add("privacy", "error", f"purpose '{purpose}' requires record-level differential privacy; the run "
                   f"asks for {'none' if dp_mode == 'off' else dp_mode + '-level DP'}: set [run.dp] mode = "
                   "\"record\" and target_epsilon")
    noised_statistics = dp_statistics or required
    if noised_statistics and task is not None:
        held = set(config.feature_columns())
        unbounded = [f.name for f in task.features if f.type == "numeric" and f.name in held and f.bounds is None]
        if unbounded:
            report.add("privacy", "error", f"the statistics round will be noised (differential privacy), which needs "
                       f"public clipping bounds for numeric feature(s) {unbounded}: declare `bounds: [low, high]` for "
                       f"each in task schema {task.name} {task.version}")
    if policy is None:
        return
    try:
        ledger = Ledger.open(config.ledger_url)
    except FedcrmError as exc:
        report.add("privacy", "error", f"ε budget not checked: {exc}")
        return
    try:
        status = budget.budget_status(ledger, purpose, datetime.now(UTC), vocabulary=vocab)
    except FedcrmError as exc:
        report.add("privacy", "error", f"ε budget not checked: {exc}")
        return
    finally:
        ledger.close()
    assert status.remaining is not None
    parts: dict[str, float] = {}
    if dp_mode == "record" and planned_epsilon is not None:
        parts["DP-SGD"] = planned_epsilon
    if noised_statistics:
        parts["noised statistics round"] = config.privacy.statistics_epsilon
    planned = sum(parts.values())
    # Name the parts whenever the spend is not DP-SGD's alone.
    detail = f" ({' + '.join(f'{k} {v:g}' for k, v in parts.items())})" if set(parts) - {"DP-SGD"} else ""
    if parts and planned > status.remaining + 1e-9:
        report.add("privacy", "error", f"partner {config.name}: the run's planned spend of ε = {planned:g}{detail} "
                   f"for purpose '{purpose}' exceeds the remaining budget ε = {status.remaining:.4g} (budget "
                   f"{policy.epsilon_budget:g} per {policy.period}, {status.spent:.4g} spent); the partner will refuse it")
    else:
        report.add("privacy", "info", f"ε budget for '{purpose}': {status.remaining:.4g} of {policy.epsilon_budget:g} "
                   f"left this {policy.period}" + (f"; the run plans ε = {planned:g}{detail}" if parts else ""))


def check_partner(config_path: Path | str, task_path: Path | str | TaskSchema | None = None, *,
                  purpose: str | None = None, min_count: int | None = None, dp_mode: str = "off",
                  planned_epsilon: float | None = None, dp_statistics: bool = False) -> CheckReport:
    """Run every preflight check for one partner; never raises for a problem it can report.

    Parameters
    ----------
    task_path
        The task schema (file or model); without it, feature mapping and vocabulary checks are skipped.
    purpose
        Purpose to check categories and consent against (default: the task's).
    min_count
        The run's minimum count (the larger of it and the partner's own applies).
    dp_mode, planned_epsilon
        The run's differential privacy (``[run.dp]``): checked against the purpose's policy and
        the partner's remaining ε budget.
    dp_statistics
        The run asks for a noised statistics round (``[run.dp] statistics``); its ε counts too.
    """
    from fedcrm.client.vocabulary import partner_vocabulary  # noqa: PLC0415

    report = CheckReport(partner="?", config=str(config_path), task=None, purpose=purpose)
    try:
        config = load_partner_config(config_path)
        task = task_path if isinstance(task_path, TaskSchema) or task_path is None else load_task_schema(task_path)
    except FedcrmError as exc:
        report.add("config", "error", str(exc))
        return report
    report.partner = config.name
    report.task = f"{task.name} {task.version}" if task else None
    purpose = purpose or (task.purpose if task else None)
    report.purpose = purpose
    try:
        vocab = partner_vocabulary(config)
    except FedcrmError as exc:
        for line in str(exc).splitlines():
            report.add("vocabulary", "error", line)
        vocab = None
    if config.vocabulary:
        report.add("vocabulary", "info", f"vocabulary files: {[str(config.resolve(p)) for p in config.vocabulary]}")
    source = config.resolve(config.source.path)
    if not source.exists():
        report.add("header", "error", f"{source}: export file not found")
        return report
    try:
        header = export_header(config)
    except FedcrmError as exc:
        report.add("header", "error", str(exc))
        return report
    except (OSError, ValueError) as exc:
        report.add("header", "error", f"{source}: cannot read the header: {exc}")
        return report
    present = _check_header(config, header, report)
    if config.source.level == "transaction":
        from fedcrm.client.transaction_ingest import check_derived_columns  # noqa: PLC0415

        try:
            check_derived_columns(config)
        except FedcrmError as exc:
            report.add("config", "error", str(exc))
    if task is not None:
        _check_features(config, task, report)
    needed = [c for c in present if config.columns.get(c) is not None
              and (config.columns[c].role in ("customer_id", "label") or config.columns[c].type in (
                  "categorical", "boolean"))]
    try:
        values = export_values(config, needed) if needed else pd.DataFrame()
    except FedcrmError as exc:
        report.add("values", "error", str(exc))
        return report
    if config.source.level == "customer":
        _check_values(config, task, values, report)
    if vocab is not None and purpose is not None:
        try:
            vocab.purpose(purpose)
        except FedcrmError as exc:
            report.add("category", "error", str(exc))
            return report
        privacy_findings(config, purpose, vocab, report, dp_mode=dp_mode, planned_epsilon=planned_epsilon,
                         dp_statistics=dp_statistics, task=task)
        allowed = _check_categories(config, task, purpose, vocab, report)
        id_col = config.customer_id_column
        if id_col in values:
            labels = None
            label = config.label_column
            if label and label in values and config.source.level == "customer":
                labels = values[label].isin(config.columns[label].positive).astype(int)
            limit = max(config.privacy.min_count, min_count or 0)
            _check_consent(config, purpose, vocab, sorted(set(allowed.values())), values[id_col], labels, limit,
                           report)
    if task is not None:
        approval_findings(config, task, report)
    return report


def report_json(reports: list[CheckReport]) -> str:
    """Several partners' reports as one JSON document."""
    return json.dumps({"ok": all(r.ok for r in reports), "partners": [r.to_json() for r in reports]}, indent=2)
