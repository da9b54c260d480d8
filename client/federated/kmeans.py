"""One federated k-means step on the partner's own customers (numpy only, no Flower).

The partner assigns each of its customers to the nearest centre it was sent and returns,
per cluster: the number of customers, the sum of their encoded vectors, the sum of squared
distances (SSE, for the federated inertia) and the sum of the *simplified silhouette*
``(b − a) / max(a, b)`` with ``a`` the distance to the own centre and ``b`` to the nearest other
one (Hruschka et al.'s centroid silhouette; the pairwise silhouette would need other partners'
points). A cluster holding fewer than ``min_count`` of the partner's customers is withheld
whole: its customers add nothing to any cell of this step (never a zero posing as a value).
The labels stay at home (:func:`assign`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedcrm.protocol import segment_cells


@dataclass(frozen=True)
class StepSums:
    """A partner's cells of one k-means step and how many clusters it withheld."""

    cells: dict[str, float]
    withheld: int


def distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, shape (rows, k), float64."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each customer's segment: index of the nearest centre (ties to the lower index)."""
    return np.argmin(distances(x, centroids), axis=1)


def step_sums(x: np.ndarray, centroids: np.ndarray, *, min_count: int) -> StepSums:
    """Cells (names of :func:`fedcrm.protocol.segment_cells`) of one step over this partner's ``x``."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    k, width = c.shape
    d2 = distances(x, c)
    labels = np.argmin(d2, axis=1)
    own = np.sqrt(d2[np.arange(len(x)), labels])
    if k > 1:
        other = d2.copy()
        other[np.arange(len(x)), labels] = np.inf
        nearest_other = np.sqrt(other.min(axis=1))
        denom = np.maximum(own, nearest_other)
        silhouette = np.where(denom > 0, (nearest_other - own) / np.where(denom > 0, denom, 1.0), 0.0)
    else:
        silhouette = np.zeros(len(x))
    cells: dict[str, float] = {}
    withheld = 0
    for j in range(k):
        members = labels == j
        n = int(members.sum())
        if n == 0:
            continue
        if n < min_count:
            withheld += 1
            continue
        cells[f"seg.{j}.count"] = float(n)
        cells[f"seg.{j}.sse"] = float((own[members] ** 2).sum())
        cells[f"seg.{j}.silhouette"] = float(silhouette[members].sum())
        sums = x[members].sum(axis=0)
        for dim in range(width):
            cells[f"seg.{j}.sum.{dim}"] = float(sums[dim])
    assert set(cells) <= set(segment_cells(k, width))
    return StepSums(cells=cells, withheld=withheld)
