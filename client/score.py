"""Local scoring: apply a run's final model to the partner's current customers.

Everything stays at the partner. The model is read from a run directory only after
three checks: its format cannot execute code when loaded (suffix *and* content), its
SHA-256 matches the run's manifest, and it was trained for the run's task schema.
Customers reach the model only through the consent gate, for the task's purpose, and
the gate records the scoring job in the partner's ledger. The output is keyed by the
partner's own customer id (from the partner-local id map), which never leaves the
partner.

The model runs as a few numpy matrix products on the arrays of its safetensors file, so
plain scoring never imports torch (its import alone cost more than scoring ~1,300 customers).
``--explain K`` adds each customer's top K reasons (``client/explain.py``: integrated gradients in
closed form, also without torch, in the partner's own column names and values); ``--explain-steps N``
computes them numerically with Captum instead (a cross-check that loads torch).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fedcrm.client.config import PartnerConfig, load_partner_config
from fedcrm.client.consented import ensure_consented
from fedcrm.client.features import Scaling, encode_features
from fedcrm.client.ingest import LABEL, SUBJECT, load_customers, load_id_map
from fedcrm.client.vocabulary import vocabulary_for_gate
from fedcrm.consent.gate import ConsentedView, UsageContext, gate
from fedcrm.consent.ledger import Ledger
from fedcrm.errors import ConfigError, ModelIntegrityError
from fedcrm.protocol import TaskSchema
from fedcrm.run_artifacts import (  # noqa: F401 - re-exported: the model checks partners rely on
    SAFE_SUFFIX,
    UNSAFE_SUFFIXES,
    check_safe_model_file,
    find_model_file,
    read_run_model,
    read_run_scaling,
    read_run_task,
)

CUSTOMER_ID = "customer_id"
OUTPUT_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class ScoreResult:
    """What a scoring job wrote and recorded."""

    path: Path
    rows: int
    n_excluded: int
    job_id: str
    model_version: str
    explain_gap: float | None = None  # largest integrated-gradients completeness gap (logit units)


@dataclass(frozen=True)
class ScoringModel:
    """A trained model's arrays and architecture, evaluated with numpy (no torch)."""

    architecture: str
    arrays: dict[str, np.ndarray]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The model's logit for every row (the same arithmetic as ``fedcrm.models.nets``)."""
        a = self.arrays
        if self.architecture == "logistic":
            out = x @ a["linear.weight"].T + a["linear.bias"]
        elif self.architecture == "mlp":
            hidden = np.maximum(x @ a["net.0.weight"].T + a["net.0.bias"], 0.0)
            out = hidden @ a["net.2.weight"].T + a["net.2.bias"]
        else:
            raise ModelIntegrityError(f"unknown architecture '{self.architecture}' in the model's sidecar")
        return out[:, 0].astype(np.float64)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Predicted probability of the positive class."""
        return 1.0 / (1.0 + np.exp(-self.logits(x)))


def load_scoring_model(run_dir: Path, task: TaskSchema, label: str = "final") -> ScoringModel:
    """The run's model, after format, manifest-hash and task-schema checks (``fedcrm.run_artifacts``)."""
    model = read_run_model(run_dir, task, label)
    return ScoringModel(model.architecture, model.arrays)


# --- scores and explanations -----------------------------------------------------------------


def deciles(scores: np.ndarray) -> np.ndarray:
    """Decile by rank, 1 = the highest-scoring 10%; sizes differ by at most one."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(len(scores))
    return (ranks * 10) // max(len(scores), 1) + 1


def score_table(view: ConsentedView, model: ScoringModel, task: TaskSchema, scaling: Scaling, *,
                config: PartnerConfig | None = None, explain: int = 0,
                steps: int | None = None) -> tuple[pd.DataFrame, float | None]:
    """Score and decile every subject in a consented view; with ``explain``, its top reasons too.

    Returns the table and, when explaining, the largest integrated-gradients completeness gap.
    """
    frame = ensure_consented(view, "score_table").frame
    x = encode_features(frame, task, scaling)
    scores = model.scores(x)
    table = pd.DataFrame({SUBJECT: frame[SUBJECT].to_numpy(), "score": scores, "decile": deciles(scores)})
    if not explain:
        return table, None
    if config is None:
        raise ValueError("explanations need the partner config (to name its own columns)")
    from fedcrm.client.explain import baseline_vector, feature_attributions, reason_columns

    attributions, gap = feature_attributions(model.architecture, model.arrays, x, baseline_vector(task, scaling),
                                             task, steps=steps)
    reasons = reason_columns(frame.reset_index(drop=True), attributions, task, config, explain)
    return pd.concat([table, reasons.reset_index(drop=True)], axis=1), gap


# --- the job -------------------------------------------------------------------------------


def _consented(config: PartnerConfig, task: TaskSchema, use: UsageContext, at: datetime) -> ConsentedView:
    held = config.feature_columns()
    categories = {feature: config.columns[column].category or "" for feature, column in held.items()}
    if config.label_column:
        categories[LABEL] = config.columns[config.label_column].category or ""
    columns = [f.name for f in task.features if f.name in held]  # features only: scoring never asks for the label
    ledger = Ledger.open(config.ledger_url, signing_key_path=config.ledger_key_path, origin=f"fedcrm/{config.name}")
    try:
        return gate(load_customers(config), categories, task.purpose, at, columns, ledger=ledger, use=use,
                    vocabulary=vocabulary_for_gate(config, ledger))
    finally:
        ledger.close()


def _write(table: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".parquet":
        table.to_parquet(tmp, index=False)
    else:  # Arrow's CSV writer: ~5x faster than pandas' on 100k explained rows, same CSV for readers
        import pyarrow as pa  # noqa: PLC0415
        from pyarrow import csv  # noqa: PLC0415

        csv.write_csv(pa.Table.from_pandas(table, preserve_index=False), tmp)
    os.replace(tmp, out)  # never leave half a score file behind


def score_partner(config_path: Path, run_dir: Path, out: Path | None = None, *, at: datetime | None = None,
                  explain: int = 0, steps: int | None = None) -> ScoreResult:
    """Score the partner's consented customers with a run's final model and write the table.

    Parameters
    ----------
    config_path
        The partner config (its key, ledger and ingested data are used).
    run_dir
        A finished run directory (manifest, task schema, statistics, final model).
    out
        ``.csv`` or ``.parquet`` output (default: ``<work_dir>/scores/<run_id>.csv``).
    at
        Consent-as-of time (default: now).
    explain
        Also write each customer's top ``explain`` reasons (0: none).
    steps
        ``None`` (default): exact integrated gradients (closed form); a number: Captum's numerical
        integration with that many steps (loads torch; the independent cross-check).
    """
    config = load_partner_config(config_path)
    run_dir = Path(run_dir).resolve()
    out = Path(out) if out is not None else config.work_path / "scores" / f"{run_dir.name}.csv"
    if out.suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(f"{out}: scores are written as {' or '.join(OUTPUT_SUFFIXES)}")
    task = read_run_task(run_dir)
    scaling = read_run_scaling(run_dir)
    model = load_scoring_model(run_dir, task)  # before any customer data is touched
    at = at or datetime.now(UTC)
    use = UsageContext(job_id=f"score-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}", partner=config.name,
                       model_version=f"{run_dir.name}:final", stage="score")
    view = _consented(config, task, use, at)
    table, gap = score_table(view, model, task, scaling, config=config, explain=explain, steps=steps)
    ids = load_id_map(config).drop_duplicates(SUBJECT)
    own = pd.Series(ids[CUSTOMER_ID].astype(object).to_numpy(), index=ids[SUBJECT].astype(object).to_numpy())
    keyed = table.assign(**{CUSTOMER_ID: table[SUBJECT].map(own)})
    if keyed[CUSTOMER_ID].isna().any():
        raise ConfigError(f"{config.work_path}: id map lacks pseudonyms of consented customers; re-run ingestion")
    keyed = keyed[[CUSTOMER_ID, *[c for c in table.columns if c != SUBJECT]]]
    _write(keyed.sort_values("score", ascending=False, kind="stable").reset_index(drop=True), out)
    return ScoreResult(out, len(keyed), view.n_excluded, use.job_id, use.model_version, gap)
