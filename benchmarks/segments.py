"""Segmentation benchmark: federated k-means (secure sums only) against pooled k-means.

Run: ``.venv/bin/python -m benchmarks.segments`` (``make bench``); ``--quick`` for one seed.

For Telco (skewed split, partners A, B, C; task ``telco_segments``) and CDNOW (cohort
partners M01-M03; task ``cdnow_segments``, RFM-style purchase features), each seed:

* **federated**: :func:`fedcrm.coordinator.analytics_kmeans.federated_kmeans`, every step
  summed over the partners through the secure-sum codec (each partner's cells computed by
  :func:`fedcrm.client.federated.kmeans.step_sums` with its minimum count of 10, encoded by
  :class:`fedcrm.secure_vector.SecureVectorCodec`, added digit-wise, decoded: exactly what
  the coordinator decodes from SecAgg+; the Flower path itself is tested in
  ``tests/coordinator/test_segments_e2e.py``); k chosen by the federated simplified silhouette;
* **pooled**: scikit-learn k-means++ on all partners' rows in one place, same k, twice: with the
  federated run's budget (``n_init`` = federated seedings per k, the fair comparison) and with
  ``n_init=10`` (the best pooled solution known, the reference of the issue's goal);
* **federated without the minimum count** (a diagnostic, never a deployment setting): the same
  federated run with every partner's minimum count set to 1, which tells the algorithm's own
  gap from the gap the minimum-count rule imposes.

Both use the same standardisation (the pooled mean and standard deviation, which is what the
secure statistics round computes). Reported: adjusted Rand index between the partners' local
labels and the pooled labels, inertia ratio (federated centres' inertia on the pooled rows /
pooled inertia), the k chosen, secure steps, mean ± std over seeds, and how many customers of
the best pooled solution sit in clusters a partner holds fewer than the minimum count of (no
federated k-means that releases only cells over the minimum can isolate those). The load
average of the machine is recorded at start and end. Rows go to
``benchmarks/results/segments.json``; the table and plot to ``docs/benchmarks-segments.md``
and ``docs/img/segments_*.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fedcrm.client.config import load_partner_config
from fedcrm.client.features import encode_features
from fedcrm.client.federated.kmeans import assign, step_sums
from fedcrm.client.transaction_ingest import build_customer_table
from fedcrm.coordinator.analytics_kmeans import KMeansSettings, binary_columns, federated_kmeans
from fedcrm.evaluation import load_rows, local_scaling
from fedcrm.paths import DATASETS, REPO_ROOT
from fedcrm.protocol import TaskSchema, load_task_schema
from fedcrm.secure_vector import SecureVectorCodec

RESULTS = REPO_ROOT / "benchmarks" / "results" / "segments.json"
REPORT = REPO_ROOT / "docs" / "benchmarks-segments.md"
IMG = REPO_ROOT / "docs" / "img"
MIN_COUNT = 10

CASES = {
    "telco": (DATASETS / "tasks" / "telco_segments.yaml",
              [DATASETS / "partners" / "telco" / "skewed" / p / "partner.toml" for p in ("A", "B", "C")]),
    "cdnow": (DATASETS / "tasks" / "cdnow_segments.yaml",
              [DATASETS / "partners" / "cdnow" / p / "partner.toml" for p in ("M01", "M02", "M03")]),
}


def partner_frames(dataset: str, configs: list[Path]) -> list[pd.DataFrame]:
    """Each partner's typed customer rows, parsed by its own config (no pooling happens here)."""
    if dataset == "cdnow":
        return [build_customer_table(load_partner_config(c), b"benchmark-only-key-not-a-secret!").customers
                for c in configs]
    return [load_rows(c) for c in configs]


def secure_step(xs: list[np.ndarray], codec: SecureVectorCodec, min_count: int = MIN_COUNT):  # noqa: ANN201
    """A step function summing the partners' cells (each withholding clusters under ``min_count``) through the codec."""
    def step(centres: np.ndarray) -> dict[str, float]:
        from fedcrm.protocol import segment_cells

        names = segment_cells(*centres.shape)
        encoded = [codec.encode(names, step_sums(x, centres, min_count=min_count).cells) for x in xs]
        return codec.decode(names, sum(encoded) / len(encoded), len(encoded))
    return step


def run_case(dataset: str, task: TaskSchema, frames: list[pd.DataFrame], seed: int,
             settings: KMeansSettings) -> dict[str, object]:
    """One (data set, seed): federated and pooled k-means side by side."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    pooled_frame = pd.concat(frames, ignore_index=True)
    scaling = local_scaling(pooled_frame, task)
    xs = [encode_features(f, task, scaling).astype(np.float64) for f in frames]
    pooled_x = np.vstack(xs)
    codec = SecureVectorCodec()
    seeded = KMeansSettings(**{**settings.__dict__, "seed": seed})
    started = time.perf_counter()
    best, fits = federated_kmeans(secure_step(xs, codec), task.width, binary_columns(task), seeded)
    fed_s = time.perf_counter() - started
    _, fits_without_min = federated_kmeans(secure_step(xs, codec, min_count=1), task.width, binary_columns(task),
                                           seeded)
    fed_labels = np.concatenate([assign(x, best.centroids) for x in xs])  # each partner labels its own
    started = time.perf_counter()
    pooled = KMeans(n_clusters=best.k, n_init=10, random_state=seed).fit(pooled_x)
    pooled_s = time.perf_counter() - started
    fed_inertia = float(((pooled_x - best.centroids[fed_labels]) ** 2).sum())
    partner_of = np.concatenate([np.full(len(x), i) for i, x in enumerate(xs)])
    return {
        "dataset": dataset, "seed": seed, "partners": len(frames), "customers": int(len(pooled_x)),
        "width": task.width, "k": best.k, "ari": round(float(adjusted_rand_score(pooled.labels_, fed_labels)), 6),
        "inertia_ratio": round(fed_inertia / float(pooled.inertia_), 6),
        "federated_inertia": round(fed_inertia, 3), "pooled_inertia": round(float(pooled.inertia_), 3),
        "federated_silhouette": round(best.silhouette, 6), "secure_steps": 1 + sum(f.secure_steps for f in fits),
        "converged": all(f.converged for f in fits),
        "by_k": [compare_at_k(f, g, xs, pooled_x, partner_of, seed, settings.federated_restarts)
                 for f, g in zip(fits, fits_without_min, strict=True)],
        "federated_s": round(fed_s, 2), "pooled_s": round(pooled_s, 2),
        "load_average_1min": round(os.getloadavg()[0], 1),
    }


def compare_at_k(fit, fit_without_min, xs: list[np.ndarray], pooled_x: np.ndarray, partner_of: np.ndarray,  # noqa: ANN001
                 seed: int, budget: int) -> dict[str, object]:
    """A federated fit against pooled k-means with the same k: best of 10 and the same ``n_init`` budget."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    def labels_inertia(centres: np.ndarray) -> tuple[np.ndarray, float]:
        labels = np.concatenate([assign(x, centres) for x in xs])
        return labels, float(((pooled_x - centres[labels]) ** 2).sum())

    labels, inertia = labels_inertia(fit.centroids)
    labels_without, inertia_without = labels_inertia(fit_without_min.centroids)
    pooled = KMeans(n_clusters=fit.k, n_init=10, random_state=seed).fit(pooled_x)
    same_budget = KMeans(n_clusters=fit.k, n_init=budget, random_state=seed).fit(pooled_x)
    # Reference: how much pooled k-means itself moves between two seeds (ambiguous k give low ARI at equal inertia).
    other = KMeans(n_clusters=fit.k, n_init=10, random_state=seed + 1000).fit(pooled_x)
    # Customers of the best pooled solution in (cluster, partner) cells under the minimum count.
    cells = np.zeros((fit.k, len(xs)), dtype=int)
    np.add.at(cells, (pooled.labels_, partner_of), 1)
    below = int(cells[cells < MIN_COUNT].sum())
    return {"k": fit.k, "silhouette": round(fit.silhouette, 6), "inertia": round(fit.inertia, 3),
            "converged": bool(fit.converged), "iterations": fit.iterations,
            "ari": round(float(adjusted_rand_score(pooled.labels_, labels)), 6),
            "inertia_ratio": round(inertia / float(pooled.inertia_), 6),
            "ari_same_budget": round(float(adjusted_rand_score(same_budget.labels_, labels)), 6),
            "inertia_ratio_same_budget": round(inertia / float(same_budget.inertia_), 6),
            "same_budget_inertia_ratio": round(float(same_budget.inertia_) / float(pooled.inertia_), 6),
            "ari_without_min_count": round(float(adjusted_rand_score(pooled.labels_, labels_without)), 6),
            "inertia_ratio_without_min_count": round(inertia_without / float(pooled.inertia_), 6),
            "pooled_below_min_count": below,
            "pooled_smallest_cluster": int(np.bincount(pooled.labels_, minlength=fit.k).min()),
            "pooled_seed_ari": round(float(adjusted_rand_score(pooled.labels_, other.labels_)), 6)}


def summarise(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Mean ± std per data set."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        entry: dict[str, object] = {"dataset": dataset, "seeds": len(mine), "customers": mine[0]["customers"],
                                    "k": sorted({r["k"] for r in mine})}
        for metric in ("ari", "inertia_ratio", "secure_steps", "federated_s"):
            values = np.array([float(r[metric]) for r in mine])  # type: ignore[arg-type]
            entry[metric] = (round(float(values.mean()), 4), round(float(values.std()), 4))
        out.append(entry)
    return out


def plot(rows: list[dict[str, object]]) -> Path:
    """ARI and inertia ratio against pooled k-means at every k, per data set (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    path = IMG / "segments_ari_inertia.png"
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.3))
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        ks = sorted({e["k"] for r in mine for e in r["by_k"]})  # type: ignore[attr-defined]
        chosen = sorted({r["k"] for r in mine})
        for ax, metric in ((axes[0], "ari"), (axes[1], "inertia_ratio")):
            values = [[e[metric] for r in mine for e in r["by_k"] if e["k"] == k] for k in ks]  # type: ignore[attr-defined]
            line = ax.errorbar(ks, [np.mean(v) for v in values], yerr=[np.std(v) for v in values], marker="o",
                               capsize=3, label=dataset)
            for k in chosen:
                v = values[ks.index(k)]
                ax.scatter([k], [np.mean(v)], s=120, facecolors="none", edgecolors=line[0].get_color())
            diag = [[e[f"{metric}_without_min_count"] for r in mine for e in r["by_k"]  # type: ignore[attr-defined]
                     if e["k"] == k and f"{metric}_without_min_count" in e] for k in ks]
            if all(diag):
                ax.plot(ks, [np.mean(v) for v in diag], linestyle=":", color=line[0].get_color(),
                        label=f"{dataset}, min count 1 (diagnostic)")
    axes[0].axhline(0.9, color="grey", linestyle="--", linewidth=1)
    axes[1].axhline(1.02, color="grey", linestyle="--", linewidth=1)
    axes[0].set_title("adjusted Rand index vs pooled (goal ≥ 0.9)", fontsize=9)
    axes[1].set_title("inertia / pooled inertia (goal ≤ 1.02)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("k (circled: chosen by federated silhouette)", fontsize=8)
        ax.legend(fontsize=8)
    fig.suptitle("Federated k-means (secure sums only) vs pooled k-means", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(rows: list[dict[str, object]], meta: dict[str, object]) -> str:
    """The report page."""
    budget = meta.get("federated_restarts", 1)
    load = meta.get("load_average")
    loads = [float(r["load_average_1min"]) for r in rows if "load_average_1min" in r]  # type: ignore[arg-type]
    lines = ["# Benchmark: federated vs pooled k-means segmentation", "",
             "Generated by `benchmarks/segments.py` (`make bench`); raw rows in `benchmarks/results/segments.json`.",
             f"Machine: {meta['machine']}; {meta['when']}" + (f"; load average {load}" if load else "") + ". "
             "Goal (issue 23): ARI ≥ 0.9, inertia within 2% of pooled. "
             f"Federated seedings per k: {budget} (lowest federated inertia kept); partners' minimum count {MIN_COUNT}."
             + (f" Load average (1-minute) after each seed's run: {min(loads):.1f}-{max(loads):.1f}." if loads else ""),
             "", "At the k the federated silhouette chooses (pooled: k-means++, `n_init=10`, same k):", "",
             "| data set | seeds | customers | k (chosen) | ARI (mean ± std) | inertia ratio | secure steps | federated s |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summarise(rows):
        ari, ratio, steps, secs = s["ari"], s["inertia_ratio"], s["secure_steps"], s["federated_s"]
        lines.append(f"| {s['dataset']} | {s['seeds']} | {s['customers']} | {s['k']} | {ari[0]:.3f} ± {ari[1]:.3f} | "  # type: ignore[index]
                     f"{ratio[0]:.4f} ± {ratio[1]:.4f} | {steps[0]:.0f} | {secs[0]:.1f} |")  # type: ignore[index]
    lines += ["", "![ARI and inertia ratio](img/segments_ari_inertia.png)", "",
              "At every k (mean ± std over seeds). *best pooled*: k-means++ with `n_init=10`; *same budget*: "
              f"k-means++ with `n_init={budget}`, the federated run's number of seedings; *no min count*: the federated "
              "run with every partner's minimum count at 1 (diagnostic only); *below min*: customers of the best pooled "
              f"solution in clusters a partner holds fewer than {MIN_COUNT} of (mean over seeds).", "",
              "| data set | k | ARI vs best pooled | inertia ratio vs best pooled | ARI vs same budget | "
              "inertia ratio vs same budget | same budget / best pooled inertia | no min count: ARI | "
              "no min count: inertia ratio | below min | pooled vs pooled (other seed) ARI | converged |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(values: list[float], digits: int) -> str:
        return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"

    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        for k in sorted({e["k"] for r in mine for e in r["by_k"]}):  # type: ignore[attr-defined]
            at = [e for r in mine for e in r["by_k"] if e["k"] == k]  # type: ignore[attr-defined]

            def col(name: str, digits: int, at: list = at) -> str:  # type: ignore[type-arg]
                values = [e[name] for e in at if name in e]
                return ms(values, digits) if values else "not measured"
            converged = sum(bool(e.get("converged")) for e in at)
            below = [e["pooled_below_min_count"] for e in at if "pooled_below_min_count" in e]
            lines.append(f"| {dataset} | {k} | {col('ari', 3)} | {col('inertia_ratio', 4)} | "
                         f"{col('ari_same_budget', 3)} | {col('inertia_ratio_same_budget', 4)} | "
                         f"{col('same_budget_inertia_ratio', 4)} | {col('ari_without_min_count', 3)} | "
                         f"{col('inertia_ratio_without_min_count', 4)} | {np.mean(below):.0f} | "
                         f"{col('pooled_seed_ari', 3)} | {converged}/{len(at)} |")
    lines += ["", "Per seed:", "", "| data set | seed | k | ARI | inertia ratio | federated silhouette | "
              "by k (silhouette) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        by_k = ", ".join(f"{e['k']}: {e['silhouette']:.3f}" for e in r["by_k"])  # type: ignore[attr-defined]
        lines.append(f"| {r['dataset']} | {r['seed']} | {r['k']} | {r['ari']:.3f} | {r['inertia_ratio']:.4f} | "
                     f"{r['federated_silhouette']:.3f} | {by_k} |")
    lines += ["", "How to read it: the federated centres come from secure sums only (counts, sums, SSE and "
              "simplified-silhouette sums per cluster; initialisation from aggregated means of customers nearest "
              "to random multi-scale candidates, never a customer's point). Clusters holding fewer than the minimum "
              f"count ({MIN_COUNT}) of a partner's customers are withheld by that partner: where the best pooled "
              "solution isolates such a small group (column *below min*), no federated k-means that releases only "
              "cells over the minimum can find it, and the *no min count* columns show what the algorithm reaches "
              "without that rule. The fair comparison of the seeding is *same budget*: pooled k-means++ with as many "
              "restarts as the federated run has seedings.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, k in 2..4")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--datasets", nargs="*", default=list(CASES))
    parser.add_argument("--federated-restarts", type=int, default=3, help="federated seedings per k (best inertia)")
    parser.add_argument("--report-only", action="store_true", help="rewrite page and plot from the stored rows")
    parser.add_argument("--merge", action="store_true",
                        help="keep the stored rows of data sets not run now (one data set per run on a busy machine)")
    args = parser.parse_args(argv)
    if args.report_only:
        stored = json.loads(RESULTS.read_text())
        plot(stored["rows"])
        REPORT.write_text(markdown(stored["rows"], stored["meta"]))
        print(REPORT)
        return
    seeds = [0] if args.quick else args.seeds
    settings = KMeansSettings(k_values=(2, 3, 4) if args.quick else (2, 3, 4, 5, 6),
                              federated_restarts=args.federated_restarts)
    rows = []
    load_start = os.getloadavg()
    for dataset in args.datasets:
        task_path, configs = CASES[dataset]
        task = load_task_schema(task_path)
        frames = partner_frames(dataset, configs)
        for seed in seeds:
            row = run_case(dataset, task, frames, seed, settings)
            print(json.dumps({k: v for k, v in row.items() if k != "by_k"}), flush=True)
            rows.append(row)
    load_end = os.getloadavg()
    if args.merge and RESULTS.exists():
        stored = json.loads(RESULTS.read_text())
        rows = [r for r in stored["rows"] if r["dataset"] not in args.datasets] + rows
    meta = {"machine": f"{platform.machine()}, {platform.python_version()}, {os.cpu_count()} cores (shared)",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "federated_restarts": settings.federated_restarts,
            "load_average": f"{load_start[0]:.1f} at start, {load_end[0]:.1f} at end (1-minute)"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows, "summary": summarise(rows)}, indent=2))
    plot(rows)
    REPORT.write_text(markdown(rows, meta))
    print(REPORT)


if __name__ == "__main__":
    main()
