"""What Gaussian noise on the statistics round costs: error of the federated scaling against the exact one.

Run: ``.venv/bin/python -m benchmarks.dp_statistics`` (``make bench``); ``--draws 50`` for a quick run.

Telco, the three bundled skewed partners (A, B, C), the churn task with public bounds on its
numeric features (tenure ``[0, 72]`` months, monthly charges ``[0, 150]``, total charges
``[0, 9000]``). For each ε per partner and each noise draw, every partner's cells come from
:func:`fedcrm.client.stats.local_statistics` with DP on (the code partners run: clipping,
shift by the bounds' centre, analytic Gaussian noise, withholding on noised counts; only the
ledger write is left out), the coordinator's scaling from
:func:`fedcrm.coordinator.federated_stats.combine_statistics` over the summed cells (what
SecAgg+ delivers), and the reference is the same computation without noise over the clipped
values. Reported per feature: |mean error| in units of the exact std and |std error| relative
to the exact std, mean ± std over draws. The ``uncentred`` rows are a diagnostic: the same
mechanism on sums of unshifted values (what the shift saves). Rows go to
``benchmarks/results/dp_statistics.json``; the table and plot to
``docs/benchmarks-dp-statistics.md`` and ``docs/img/dp_statistics_error.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._common import fmt_mean_std, markdown_table
from fedcrm.client.dp_sums import GaussianRelease, noise_multiplier_for, sensitivity_of
from fedcrm.client.stats import local_statistics
from fedcrm.coordinator.federated_stats import combine_statistics
from fedcrm.evaluation import load_rows
from fedcrm.paths import DATASETS, REPO_ROOT
from fedcrm.protocol import ROWS_KEY, TaskSchema, load_task_schema, stat_key

BOUNDS = {"tenure_months": (0.0, 72.0), "monthly_charges": (0.0, 150.0), "total_charges": (0.0, 9000.0)}
EPSILONS = (0.25, 0.5, 1.0, 2.0)
DELTA = 1e-5
MIN_COUNT = 10
RESULTS = REPO_ROOT / "benchmarks" / "results" / "dp_statistics.json"
DOC = REPO_ROOT / "docs" / "benchmarks-dp-statistics.md"
PLOT = REPO_ROOT / "docs" / "img" / "dp_statistics_error.png"


class _Unrecorded(GaussianRelease):
    """The partner's release without the ledger write (a measurement spends nothing)."""

    def record(self, **_: object) -> None:  # type: ignore[override]
        return None


def bounded_task() -> TaskSchema:
    """The Telco churn task with public bounds on its numeric features."""
    task = load_task_schema(DATASETS / "tasks" / "telco_churn.yaml")
    features = tuple(f.model_copy(update={"bounds": BOUNDS[f.name]}) if f.name in BOUNDS else f for f in task.features)
    return TaskSchema.model_validate({**task.model_dump(), "features": [f.model_dump() for f in features]})


def _uncentred(frame: pd.DataFrame, task: TaskSchema, release: GaussianRelease, rng: np.random.Generator) -> dict:
    """Diagnostic: the same mechanism on sums of clipped but unshifted values."""
    held = [n for n in task.numeric_features if n in frame.columns]
    exact, sens = {ROWS_KEY: float(frame["subject"].nunique())}, {ROWS_KEY: 1.0}
    for name in held:
        v = frame[name].astype("float64").dropna().clip(*BOUNDS[name])
        for stat, value in (("count", len(v)), ("sum", v.sum()), ("sumsq", (v * v).sum())):
            exact[stat_key(name, stat)] = float(value)
            sens[stat_key(name, stat)] = sensitivity_of(stat, BOUNDS[name])  # type: ignore[arg-type]
    return release.noise(exact, sens, units=1 + 3 * len(held), rng=rng)


def measure(draws: int) -> list[dict[str, Any]]:
    """One row per ε, variant and draw."""
    task = bounded_task()
    partners = {name: load_rows(DATASETS / "partners" / "telco" / "skewed" / name / "partner.toml")
                for name in ("A", "B", "C")}
    clipped = {n: f.assign(**{c: f[c].clip(*BOUNDS[c]) for c in BOUNDS if c in f}) for n, f in partners.items()}
    truth = combine_statistics({n: local_statistics(f, task, min_count=MIN_COUNT, partner=n)
                                for n, f in clipped.items()}, task)
    rows = []
    for eps in EPSILONS:
        release = _Unrecorded(config=None, mechanism="gaussian_statistics", purpose="churn_prediction",  # type: ignore[arg-type]
                              run_id="bench", server_round=0, epsilon=eps, delta=DELTA,
                              noise_multiplier=noise_multiplier_for(eps, DELTA))
        for draw in range(draws):
            for variant in ("centred", "uncentred"):
                cells = {}
                for i, (name, frame) in enumerate(partners.items()):
                    rng = np.random.default_rng([draw, i, int(eps * 100)])
                    cells[name] = (local_statistics(frame, task, min_count=MIN_COUNT, partner=name, dp=release,
                                                    rng=rng) if variant == "centred"
                                   else _uncentred(frame, task, release, rng))
                got = combine_statistics(cells, task)
                row: dict[str, Any] = {"dataset": "telco", "split": "skewed", "method": variant, "epsilon": eps,
                                       "delta": DELTA, "seed": draw}
                for feature, (mean, std) in truth.items():
                    row[f"{feature}.mean_error"] = abs(got[feature][0] - mean) / std
                    row[f"{feature}.std_error"] = abs(got[feature][1] - std) / std
                rows.append(row)
    return rows


def _plot(rows: list[dict[str, Any]], features: list[str]) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, what, label in ((axes[0], "mean_error", "|mean error| / std"), (axes[1], "std_error", "|std error| / std")):
        for variant, style in (("centred", "-"), ("uncentred", ":")):
            for colour, feature in enumerate(features):
                ys = [np.mean([r[f"{feature}.{what}"] for r in rows if r["method"] == variant and r["epsilon"] == e])
                      for e in EPSILONS]
                ax.plot(EPSILONS, ys, style, marker="o", color=f"C{colour}", label=f"{feature} ({variant})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(EPSILONS, [f"{e:g}" for e in EPSILONS])
        ax.minorticks_off()
        ax.set_xlabel("ε per partner (δ = 1e-5)")
        ax.set_ylabel(label)
    axes[1].legend(fontsize=7)
    fig.suptitle("Telco, 3 partners: federated scaling from noised statistics vs exact")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The Markdown page: one row per ε and variant, per feature mean ± std over draws."""
    features = list(BOUNDS)
    table = []
    for eps in EPSILONS:
        for variant in ("centred", "uncentred"):
            mine = [r for r in rows if r["epsilon"] == eps and r["method"] == variant]
            table.append([f"{eps:g}", variant, *(fmt_mean_std([r[f"{f}.mean_error"] for r in mine], 4) for f in features),
                          *(fmt_mean_std([100 * r[f"{f}.std_error"] for r in mine], 2) for f in features)])
    headers = ["ε", "sums of", *(f"mean err. {f} (stds)" for f in features), *(f"std err. {f} (%)" for f in features)]
    return "\n".join([
        "# Benchmark: Gaussian noise on the statistics round", "",
        f"Generated by `python -m benchmarks.dp_statistics` ({meta['draws']} noise draws per ε; {meta['machine']}; "
        f"{meta['wall_s']:.0f} s). Telco, bundled skewed partners A, B, C; bounds {BOUNDS}; δ = {DELTA:g}; "
        "each partner adds its own noise (docs/privacy.md). Errors of the coordinator's federated scaling against "
        "the exact scaling of the clipped values, mean ± std over draws. `centred` is what partners run; "
        "`uncentred` (sums of unshifted values) is a diagnostic.", "",
        markdown_table(headers, table), "",
        "![error vs ε](img/dp_statistics_error.png)", "",
    ])


def main() -> None:
    """Measure, write the rows, the page and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200, help="noise draws per ε (default 200)")
    parser.add_argument("--plot-only", action="store_true", help="redraw page and plot from the saved rows")
    args = parser.parse_args()
    if args.plot_only:
        saved = json.loads(RESULTS.read_text())
        DOC.write_text(report(saved["rows"], saved["meta"]))
        _plot(saved["rows"], list(BOUNDS))
        return
    started = time.perf_counter()
    rows = measure(args.draws)
    meta = {"draws": args.draws, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "wall_s": time.perf_counter() - started}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    DOC.write_text(report(rows, meta))
    _plot(rows, list(BOUNDS))
    print(DOC.read_text())
    assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))


if __name__ == "__main__":
    main()
