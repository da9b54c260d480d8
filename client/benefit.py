"""A partner's benefit report: did joining the federation help us?

On the partner's own local hold-out (the same customers the federated evaluation used:
``PartnerSession.split``), the run's federated model is compared with a **local-only
twin** trained here, the same way, on the partner's own consented training part: same
architecture, same initial weights (the run's seed), the same number of rounds of the
same local training (epochs, optimiser, learning rate, batch size, per-round seed,
FedProx term and SecAgg+ projection bound as the run's fit orders carried), and the same
input scaling (the run's federated scaling; ``scaling="own"`` uses the partner's own
training statistics instead, i.e. the partner that never joined). Training the twin
round by round with a fresh optimiser each round is exactly what FedAvg does with one
partner, so the only difference between the two models is the other partners' data.

Customers reach both models only through the consent gate, for the task's purpose and
only the columns that purpose allows, and the report is recorded in the partner's ledger
as a use of stage ``benefit``. Nothing is sent anywhere: the report (JSON, a text table,
a plot) is written into the partner's work directory.

Uncertainty: a **paired bootstrap** over hold-out customers — each resample draws one set
of customer indices and scores *both* models on it — gives percentile intervals for each
model's ROC AUC, PR AUC and top-decile lift and for the difference federated − local.
The verdict follows the ROC AUC difference's interval: above 0 (joining helped), below 0
(the local model is better), or containing 0 (no clear difference on this hold-out).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fedcrm.client.features import Scaling, encode_features, encode_labels
from fedcrm.client.ingest import LABEL, load_customers
from fedcrm.client.partner_session import PartnerSession
from fedcrm.client.score import ScoringModel
from fedcrm.client.vocabulary import vocabulary_for_gate
from fedcrm.consent.gate import UsageContext, gate
from fedcrm.consent.ledger import Ledger
from fedcrm.errors import ConfigError
from fedcrm.models.metrics import pr_auc, roc_auc, top_decile_lift
from fedcrm.models.train_config import TrainConfig
from fedcrm.protocol import TaskSchema
from fedcrm.run_artifacts import RunTraining, read_run_model, read_run_scaling, read_run_task, read_run_training

__all__ = ["METRICS", "BenefitReport", "MetricComparison", "benefit_report", "local_twin_scores",
           "paired_bootstrap", "resampled_metrics", "write_benefit_report"]

#: Metric name → (function, what it says), in report order.
METRICS = {
    "roc_auc": (roc_auc, "ROC AUC"),
    "pr_auc": (pr_auc, "PR AUC"),
    "top_decile_lift": (top_decile_lift, "top-decile lift"),
}
HEADLINE = "roc_auc"
ScalingChoice = Literal["run", "own"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class MetricComparison:
    """One metric for both models and their difference (federated − local), with intervals."""

    metric: str
    federated: Interval
    local: Interval
    difference: Interval
    p_not_better: float  # share of resamples where the federated model did not beat the local one


@dataclass
class BenefitReport:
    """Everything the report says, as written to ``<work_dir>/benefit/<run_id>.json``."""

    partner: str
    run_id: str
    model_version: str
    task: str
    purpose: str
    verdict: Literal["helped", "hurt", "unclear"]
    answer: str
    holdout_customers: int
    holdout_positives: int
    training_customers: int
    n_excluded: int
    resamples: int
    degenerate_resamples: int
    level: float
    seed: int
    scaling: ScalingChoice
    training: dict[str, Any]
    metrics: list[MetricComparison]
    job_id: str
    at: str
    files: dict[str, str] = field(default_factory=dict)


# --- the local-only twin -------------------------------------------------------------------------


def own_scaling(frame: pd.DataFrame, task: TaskSchema) -> Scaling:
    """Mean and (population) std of the numeric features on the partner's own training rows."""
    scaling: Scaling = {}
    for name in task.numeric_features:
        values = frame[name].astype("float64").dropna() if name in frame else pd.Series(dtype="float64")
        mean = float(values.mean()) if len(values) else 0.0
        std = float(values.std(ddof=0)) if len(values) > 1 else 1.0
        scaling[name] = (mean, std if std > 1e-12 else 1.0)
    return scaling


def local_twin_scores(x_train: np.ndarray, y_train: np.ndarray, x_holdout: np.ndarray,
                      training: RunTraining) -> np.ndarray:
    """Train the local-only twin round by round as the run's fit orders did; its hold-out scores."""
    from fedcrm.models.nets import build_model  # noqa: PLC0415 - torch only when a report is made
    from fedcrm.models.train import predict_scores, train_local  # noqa: PLC0415

    model = build_model(training.architecture, x_train.shape[1], seed=training.seed)  # type: ignore[arg-type]
    for server_round in range(1, training.rounds + 1):
        # client/flower_app.train_config: the seed of a round's local training is seed + round.
        cfg = TrainConfig(epochs=training.local_epochs, learning_rate=training.learning_rate,
                          batch_size=training.batch_size, optimizer=training.optimizer,  # type: ignore[arg-type]
                          proximal_mu=training.proximal_mu, param_bound=training.param_bound,
                          seed=training.seed + server_round)
        train_local(model, x_train, y_train, cfg)
    return predict_scores(model, x_holdout)


# --- paired bootstrap ----------------------------------------------------------------------------


def resampled_metrics(y: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """ROC AUC, PR AUC and top-decile lift of many bootstrap resamples at once, shape ``(resamples,)`` each.

    A resample is given by ``counts[b, i]``, how often customer ``i`` was drawn. Instead of
    sorting every resample, the customers are sorted by score once and each metric is a
    weighted sum in that order (vectorised over resamples): the same definitions as
    ``fedcrm.models.metrics`` on the resampled arrays (tied scores share a threshold; a
    customer drawn twice is two tied copies). Only the lift's split of a group of *different*
    customers with exactly equal scores at the top-decile boundary may differ (taken in
    score-then-index order here, in draw order there).
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    positive = np.asarray(y, dtype=bool)[order]
    weights = counts[:, order].astype(np.float64)
    n = weights.sum(axis=1)
    pos_w = weights * positive
    starts = np.r_[0, np.flatnonzero(np.diff(np.asarray(scores, dtype=np.float64)[order])) + 1]
    pos_g = np.add.reduceat(pos_w, starts, axis=1)  # positives per distinct score, highest first
    neg_g = np.add.reduceat(weights - pos_w, starts, axis=1)
    n_pos, n_neg = pos_g.sum(axis=1), neg_g.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        neg_below = n_neg[:, None] - np.cumsum(neg_g, axis=1)  # negatives scored strictly lower
        roc = (pos_g * (neg_below + 0.5 * neg_g)).sum(axis=1) / (n_pos * n_neg)
        tp, fp = np.cumsum(pos_g, axis=1), np.cumsum(neg_g, axis=1)
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
        pr = (pos_g * precision).sum(axis=1) / n_pos  # sum over thresholds of (recall step) x precision
        k = np.ceil(0.1 * n)
        before = np.cumsum(weights, axis=1) - weights
        taken = np.clip(k[:, None] - before, 0.0, weights)  # units of each customer inside the top k
        lift = ((taken * positive).sum(axis=1) / k) / (n_pos / n)
    return {"roc_auc": roc, "pr_auc": pr, "top_decile_lift": lift}


def paired_bootstrap(y: np.ndarray, federated: np.ndarray, local: np.ndarray, *, resamples: int = 2000,
                     level: float = 0.95, seed: int = 0) -> tuple[list[MetricComparison], int]:
    """Every metric of both models with paired percentile intervals; also how many resamples were degenerate.

    Each resample is one draw of hold-out indices (with replacement) used for both models, so
    the interval of the difference reflects how the two models rank the *same* customers.
    A resample with only one class has no AUC and is left out of every metric alike.
    """
    y = np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = len(y)
    fed_parts: list[dict[str, np.ndarray]] = []
    loc_parts: list[dict[str, np.ndarray]] = []
    keep_parts = []
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))  # resamples per block: ~16 MB per (block, n) array
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        draws = rng.integers(0, n, (size, n)) + (np.arange(size) * n)[:, None]
        counts = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n)
        positives = counts @ y
        keep_parts.append((positives > 0) & (positives < n))
        fed_parts.append(resampled_metrics(y, federated, counts))
        loc_parts.append(resampled_metrics(y, local, counts))
    keep = np.concatenate(keep_parts)
    fed_draws = {m: np.concatenate([p[m] for p in fed_parts]) for m in METRICS}
    loc_draws = {m: np.concatenate([p[m] for p in loc_parts]) for m in METRICS}
    alpha = (1.0 - level) / 2.0
    quantiles = [100 * alpha, 100 * (1 - alpha)]

    def interval(estimate: float, draws: np.ndarray) -> Interval:
        low, high = np.percentile(draws, quantiles) if len(draws) else (math.nan, math.nan)
        return Interval(round(float(estimate), 6), round(float(low), 6), round(float(high), 6))

    out = []
    for name, (fn, _) in METRICS.items():
        f, loc = fed_draws[name][keep], loc_draws[name][keep]
        f_hat, l_hat = fn(y, federated), fn(y, local)
        diff = f - loc
        out.append(MetricComparison(name, interval(f_hat, f), interval(l_hat, loc), interval(f_hat - l_hat, diff),
                                    round(float(np.mean(diff <= 0)) if len(diff) else math.nan, 6)))
    return out, int((~keep).sum())


def verdict(headline: MetricComparison, level: float) -> tuple[Literal["helped", "hurt", "unclear"], str]:
    """The answer to "did joining help us?" from the headline metric's difference interval."""
    d = headline.difference
    label = METRICS[headline.metric][1]
    span = f"{label} {d.estimate:+.3f} (federated {headline.federated.estimate:.3f} vs local-only " \
           f"{headline.local.estimate:.3f}; {level:.0%} interval {d.low:+.3f} to {d.high:+.3f})"
    if d.low > 0:
        return "helped", f"Yes: joining helped. {span}"
    if d.high < 0:
        return "hurt", f"No: the local-only model is better on our hold-out. {span}"
    return "unclear", f"Not clearly: the difference is within the uncertainty of our hold-out. {span}"


# --- the job -------------------------------------------------------------------------------------


def benefit_report(config_path: Path, run_dir: Path, *, at: datetime | None = None, resamples: int = 2000,
                   level: float = 0.95, seed: int = 0, scaling: ScalingChoice = "run",
                   out_dir: Path | None = None) -> BenefitReport:
    """Compare a run's federated model with a local-only twin on the partner's own hold-out; write the report.

    Parameters
    ----------
    config_path
        The partner config (its ledger, key and ingested customers are used).
    run_dir
        A finished run directory (manifest, plan, status, task schema, statistics, final model).
    at
        Consent-as-of time (default: now).
    resamples, level, seed
        Paired-bootstrap resamples, interval level and the resampling seed.
    scaling
        ``run``: both models see the run's federated scaling; ``own``: the twin uses the
        partner's own training statistics (the partner that never joined).
    out_dir
        Where the report goes (default ``<work_dir>/benefit``).
    """
    if resamples < 100:
        raise ConfigError(f"resamples = {resamples}: a bootstrap interval needs at least 100 resamples")
    if not 0.5 <= level < 1.0:
        raise ConfigError(f"level = {level}: an interval level is between 0.5 and 1")
    session = PartnerSession(config_path)
    config = session.config
    if not config.label_column:
        raise ConfigError(f"{config.config_path}: no column has role 'label'; comparing models needs the outcome "
                          "(the task's label) for your own customers")
    run_dir = Path(run_dir).resolve()
    task = read_run_task(run_dir)
    model = read_run_model(run_dir, task)  # before any customer data is touched
    training = read_run_training(run_dir, model)
    run_scaling = read_run_scaling(run_dir)
    at = at or datetime.now(UTC)
    use = UsageContext(job_id=f"benefit-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}", partner=config.name,
                       model_version=f"{run_dir.name}:final", stage="benefit")
    ledger = Ledger.open(config.ledger_url, signing_key_path=config.ledger_key_path, origin=f"fedcrm/{config.name}")
    try:
        view = gate(load_customers(config), session.column_categories(), task.purpose, at,
                    session.task_columns(task, with_label=True), ledger=ledger, use=use,
                    vocabulary=vocabulary_for_gate(config, ledger))
    finally:
        ledger.close()
    frame = view.frame
    train, holdout = session.split(frame, validation=False), session.split(frame, validation=True)
    y_train, y_holdout = encode_labels(train, LABEL), encode_labels(holdout, LABEL)
    where = f"partner {config.name}"
    if not 0 < y_train.sum() < len(y_train):
        raise ConfigError(f"{where}: the consented training part ({len(train)} customers) lacks one class; "
                          "no local model can be trained")
    if not 0 < y_holdout.sum() < len(y_holdout):
        raise ConfigError(f"{where}: the local hold-out ({len(holdout)} customers, privacy.validation_fraction = "
                          f"{config.privacy.validation_fraction}) lacks one class; ranking metrics need both")
    twin_scaling = run_scaling if scaling == "run" else own_scaling(train, task)
    federated_scores = ScoringModel(model.architecture, model.arrays).scores(
        encode_features(holdout, task, run_scaling))
    local_scores = local_twin_scores(encode_features(train, task, twin_scaling), y_train,
                                     encode_features(holdout, task, twin_scaling), training)
    metrics, degenerate = paired_bootstrap(y_holdout, federated_scores, local_scores, resamples=resamples,
                                           level=level, seed=seed)
    headline = next(m for m in metrics if m.metric == HEADLINE)
    kind, answer = verdict(headline, level)
    report = BenefitReport(
        partner=config.name, run_id=run_dir.name, model_version=use.model_version, task=task.name,
        purpose=task.purpose, verdict=kind, answer=answer, holdout_customers=len(holdout),
        holdout_positives=int(y_holdout.sum()), training_customers=len(train), n_excluded=view.n_excluded,
        resamples=resamples, degenerate_resamples=degenerate, level=level, seed=seed, scaling=scaling,
        training=asdict(training), metrics=metrics, job_id=use.job_id, at=at.isoformat(),
    )
    write_benefit_report(report, out_dir or config.work_path / "benefit",
                         {"federated": federated_scores, "local": local_scores, "y": y_holdout})
    return report


# --- the outputs ---------------------------------------------------------------------------------


def report_table(report: BenefitReport):  # noqa: ANN201 - rich.table.Table, imported lazily
    """The report as a Rich table (one row per metric)."""
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"Did joining help {report.partner}? run {report.run_id}, hold-out of "
                        f"{report.holdout_customers:,} customers ({report.holdout_positives:,} positive)",
                  caption=f"{report.level:.0%} paired-bootstrap intervals, {report.resamples:,} resamples")
    for header in ("metric", "federated", "local-only", "federated − local", "P(not better)"):
        table.add_column(header, justify="left" if header == "metric" else "right")
    for m in report.metrics:
        diff = m.difference
        style = "green" if diff.low > 0 else "red" if diff.high < 0 else ""
        table.add_row(METRICS[m.metric][1],
                      f"{m.federated.estimate:.3f} [{m.federated.low:.3f}, {m.federated.high:.3f}]",
                      f"{m.local.estimate:.3f} [{m.local.low:.3f}, {m.local.high:.3f}]",
                      f"[{style}]{diff.estimate:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}][/]" if style else
                      f"{diff.estimate:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]",
                      f"{m.p_not_better:.3f}")
    return table


def _plot(report: BenefitReport, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(report.metrics), figsize=(4 * len(report.metrics), 3.6))
    for ax, m in zip(np.atleast_1d(axes), report.metrics, strict=True):
        for x, (name, value, colour) in enumerate((("local-only", m.local, "#7f7f7f"),
                                                   ("federated", m.federated, "#1f77b4"))):
            ax.errorbar([x], [value.estimate], yerr=[[value.estimate - value.low], [value.high - value.estimate]],
                        fmt="o", capsize=8, color=colour, markersize=8, label=name)
        ax.set_xticks([0, 1], ["local-only", "federated"])
        ax.set_xlim(-0.6, 1.6)
        ax.grid(axis="y", alpha=0.3)
        d = m.difference
        ax.set_title(f"{METRICS[m.metric][1]}\nfederated − local {d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]",
                     fontsize=9)
    fig.suptitle(report.answer.split(". ")[0] + f" — {report.partner}, run {report.run_id}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_benefit_report(report: BenefitReport, out_dir: Path, scores: dict[str, np.ndarray]) -> dict[str, str]:
    """Write ``<run_id>.json`` (report), ``<run_id>.txt`` (table), ``<run_id>.png`` (plot) and the hold-out scores.

    The scores file (label and both models' scores per hold-out customer, no identifiers)
    lets the partner's analysts redo the comparison with other metrics.
    """
    from rich.console import Console  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / report.run_id
    files = {"json": f"{base}.json", "table": f"{base}.txt", "plot": f"{base}.png", "scores": f"{base}.scores.csv"}
    report.files = files
    console = Console(record=True, width=120, file=open(os.devnull, "w"))  # noqa: SIM115 - recorded, not shown
    console.print(report_table(report))
    console.print(report.answer)
    _atomic_text(Path(files["table"]), console.export_text())
    console.file.close()
    _plot(report, Path(files["plot"]))
    pd.DataFrame({"label": scores["y"].astype(int), "federated": scores["federated"],
                  "local": scores["local"]}).to_csv(files["scores"], index=False)
    _atomic_text(Path(files["json"]), json.dumps(asdict(report), indent=2))
    return files
