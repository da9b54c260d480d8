"""Partner side of federated k-means and the coordinator's driver, without Flower: sums equal a
framework-free computation, small clusters are withheld, and federated k-means matches pooled k-means
on well-separated data split across partners."""

from __future__ import annotations

import numpy as np
import pytest

from fedcrm.client.federated.kmeans import assign, step_sums
from fedcrm.coordinator.analytics_kmeans import KMeansSettings, federated_kmeans, totals
from fedcrm.protocol import segment_cells
from fedcrm.secure_vector import SecureVectorCodec


def test_step_sums_equal_numpy_and_withhold_clusters_under_the_minimum() -> None:
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(0, 1, (50, 3)), rng.normal(6, 1, (4, 3))])  # a cluster of 4 customers
    centres = np.array([[0.0, 0, 0], [6.0, 6, 6]])
    out = step_sums(x, centres, min_count=10)
    labels = assign(x, centres)
    assert out.withheld == 1 and "seg.1.count" not in out.cells and not any(c.startswith("seg.1.") for c in out.cells)
    members = x[labels == 0]
    assert out.cells["seg.0.count"] == len(members)
    assert [out.cells[f"seg.0.sum.{d}"] for d in range(3)] == pytest.approx(members.sum(0).tolist())
    assert out.cells["seg.0.sse"] == pytest.approx(((members - centres[0]) ** 2).sum())
    assert set(out.cells) <= set(segment_cells(2, 3))


def test_federated_kmeans_matches_pooled_on_separated_clusters() -> None:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    means = np.array([[0, 0], [5, 5], [0, 6]])
    data = [np.vstack([rng.normal(m, 0.7, (rng.integers(60, 120), 2)) for m in means]) for _ in range(3)]
    codec = SecureVectorCodec()

    def step(centres: np.ndarray) -> dict[str, float]:
        names = segment_cells(*centres.shape)
        encoded = [codec.encode(names, step_sums(x, centres, min_count=10).cells) for x in data]
        return codec.decode(names, sum(encoded) / len(encoded), len(encoded))

    best, fits = federated_kmeans(step, 2, [False, False], KMeansSettings(k_values=(2, 3, 4), seed=0))
    assert best.k == 3 and [f.k for f in fits] == [2, 3, 4]
    pooled = np.vstack(data)
    reference = KMeans(3, n_init=10, random_state=0).fit(pooled)
    labels = np.concatenate([assign(x, best.centroids) for x in data])
    assert adjusted_rand_score(reference.labels_, labels) > 0.99
    inertia = ((pooled - best.centroids[labels]) ** 2).sum()
    assert inertia <= reference.inertia_ * 1.01
    t = totals(step(best.centroids), 3, 2)
    assert t.counts.sum() == len(pooled) and t.inertia == pytest.approx(inertia, rel=1e-9)
