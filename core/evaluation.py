"""Neutral evaluation on a common test set: federated, pooled and local-only models.

Used by ``fedcrm demo`` and the benchmark harness, never by a partner or the
coordinator. The pooled model is the reference a federation tries to match (training
on everyone's rows in one place, which law and contracts forbid in reality); the
local-only models are what each partner could do alone. All three use the same task
schema encoding, architecture and test set, so the comparison is like for like.
Rows are read through the client's ingestion module (the only code that reads
exports), with a throw-away key: evaluation needs labels and features, not identities.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedcrm.client.config import load_partner_config
from fedcrm.client.features import Scaling, encode_features, encode_labels
from fedcrm.client.ingest import LABEL, IngestReport, iter_raw_chunks, parse_chunk
from fedcrm.models.metrics import binary_metrics
from fedcrm.models.nets import build_model
from fedcrm.models.params import set_arrays
from fedcrm.models.train import TrainConfig, predict_scores, train_local
from fedcrm.protocol import TaskSchema


@dataclass(frozen=True)
class TrainingRecipe:
    """Architecture and optimiser settings shared by every model in a comparison."""

    architecture: str = "mlp"
    epochs: int = 10
    learning_rate: float = 0.01
    batch_size: int = 64
    seed: int = 0


def load_rows(config_path: Path) -> pd.DataFrame:
    """Typed rows of one export, parsed by its partner config (rejected rows dropped)."""
    config = load_partner_config(config_path)
    if config.source.level == "transaction":  # one row per purchase: aggregated per customer first
        from fedcrm.client.transaction_ingest import customer_rows  # noqa: PLC0415

        return customer_rows(config)
    key = secrets.token_bytes(32)
    report = IngestReport(source=config.resolve(config.source.path))
    seen: dict[str, int] = {}
    frames = [parse_chunk(chunk, config, key, report, seen)[0] for chunk in iter_raw_chunks(config)]
    return pd.concat(frames, ignore_index=True)


def local_scaling(frame: pd.DataFrame, task: TaskSchema) -> Scaling:
    """Mean and std of numeric features computed on one frame (pooled or one partner)."""
    scaling: Scaling = {}
    for name in task.numeric_features:
        values = frame[name].astype("float64") if name in frame else pd.Series(dtype="float64")
        values = values.dropna()
        mean = float(values.mean()) if len(values) else 0.0
        std = float(values.std(ddof=0)) if len(values) > 1 else 1.0
        scaling[name] = (mean, std if std > 1e-12 else 1.0)
    return scaling


def train_model(frame: pd.DataFrame, task: TaskSchema, scaling: Scaling, recipe: TrainingRecipe):  # noqa: ANN201
    """Train a model of the recipe's architecture on one frame."""
    model = build_model(recipe.architecture, task.width, seed=recipe.seed)  # type: ignore[arg-type]
    cfg = TrainConfig(epochs=recipe.epochs, learning_rate=recipe.learning_rate, batch_size=recipe.batch_size,
                      seed=recipe.seed)
    train_local(model, encode_features(frame, task, scaling), encode_labels(frame, LABEL), cfg)
    return model


def score(model, frame: pd.DataFrame, task: TaskSchema, scaling: Scaling) -> np.ndarray:  # noqa: ANN001
    """Positive-class probabilities for a frame."""
    return predict_scores(model, encode_features(frame, task, scaling))


def evaluate_scores(frame: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC, top-decile lift against the frame's labels."""
    return binary_metrics(encode_labels(frame, LABEL), scores)


def federated_model(run_dir: Path, task: TaskSchema, label: str = "final"):  # noqa: ANN201
    """A model of a run (``final`` or ``round-<k>``, hash-checked) and the federated scaling it was trained with."""
    from fedcrm.run_artifacts import load_run_model  # the root package never imports a role

    _, arrays, meta = load_run_model(run_dir, label)
    model = build_model(meta["architecture"], int(meta["n_features"]))
    set_arrays(model, arrays)
    stats = json.loads((run_dir / "metrics" / "statistics.json").read_text())
    scaling = {k: (float(v[0]), float(v[1])) for k, v in stats["scaling"].items()}
    return model, scaling
