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
    """Matrix of shape (rows, task.width), float32, in the task's column order.

    Written column by column into one float32 matrix (no float64 one-hot blocks, no
    final copy); categorical columns already of pandas ``category`` dtype are looked up
    through their few categories, not per row.
    """
    n = len(frame)
    matrix = np.zeros((n, task.width), dtype=np.float32)
    offset = 0
    for feature in task.features:
        present = feature.name in frame.columns
        if feature.type == "numeric":
            mean, std = scaling.get(feature.name, (0.0, 1.0))
            raw = frame[feature.name].astype("float64").to_numpy() if present else np.full(n, np.nan)
            col = (raw - mean) / (std if std > 0 else 1.0)
            matrix[:, offset] = np.nan_to_num(col, nan=0.0)  # missing → the federated mean
        elif feature.type == "boolean":
            raw = frame[feature.name].astype("float64").to_numpy() if present else np.full(n, np.nan)
            matrix[:, offset] = np.nan_to_num(raw, nan=0.0)
        else:
            unseen = len(feature.vocabulary)
            if present:  # vectorised lookup: code -1 (not in the vocabulary, or missing) is the unseen slot
                idx = _vocabulary_codes(frame[feature.name], list(feature.vocabulary), unseen)
            else:
                idx = np.full(n, unseen, dtype=np.int64)
            matrix[np.arange(n), offset + idx] = 1.0
        offset += feature.width
    return matrix


def _vocabulary_codes(values: pd.Series, vocabulary: list[str], unseen: int) -> np.ndarray:
    """Position of each value in ``vocabulary`` (``unseen`` for others and missing values)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        # Map the column's own (few) categories to the vocabulary, then index by code.
        lookup = pd.Index(vocabulary).get_indexer(values.cat.categories.astype(object))
        lookup = np.append(np.where(lookup < 0, unseen, lookup), unseen)  # code -1 (missing) → last entry
        return lookup[values.cat.codes.to_numpy()].astype(np.int64)
    codes = pd.Categorical(values.astype(object), categories=vocabulary).codes
    return np.where(codes < 0, unseen, codes).astype(np.int64)


def encode_labels(frame: pd.DataFrame, label_column: str) -> np.ndarray:
    """Label vector (float32 0/1)."""
    return frame[label_column].astype("float32").to_numpy()
