"""Federated k-means from secure sums only (the coordinator's side; no Flower here).

Each step sends centres to the partners and gets back, summed over partners through SecAgg+
(:mod:`fedcrm.coordinator.secure_sum`), per cluster the count, the sum of the encoded
vectors, the SSE and the simplified-silhouette sum (:mod:`fedcrm.client.federated.kmeans`
computes a partner's share). No customer's point is ever sent, not even for initialisation:

1. **Moments**: one step with a single centre at the origin gives the consortium's mean of
   every encoded column (and the count).
2. **Candidates**: ``candidates_per_k × k`` random points drawn around that mean (numeric
   columns are standardised: N(0, s²) with the scale s of each candidate drawn from
   ``candidate_scales``, so that some candidates reach the heavy tails of CRM features — CDNOW's
   spend reaches 48 standard deviations, where N(0, 1) candidates never land; one-hot and boolean
   columns with the mean share's Bernoulli spread). One secure step assigns every customer to its nearest candidate; each
   candidate with customers becomes the *mean of at least the minimum count of real customers*
   at each partner that contributed (a cell under the minimum is withheld), weighted by its count.
3. **Seeds**: weighted k-means++ with restarts on those aggregated candidate means (scikit-learn
   on the coordinator: the k-means‖ idea of reclustering weighted candidates).
4. **Lloyd steps** through secure sums until the centres move less than ``tol`` (the fit is
   then ``converged``) or ``max_iter``; an empty (or wholly withheld) cluster keeps its centre. With
   ``federated_restarts`` > 1, steps 2-4 run that many times and the lowest federated inertia wins.

k is chosen among ``k_values`` by the federated simplified silhouette (inertia is reported
beside it, for an elbow). Each partner then labels its own customers with the final centres.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from fedcrm.errors import CoordinatorError
from fedcrm.logging import get_logger

log = get_logger(__name__)

#: ``centres (k × width) → secure sums of that step`` (cell names of ``fedcrm.protocol.segment_cells``).
StepFunction = Callable[[np.ndarray], dict[str, float]]


@dataclass(frozen=True)
class StepTotals:
    """A step's sums over partners, as arrays."""

    counts: np.ndarray
    sums: np.ndarray
    sse: np.ndarray
    silhouette: np.ndarray

    @property
    def inertia(self) -> float:
        """Sum of squared distances to the assigned centres (over customers not withheld)."""
        return float(self.sse.sum())

    @property
    def mean_silhouette(self) -> float:
        """Customer-weighted mean simplified silhouette."""
        total = self.counts.sum()
        return float(self.silhouette.sum() / total) if total > 0 else float("nan")


def totals(cells: dict[str, float], k: int, width: int) -> StepTotals:
    """Arrays from a step's cells (a withheld cell is absent: it counts as nothing)."""
    counts = np.array([cells.get(f"seg.{j}.count", 0.0) for j in range(k)])
    sums = np.array([[cells.get(f"seg.{j}.sum.{d}", 0.0) for d in range(width)] for j in range(k)])
    sse = np.array([cells.get(f"seg.{j}.sse", 0.0) for j in range(k)])
    silhouette = np.array([cells.get(f"seg.{j}.silhouette", 0.0) for j in range(k)])
    return StepTotals(counts=np.rint(counts), sums=sums.reshape(k, width), sse=sse, silhouette=silhouette)


@dataclass
class KMeansResult:
    """One federated k-means fit."""

    k: int
    centroids: np.ndarray
    counts: list[int]
    inertia: float
    silhouette: float
    iterations: int
    secure_steps: int
    history: list[float] = field(default_factory=list)
    #: Whether the last Lloyd step moved every centre less than ``tol`` (else ``max_iter`` stopped it).
    converged: bool = False

    def summary(self) -> dict[str, object]:
        """JSON-ready summary (centres in the standardised encoding)."""
        out = asdict(self)
        out["centroids"] = self.centroids.round(6).tolist()
        return out


@dataclass(frozen=True)
class KMeansSettings:
    """Settings of a federated k-means."""

    k_values: tuple[int, ...] = (2, 3, 4, 5, 6)
    max_iter: int = 30
    tol: float = 1e-4
    candidates_per_k: int = 40
    restarts: int = 10
    seed: int = 0
    #: Federated seedings per k (each its own candidates and Lloyd run); the lowest federated inertia is kept.
    federated_restarts: int = 1
    #: Scales (standard deviations) of the candidates' numeric columns, and how often each is drawn.
    candidate_scales: tuple[float, ...] = (1.0, 3.0, 10.0)
    candidate_scale_weights: tuple[float, ...] = (0.5, 0.3, 0.2)


def consortium_moments(step: StepFunction, width: int) -> tuple[np.ndarray, int]:
    """Mean encoded vector and customer count, from one secure step with one centre."""
    t = totals(step(np.zeros((1, width))), 1, width)
    n = int(t.counts[0])
    if n <= 0:
        raise CoordinatorError("federated k-means: no partner contributed any customer")
    return t.sums[0] / n, n


def draw_candidates(mean: np.ndarray, binary: Sequence[bool], m: int, rng: np.random.Generator,
                    scales: Sequence[float] = (1.0,), weights: Sequence[float] | None = None) -> np.ndarray:
    """``m`` random points in the encoded space around the consortium's mean (no customer's point).

    Numeric columns: ``mean + s · N(0, 1)`` with each candidate's scale ``s`` drawn from ``scales``
    (probabilities ``weights``); binary columns: the mean share plus its Bernoulli spread times N(0, 1).
    """
    width = len(mean)
    points = rng.standard_normal((m, width))
    binary_mask = np.asarray(binary, dtype=bool)
    p = np.clip(mean, 0.0, 1.0)
    spread = np.sqrt(p * (1 - p))
    probs = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    scale = rng.choice(np.asarray(scales, dtype=np.float64), size=m, p=probs)[:, None]
    points[:, binary_mask] = (p + spread * points)[:, binary_mask]
    points[:, ~binary_mask] = (mean + scale * points)[:, ~binary_mask]
    return points


def seeds_from_candidates(step: StepFunction, mean: np.ndarray, binary: Sequence[bool], k: int,
                          settings: KMeansSettings, rng: np.random.Generator) -> np.ndarray:
    """k seeds: weighted k-means++ on the aggregated means of customers nearest to random candidates."""
    from sklearn.cluster import KMeans

    width = len(mean)
    m = max(settings.candidates_per_k * k, 4 * k)
    candidates = draw_candidates(mean, binary, m, rng, settings.candidate_scales, settings.candidate_scale_weights)
    t = totals(step(candidates), m, width)
    keep = t.counts > 0
    if keep.sum() < k:
        raise CoordinatorError(f"federated k-means: only {int(keep.sum())} candidate cells met the partners' "
                               f"minimum count; cannot seed {k} clusters")
    points = t.sums[keep] / t.counts[keep][:, None]
    model = KMeans(n_clusters=k, n_init=settings.restarts, random_state=int(rng.integers(2**31)))
    model.fit(points, sample_weight=t.counts[keep])
    return model.cluster_centers_


def lloyd(step: StepFunction, centres: np.ndarray, settings: KMeansSettings) -> tuple[np.ndarray, StepTotals, int,
                                                                                       list[float], bool]:
    """Lloyd iterations from ``centres`` through secure steps; returns the last step's totals and convergence too."""
    k, width = centres.shape
    history: list[float] = []
    t = totals(step(centres), k, width)
    iterations = 1
    while True:
        history.append(t.inertia)
        moved = np.where(t.counts[:, None] > 0, t.sums / np.maximum(t.counts, 1)[:, None], centres)
        shift = float(np.max(np.linalg.norm(moved - centres, axis=1)))
        centres = moved
        t = totals(step(centres), k, width)
        iterations += 1
        if shift <= settings.tol or iterations > settings.max_iter:
            break
    history.append(t.inertia)
    return centres, t, iterations, history, shift <= settings.tol


def fit_k(step: StepFunction, k: int, mean: np.ndarray, binary: Sequence[bool], settings: KMeansSettings,
          rng: np.random.Generator) -> KMeansResult:
    """Federated k-means for one k (the best of ``settings.federated_restarts`` seedings by federated inertia)."""
    best: KMeansResult | None = None
    steps = 0
    for _ in range(max(1, settings.federated_restarts)):
        seeds = seeds_from_candidates(step, mean, binary, k, settings, rng)
        centres, t, iterations, history, converged = lloyd(step, seeds, settings)
        steps += iterations + 1
        fit = KMeansResult(k=k, centroids=centres, counts=[int(c) for c in t.counts], inertia=t.inertia,
                           silhouette=t.mean_silhouette, iterations=iterations, secure_steps=0, history=history,
                           converged=converged)
        if best is None or fit.inertia < best.inertia:
            best = fit
    assert best is not None
    best.secure_steps = steps
    return best


def federated_kmeans(step: StepFunction, width: int, binary: Sequence[bool],
                     settings: KMeansSettings = KMeansSettings()) -> tuple[KMeansResult, list[KMeansResult]]:
    """Fit every k of ``settings.k_values``; the chosen one has the highest federated silhouette."""
    rng = np.random.default_rng(settings.seed)
    mean, n = consortium_moments(step, width)
    fits = []
    for k in settings.k_values:
        fit = fit_k(step, k, mean, binary, settings, rng)
        log.info("federated k-means", extra={"k": k, "inertia": fit.inertia, "silhouette": fit.silhouette})
        fits.append(fit)
    best = max(fits, key=lambda f: (f.silhouette, -f.k))
    return best, fits


def binary_columns(task) -> list[bool]:  # noqa: ANN001 — TaskSchema
    """Which encoded columns are 0/1 (one-hot slots and booleans)."""
    out: list[bool] = []
    for f in task.features:
        out += [f.type != "numeric"] * f.width
    return out
