"""Encode a consented customer frame into the model's feature matrix, by the task schema.

Feature width and order come only from the task schema (never from one partner's local
data): every categorical feature gets one column per vocabulary value plus the unseen
slot, so partners whose local data lack a category, or a whole column, still produce
identical vectors. Numeric scaling comes from the federated statistics round.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedcrm.protocol import TaskSchema

Scaling = dict[str, tuple[float, float]]


def encode_features(frame: pd.DataFrame, task: TaskSchema, scaling: Scaling) -> np.ndarray:
    """Matrix of shape (rows, task.width), float32, in the task's column order."""
    n = len(frame)
    blocks: list[np.ndarray] = []
    for feature in task.features:
        present = feature.name in frame.columns
        if feature.type == "numeric":
            mean, std = scaling.get(feature.name, (0.0, 1.0))
            raw = frame[feature.name].astype("float64").to_numpy() if present else np.full(n, np.nan)
            col = (raw - mean) / (std if std > 0 else 1.0)
            blocks.append(np.nan_to_num(col, nan=0.0)[:, None])  # missing → the federated mean
        elif feature.type == "boolean":
            raw = frame[feature.name].astype("float64").to_numpy() if present else np.full(n, np.nan)
            blocks.append(np.nan_to_num(raw, nan=0.0)[:, None])
        else:
            unseen = len(feature.vocabulary)
            if present:  # vectorised lookup: code -1 (not in the vocabulary, or missing) is the unseen slot
                codes = pd.Categorical(frame[feature.name].astype(object), categories=list(feature.vocabulary)).codes
                idx = np.where(codes < 0, unseen, codes).astype(np.int64)
            else:
                idx = np.full(n, unseen, dtype=np.int64)
            onehot = np.zeros((n, feature.width), dtype=np.float64)
            onehot[np.arange(n), idx] = 1.0
            blocks.append(onehot)
    matrix = np.hstack(blocks) if blocks else np.zeros((n, 0))
    return matrix.astype(np.float32)


def encode_labels(frame: pd.DataFrame, label_column: str) -> np.ndarray:
    """Label vector (float32 0/1)."""
    return frame[label_column].astype("float32").to_numpy()
