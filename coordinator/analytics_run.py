"""A federated analytics run (ServerApp side): statistics, k-means segments, profiles, overlap.

Started like a training run (``fedcrm coordinator analytics RUN``: the plan carries an
``analytics`` section instead of training rounds). Every number that reaches the coordinator is
a sum over partners through SecAgg+ (:func:`fedcrm.coordinator.secure_sum.secure_sum`) or a PSI
count a partner released over its minimum count. Steps:

1. handshake, then the secure statistics round (scaling in the task's standardised encoding);
2. federated k-means for each k (:mod:`fedcrm.coordinator.analytics_kmeans`), k chosen by the
   federated simplified silhouette; partners label their own customers;
3. segment profiles and consortium distributions (histograms on edges fixed from the secure
   statistics, never from a partner's data), one secure sum;
4. customer overlap of the requested partner pairs (one PSI session per identifier kind).

Results (aggregates only, every cell under the report's minimum count withheld) go to
``analytics/results.json`` in the run directory; :mod:`fedcrm.coordinator.analytics_report`
turns them into the HTML + JSON report with plots.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedcrm.coordinator.analytics_kmeans import KMeansSettings, binary_columns, federated_kmeans
from fedcrm.coordinator.analytics_overlap import overlap_count
from fedcrm.coordinator.secure_sum import secure_sum
from fedcrm.coordinator.workflows import StageGrid
from fedcrm.logging import get_logger
from fedcrm.protocol import (
    DEFAULT_MIN_COUNT,
    PartnerName,
    SecureSumReceipt,
    SegmentProfileOrder,
    SegmentSumsOrder,
    TaskSchema,
    profile_cells,
    segment_cells,
)

log = get_logger(__name__)

#: Standard-deviation multiples of the histogram edges around the federated mean.
HISTOGRAM_Z = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0)


class AnalyticsSettings(BaseModel):
    """What an analytics run computes (the plan's ``analytics`` section)."""

    model_config = ConfigDict(extra="forbid")

    k_values: tuple[int, ...] = Field((2, 3, 4, 5, 6), min_length=1)
    max_iter: int = Field(30, ge=1, le=500)
    candidates_per_k: int = Field(40, ge=2, le=500)
    federated_restarts: int = Field(1, ge=1, le=20, description="Federated seedings per k; lowest inertia kept")
    seed: int = 0
    overlap_pairs: list[tuple[PartnerName, PartnerName]] = Field(default_factory=list)
    overlap_identifiers: tuple[str, ...] = ("email", "phone")
    overlap_purpose: str = "audience_overlap"
    report_min_count: int = Field(DEFAULT_MIN_COUNT, ge=1, description="No number over fewer customers is reported")


def histogram_edges(task: TaskSchema, scaling: dict[str, tuple[float, float]]) -> dict[str, tuple[float, ...]]:
    """Bin edges of each numeric feature's distribution, from the federated mean and deviation only."""
    return {name: tuple(round(mean + z * std, 6) for z in HISTOGRAM_Z)
            for name, (mean, std) in scaling.items() if name in task.numeric_features}


def segment_profiles(sums: dict[str, float], task: TaskSchema, k: int, min_count: int) -> list[dict[str, Any]]:
    """Per segment: count, numeric means and deviations, category shares; cells under ``min_count`` withheld."""
    out = []
    for j in range(k):
        n = sums.get(f"profile.{j}.count", 0.0)
        if n < min_count:
            out.append({"segment": j, "customers": None, "withheld": True})
            continue
        entry: dict[str, Any] = {"segment": j, "customers": int(round(n)), "numeric": {}, "shares": {}}
        for f in task.features:
            if f.type == "numeric":
                c = sums.get(f"profile.{j}.{f.name}.count", 0.0)
                if c < min_count:
                    continue
                mean = sums[f"profile.{j}.{f.name}.sum"] / c
                var = max(sums[f"profile.{j}.{f.name}.sumsq"] / c - mean * mean, 0.0)
                entry["numeric"][f.name] = {"mean": round(mean, 6), "std": round(float(np.sqrt(var)), 6),
                                            "customers": int(round(c))}
            elif f.type == "boolean":
                c = sums.get(f"profile.{j}.{f.name}.count", 0.0)
                t = sums.get(f"profile.{j}.{f.name}=true", 0.0)
                if c >= min_count and t >= min_count and c - t >= min_count:
                    entry["shares"][f.name] = {"true": round(t / c, 6)}
            else:
                shares = {}
                for name in f.encoded_names():
                    c = sums.get(f"profile.{j}.{name}", 0.0)
                    if c >= min_count:
                        shares[name.split("=", 1)[1]] = round(c / n, 6)
                if shares:
                    entry["shares"][f.name] = shares
        out.append(entry)
    return out


def distributions(sums: dict[str, float], edges: dict[str, tuple[float, ...]], min_count: int) -> dict[str, Any]:
    """Consortium histograms; a bin under ``min_count`` is withheld (None), never shown as zero."""
    out = {}
    for name, cuts in edges.items():
        counts = [sums.get(f"hist.{name}.{b}", 0.0) for b in range(len(cuts) + 1)]
        out[name] = {"edges": list(cuts),
                     "counts": [int(round(c)) if c >= min_count else None for c in counts]}
    return out


def run_analytics(fed: Any, grid: Any) -> dict[str, Any]:
    """The whole analytics run for the ServerApp's ``Federation``; returns (and writes) the results."""
    settings = AnalyticsSettings.model_validate(fed.plan.analytics)
    stage_grid = StageGrid(grid, fed.cfg.stage_timeout)
    fed.recorder.event("run_start", run_id=fed.plan.run_id, aggregation="secagg", analytics=True)
    node_ids = fed.handshake(stage_grid)
    fed.secure_statistics(stage_grid, node_ids)
    secure = fed.secure_settings()
    codec = secure.codec
    codec_fields = {"fraction_bits": codec.fraction_bits, "limbs": codec.limbs,
                    "quantization_range": codec.quantization_range, "modulus_range": codec.modulus_range}
    task: TaskSchema = fed.task
    counter = {"round": 0, "sums": 0}

    def summed(order: Any, cells: tuple[str, ...], stage: str) -> dict[str, float]:
        result = secure_sum(stage_grid, order=dict(order.to_config()), cells=cells, node_ids=node_ids,
                            node_names=fed.node_names, settings=secure, server_round=order.server_round, stage=stage)
        for name, receipt in result.receipts.items():
            fed.recorder.head(name, order.server_round, stage, SecureSumReceipt.from_config(receipt).ledger_checkpoint)
        counter["sums"] += 1
        return result.sums

    def step(centres: np.ndarray) -> dict[str, float]:
        counter["round"] += 1
        cells = segment_cells(*centres.shape)
        order = SegmentSumsOrder(**fed._task_fields(counter["round"]), cells=cells, scaling=fed.scaling,
                                 centroids=tuple(tuple(float(v) for v in row) for row in centres), **codec_fields)
        return summed(order, cells, "segments")

    kmeans = KMeansSettings(k_values=settings.k_values, max_iter=settings.max_iter,
                            candidates_per_k=settings.candidates_per_k, seed=settings.seed,
                            federated_restarts=settings.federated_restarts)
    best, fits = federated_kmeans(step, task.width, binary_columns(task), kmeans)
    fed.recorder.event("segments", k=best.k, by_k=[{"k": f.k, "silhouette": f.silhouette, "inertia": f.inertia}
                                                    for f in fits])
    edges = histogram_edges(task, fed.scaling)
    counter["round"] += 1
    cells = profile_cells(task, best.k, edges)
    order = SegmentProfileOrder(**fed._task_fields(counter["round"]), cells=cells, scaling=fed.scaling,
                                centroids=tuple(tuple(float(v) for v in row) for row in best.centroids),
                                histogram_edges=edges, dp_noise=fed.cfg.dp.profiles, **codec_fields)
    profile = summed(order, cells, "profile")

    names = {name: node for node, name in fed.node_names.items()}
    overlaps = []
    for a, b in settings.overlap_pairs:
        for kind in settings.overlap_identifiers:
            def ask(node: int, config: dict[str, Any]) -> dict[str, Any]:
                return fed.query(stage_grid, [node], config, "overlap", fed.cfg.stage_timeout)[node]
            result = overlap_count(ask, run_id=fed.plan.run_id, session=f"{a}-{b}-{kind}",
                                   purpose=settings.overlap_purpose, kind=kind, counting=(names[a], a),
                                   other=(names[b], b), min_count=settings.report_min_count)
            for partner, head in result.heads.items():
                fed.recorder.head(partner, 0, "overlap", head)
            overlaps.append(result.summary())
    fed.recorder.event("overlap", overlaps=overlaps)

    m = settings.report_min_count
    results = {
        "run_id": fed.plan.run_id, "task": task.name, "task_schema_sha256": task.sha256(), "purpose": task.purpose,
        "partners": sorted(fed.node_names.values()), "min_count": m,
        "customers": int(round(sum(profile.get(f"profile.{j}.count", 0.0) for j in range(best.k)))),
        "scaling": fed.scaling,
        "segments": {"k": best.k, "silhouette": best.silhouette, "inertia": best.inertia, "iterations": best.iterations,
                     "centroids": best.centroids.round(6).tolist(), "encoded_names": task.encoded_names(),
                     "by_k": [{"k": f.k, "silhouette": f.silhouette, "inertia": f.inertia,
                               "counts": [c if c >= m else None for c in f.counts]} for f in fits],
                     "profiles": segment_profiles(profile, task, best.k, m)},
        "distributions": distributions(profile, edges, m),
        "overlap": overlaps,
        "secure_sums": counter["sums"] + 1, "codec": codec_fields,
        "error_bound_per_sum": codec.error_bound(len(node_ids)),
    }
    folder = fed.plan.run_dir / "analytics"
    folder.mkdir(exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    fed.recorder.event("run_end", run_id=fed.plan.run_id)
    return results
