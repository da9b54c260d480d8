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
``--explain K`` adds each customer's top K reasons (``client/explain.py``: Captum's integrated
gradients, in the partner's own column names and values), and only then loads torch.
"""

from __future__ import annotations

import json
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

#: Suffixes of formats whose loaders run code (pickle and the formats built on it).
UNSAFE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".joblib", ".bin", ".ckpt", ".npy", ".npz"})
SAFE_SUFFIX = ".safetensors"
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


# --- the model ----------------------------------------------------------------------------


def check_safe_model_file(path: Path) -> None:
    """Refuse a model file whose format can execute code when loaded.

    Checked by suffix and by content: a pickle (protocol 2+) starts with ``0x80``, a
    ``torch.save`` zip with ``PK``; a safetensors file starts with an 8-byte little-endian
    header length followed by a JSON object.
    """
    if path.suffix.lower() in UNSAFE_SUFFIXES:
        raise ModelIntegrityError(
            f"{path}: refusing a '{path.suffix}' model: loading it can execute code; only {SAFE_SUFFIX} is accepted"
        )
    if path.suffix != SAFE_SUFFIX:
        raise ModelIntegrityError(f"{path}: refusing a '{path.suffix}' model; only {SAFE_SUFFIX} is accepted")
    with path.open("rb") as handle:
        head = handle.read(9)
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise ModelIntegrityError(f"{path}: the content is a pickle/torch archive, not safetensors; refusing to load it")
    size = path.stat().st_size
    if len(head) < 9 or head[8:9] != b"{" or int.from_bytes(head[:8], "little") > size - 8:
        raise ModelIntegrityError(f"{path}: not a safetensors file (bad header); refusing to load it")


def find_model_file(run_dir: Path, label: str = "final") -> Path:
    """The run's model file for ``label``, refusing any unsafe format lying there instead."""
    model_dir = run_dir / "model"
    candidates = sorted(p for p in model_dir.glob(f"{label}.*") if p.suffix != ".json") if model_dir.is_dir() else []
    for candidate in candidates:
        check_safe_model_file(candidate)
    if not candidates:
        raise ModelIntegrityError(f"{model_dir / (label + SAFE_SUFFIX)}: no such model (did the run succeed?)")
    return model_dir / f"{label}{SAFE_SUFFIX}"


def load_scoring_model(run_dir: Path, task: TaskSchema) -> ScoringModel:
    """The run's final model, after format, manifest-hash and task-schema checks."""
    from fedcrm.coordinator.registry import load_run_model

    find_model_file(run_dir)
    names, arrays, meta = load_run_model(run_dir, "final")
    if meta.get("task_schema_sha256") != task.sha256():
        raise ModelIntegrityError(
            f"{run_dir / 'model' / 'final.json'}: model was trained for task schema "
            f"{str(meta.get('task_schema_sha256'))[:12]}…, not the run's {task.sha256()[:12]}…"
        )
    if int(meta["n_features"]) != task.width:
        raise ModelIntegrityError(f"{run_dir / 'model' / 'final.json'}: {meta['n_features']} inputs, the task has "
                                  f"{task.width}")
    return ScoringModel(str(meta["architecture"]), dict(zip(names, arrays, strict=True)))


def read_run_task(run_dir: Path) -> TaskSchema:
    """The task schema the run trained for (``task_schema.json``)."""
    path = run_dir / "task_schema.json"
    try:
        return TaskSchema.model_validate_json(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: not a run directory (no task schema)") from exc


def read_run_scaling(run_dir: Path) -> Scaling:
    """Federated mean/std of numeric features from the run's statistics round."""
    path = run_dir / "metrics" / "statistics.json"
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: the run has no federated statistics; was it finalised?") from exc
    return {name: (float(v[0]), float(v[1])) for name, v in stats["scaling"].items()}


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
    from fedcrm.client.explain import DEFAULT_STEPS, baseline_vector, feature_attributions, reason_columns

    attributions, gap = feature_attributions(model.architecture, model.arrays, x, baseline_vector(task, scaling),
                                             task, steps=steps or DEFAULT_STEPS)
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
    else:
        table.to_csv(tmp, index=False)
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
        Also write each customer's top ``explain`` reasons (0: none, and torch is never loaded).
    steps
        Integration steps of the explanations (default ``fedcrm.client.explain.DEFAULT_STEPS``).
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
