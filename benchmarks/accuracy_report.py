"""The accuracy benchmark's report: ``docs/benchmarks.md`` and ``docs/img/accuracy_*.png``.

Built only from the rows file and the saved test-set scores, so it can be rewritten
(``python -m benchmarks.accuracy --report-only``) without re-running anything.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._common import (BootstrapInterval, bootstrap_indices, fmt_mean_std, markdown_table,  # noqa: E402
                                mean_std, percentile_interval, read_rows, roc_auc_resampled)

BOOTSTRAP_SEED = 0
TOLERANCE = 0.005
ORDER = ["pooled_lr", "pooled_lightgbm", "pooled_mlp", "federated_secagg", "federated_plain"]

METHOD = """\
## Method

**Data.** The IBM Telco churn export (7,043 customers) split by `fedcrm partition`
(`datasets/telco/partition.yaml`): a stratified 20% **common test set** (1,409 customers) held by
no partner, and the remaining rows split three ways — **skewed** (A/B/C hold mostly
month-to-month / one-year / two-year contracts, 80% of each contract type at its home partner),
**iid** (three equal random partners) and **many** (ten partners of unequal size, the smallest
holding 2.5% of the rows). The bundled partner directories (`datasets/partners/telco/`) are
copied fresh for every seed and initialised with `fedcrm client init`'s code (new pseudonymisation
key and consent ledger).

**Methods.** All use the task schema's encoding (`datasets/tasks/telco_churn.yaml`, one-hot
categoricals with an unseen slot, numeric features standardised) and are scored on the common
test set:

* `pooled_lr` — scikit-learn logistic regression (L2, C = 1) on all partners' rows in one place;
* `pooled_lightgbm` — LightGBM, fixed small-tree settings (`fedcrm.models.baselines`), no tuning
  against the test set;
* `pooled_mlp` — the federated architecture (MLP, 32 hidden units) trained on all rows with
  `fedcrm.evaluation.train_model`, for rounds × local epochs passes (the passes each partner makes
  in the federated run), Adam, learning rate and batch size from `datasets/telco/run.toml`;
* `local_<partner>` — the same MLP and recipe on one partner's rows only;
* `federated_secagg` / `federated_plain` — the coordinator's real runner (`run_federation`:
  Flower simulation on Ray, consent gate at every partner, FedAvg) with SecAgg+ on and with plain
  aggregation; scaling from the federated statistics round;
* `pooled_mlp_with_gender` / `pooled_lr_with_gender` — the pooled MLP and LR with the
  benchmark-only schema `telco_churn_with_gender.yaml`. Only this benchmark uses it, on pooled
  data: the churn purpose excludes gender (minimum necessary use), so no partner ever serves it.

Seeds (0, 1, 2) set the federated run's `seed` (model initialisation, client shuffling) and the
pooled/local recipes' seed (initialisation, shuffling, LR/LightGBM `random_state`). The data split
itself is fixed (the bundled partners).

**Paired bootstrap.** Differences of ROC AUC are given with 95% percentile intervals from a paired
bootstrap over the common test set's customers ({resamples} resamples, resampling seed
{bootstrap_seed}): each resample draws the customers once and both models' scores are evaluated on
that same draw. Seeds are pooled by averaging: the statistic is the difference of seed-averaged AUCs
(seed *s* of one method paired with seed *s* of the other), computed on the full test set for the
estimate and on each resample for the interval. The interval therefore covers test-set sampling of
the seed-averaged difference; seed-to-seed spread is the ± in the tables above it.

**Rounds to pooled.** Every round's global model (`model/round-<k>.safetensors`, hash-checked
against the run's manifest) is scored on the common test set with the run's federated scaling
(`metrics/statistics.json`); the first round whose ROC AUC is at least the same seed's pooled MLP
AUC − {tolerance} is reported (and, since the pooled MLP's fixed recipe has no early stopping and can
fall below the linear model, the same against the pooled LR), with the wall time from the run's `run_start` event to that round's
`evaluate` event (`events.jsonl`). That time includes the engine's start-up (Flower + Ray), shown
separately.

**Caveats.** Each partner keeps 20% of its rows as a local hold-out for federated evaluation
(`validation_fraction`), so the federated model trains on 80% of the rows the pooled and local
models use: the comparison is slightly conservative for federation. Wall times were measured on a
shared 2-core machine while other work ran on it; they are indicative, not a performance benchmark.
"""


def _order(methods: set[str]) -> list[str]:
    known = [m for m in ORDER if m in methods]
    return known + sorted(m for m in methods if m.startswith("pooled_") and m not in known) + sorted(
        m for m in methods if m.startswith("local_")) + sorted(
        m for m in methods if m not in known and not m.startswith(("pooled_", "local_")))


class ScoreBank:
    """Saved test-set scores of one (data set, split) and their bootstrap AUCs on shared resamples."""

    def __init__(self, root: Path, dataset: str, split: str, resamples: int) -> None:
        self.root = root / dataset / split
        labels = self.root / "labels.npy"
        self.y = np.load(labels) if labels.exists() else None
        self.idx = bootstrap_indices(len(self.y), resamples, BOOTSTRAP_SEED) if self.y is not None else None
        self._cache: dict[tuple[str, int], tuple[float, np.ndarray]] = {}

    def aucs(self, method: str, seed: int) -> tuple[float, np.ndarray] | None:
        """Full-test-set AUC and per-resample AUCs of one method and seed (None if not saved)."""
        if self.y is None:
            return None
        key = (method, seed)
        if key not in self._cache:
            path = self.root / method / f"seed{seed}.npy"
            if not path.exists():
                return None
            s = np.load(path)
            full = float(roc_auc_resampled(self.y, s, np.arange(len(self.y))[None, :])[0])
            self._cache[key] = (full, roc_auc_resampled(self.y, s, self.idx))
        return self._cache[key]


def paired_diff(pairs: list[tuple[tuple[float, np.ndarray], tuple[float, np.ndarray]]]) -> BootstrapInterval | None:
    """Difference of seed-averaged AUCs (a − b) over matched seeds, with its bootstrap interval."""
    if not pairs:
        return None
    estimate = statistics.fmean(a[0] - b[0] for a, b in pairs)
    resampled = np.mean([a[1] - b[1] for a, b in pairs], axis=0)
    return percentile_interval(estimate, resampled)


def _seeds(rows: list[dict[str, Any]], split: str, method: str) -> set[int]:
    return {r["seed"] for r in rows if r["split"] == split and r["method"] == method and r["roc_auc"] is not None}


def compare(bank: ScoreBank, rows: list[dict[str, Any]], split: str, a: str, b: str) -> BootstrapInterval | None:
    """Paired bootstrap of AUC(a) − AUC(b) on one split, seeds matched."""
    pairs = []
    for seed in sorted(_seeds(rows, split, a) & _seeds(rows, split, b)):
        sa, sb = bank.aucs(a, seed), bank.aucs(b, seed)
        if sa is not None and sb is not None:
            pairs.append((sa, sb))
    return paired_diff(pairs)


def _ci(result: BootstrapInterval | None) -> str:
    return result.text() if result is not None else "scores not saved"


def _num(v: float | None, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def headline_table(banks: dict[str, ScoreBank], rows: list[dict[str, Any]], splits: list[str]) -> str:
    """One line per split: federated (SecAgg+) against pooled references and the best partner alone."""
    body = []
    for split in splits:
        def auc(m: str, split: str = split) -> float:
            return mean_std(r["roc_auc"] for r in rows if r["split"] == split and r["method"] == m)[0]

        locals_ = [m for m in {r["method"] for r in rows if r["split"] == split} if m.startswith("local_")]
        best = max(locals_, key=auc) if locals_ else None
        body.append([split, _num(auc("federated_secagg"), 4), _num(auc("pooled_mlp"), 4), _num(auc("pooled_lr"), 4),
                     f"{_num(auc(best), 4)} (`{best}`)" if best else "–",
                     _ci(compare(banks[split], rows, split, "federated_secagg", "pooled_mlp")),
                     _ci(compare(banks[split], rows, split, "federated_secagg", "pooled_lr")),
                     _ci(compare(banks[split], rows, split, "federated_secagg", best)) if best else "–"])
    return markdown_table(["split", "federated (SecAgg+)", "pooled MLP", "pooled LR", "best partner alone",
                           "fed − pooled MLP [95%]", "fed − pooled LR [95%]", "fed − best partner alone [95%]"], body)


def summary_table(rows: list[dict[str, Any]], split: str) -> str:
    """Mean ± std over seeds per method."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["split"] == split:
            by[r["method"]].append(r)
    body = []
    for m in _order(set(by)):
        rs = by[m]
        body.append([f"`{m}`", len(rs), fmt_mean_std(r["roc_auc"] for r in rs), fmt_mean_std(r["pr_auc"] for r in rs),
                     fmt_mean_std((r["top_decile_lift"] for r in rs), 2), _num(mean_std(r["wall_s"] for r in rs)[0])])
    return markdown_table(["method", "seeds", "ROC AUC", "PR AUC", "top-decile lift", "wall s (mean)"], body)


def comparison_table(bank: ScoreBank, rows: list[dict[str, Any]], split: str) -> str:
    """Federated vs pooled, vs plain, and vs each local model."""
    methods = {r["method"] for r in rows if r["split"] == split}
    pairs = [("federated_secagg", p) for p in ("pooled_mlp", "pooled_lr", "pooled_lightgbm")]
    pairs += [("federated_plain", "pooled_mlp"), ("federated_secagg", "federated_plain")]
    pairs += [("federated_secagg", m) for m in _order(methods) if m.startswith("local_")]
    body = [[f"`{a}` − `{b}`", _ci(compare(bank, rows, split, a, b))] for a, b in pairs if a in methods and b in methods]
    return markdown_table(["ROC AUC difference", "estimate [95% paired-bootstrap interval]"], body)


def _reach(rows: list[dict[str, Any]], fed: dict[str, Any], reference: str) -> tuple[int | None, float | None] | None:
    """First round within the tolerance of the same seed's ``reference`` AUC, and the wall time to it."""
    from benchmarks.accuracy import first_within

    ref = [r["roc_auc"] for r in rows if r["split"] == fed["split"] and r["seed"] == fed["seed"]
           and r["method"] == reference and r["roc_auc"] is not None]
    if not ref:
        return None
    k = first_within(fed["round_roc_auc"], ref[0], TOLERANCE)
    return k, (fed["round_wall_s"][k - 1] if k else None)


def convergence_table(rows: list[dict[str, Any]], split: str, rounds: int) -> str:
    """Rounds and wall time the federated model needs to come within the tolerance of pooled references."""
    body = []
    for m in ("federated_secagg", "federated_plain"):
        rs = sorted((r for r in rows if r["split"] == split and r["method"] == m and r.get("round_roc_auc")),
                    key=lambda r: r["seed"])
        for reference in ("pooled_mlp", "pooled_lr"):
            reached = [x for x in (_reach(rows, r, reference) for r in rs) if x is not None]
            if not reached:
                continue
            per_seed = ", ".join(str(k) if k else f">{len(r['round_roc_auc'])}"
                                 for (k, _), r in zip(reached, rs, strict=False))
            walls = [w for k, w in reached if k]
            body.append([f"`{m}`", f"`{reference}`", per_seed, f"{len(walls)}/{len(reached)}",
                         _num(statistics.fmean(walls)) if walls else "–",
                         _num(mean_std(r["startup_s"] for r in rs)[0]), _num(mean_std(r["wall_s"] for r in rs)[0]),
                         fmt_mean_std(r["round_roc_auc"][-1] for r in rs)])
    return markdown_table(["method", "reference", f"rounds to ≥ reference − {TOLERANCE} (per seed)",
                           "seeds reaching it", "wall s from run start to that round (mean)", "engine start-up s (mean)",
                           f"total wall s, {rounds} rounds (mean)", "final-round AUC"], body)


def variant_table(rows: list[dict[str, Any]], splits: list[str], banks: dict[str, ScoreBank], suffix: str) -> str:
    """What leaving a variant's extra features out costs: AUC(with) − AUC(without), per split and pooled."""
    body = []
    for base in ("pooled_mlp", "pooled_lr"):
        variant = f"{base}_{suffix}"
        all_pairs = []
        for split in splits:
            per = compare(banks[split], rows, split, variant, base)
            for seed in sorted(_seeds(rows, split, variant) & _seeds(rows, split, base)):
                sa, sb = banks[split].aucs(variant, seed), banks[split].aucs(base, seed)
                if sa is not None and sb is not None:
                    all_pairs.append((sa, sb))
            if per is not None:
                body.append([f"`{variant}` − `{base}`", split,
                             fmt_mean_std(r["roc_auc"] for r in rows if r["split"] == split and r["method"] == variant),
                             fmt_mean_std(r["roc_auc"] for r in rows if r["split"] == split and r["method"] == base),
                             per.text()])
        pooled = paired_diff(all_pairs) if len({b.y.tobytes() for b in banks.values() if b.y is not None}) == 1 else None
        if pooled is not None:
            body.append([f"`{variant}` − `{base}`", f"all ({len(all_pairs)} split × seed runs)", "", "", pooled.text()])
    return markdown_table(["AUC cost of leaving it out", "split", f"AUC {suffix}", "AUC without",
                           "difference [95% paired-bootstrap interval]"], body)


# -- plots ----------------------------------------------------------------------------------------

def plot_auc_by_method(rows: list[dict[str, Any]], splits: list[str], path: Path, dataset: str) -> None:
    """Mean ROC AUC per method and split (dots), error bars one standard deviation over seeds."""
    fig, axes = plt.subplots(1, len(splits), figsize=(5.2 * len(splits), 4.8), sharey=True, squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        methods = _order({r["method"] for r in rows if r["split"] == split})
        for x, m in enumerate(methods):
            mean, std, _ = mean_std(r["roc_auc"] for r in rows if r["split"] == split and r["method"] == m)
            colour = "tab:green" if m.startswith("federated") else "tab:blue" if m.startswith("pooled") else "tab:grey"
            ax.errorbar([x], [mean], yerr=[std], fmt="o", color=colour, capsize=4, markersize=6)
        pooled = mean_std(r["roc_auc"] for r in rows if r["split"] == split and r["method"] == "pooled_mlp")[0]
        if not math.isnan(pooled):
            ax.axhline(pooled, color="tab:blue", linewidth=0.8, alpha=0.5)
        ax.set_xticks(range(len(methods)), methods, rotation=70, ha="right", fontsize=8)
        ax.set_title(f"{dataset} / {split}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("ROC AUC, common test set")
    fig.suptitle("mean ± std over seeds; blue pooled, green federated, grey local-only", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rounds(rows: list[dict[str, Any]], splits: list[str], path: Path, dataset: str) -> None:
    """Federated ROC AUC per round (mean over seeds, band = min–max) against the pooled MLP."""
    fig, axes = plt.subplots(1, len(splits), figsize=(5.2 * len(splits), 4.0), sharey=True, squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        styles = {"federated_secagg": ("tab:green", "o", "-"), "federated_plain": ("tab:orange", "x", "--")}
        for m, (colour, marker, line) in styles.items():
            curves = [r["round_roc_auc"] for r in rows if r["split"] == split and r["method"] == m
                      and r.get("round_roc_auc")]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            arr = np.array([c[:n] for c in curves])
            k = np.arange(1, n + 1)
            ax.plot(k, arr.mean(axis=0), marker=marker, linestyle=line, color=colour,
                    label=f"{m} (mean of {len(curves)}, band min–max)")
            ax.fill_between(k, arr.min(axis=0), arr.max(axis=0), color=colour, alpha=0.15)
        pooled, _, count = mean_std(r["roc_auc"] for r in rows if r["split"] == split and r["method"] == "pooled_mlp")
        if count:
            ax.axhline(pooled, color="tab:blue", label="pooled MLP (mean)")
            ax.axhline(pooled - TOLERANCE, color="tab:blue", linestyle="--", label=f"pooled MLP − {TOLERANCE}")
        lr, _, count = mean_std(r["roc_auc"] for r in rows if r["split"] == split and r["method"] == "pooled_lr")
        if count:
            ax.axhline(lr, color="tab:purple", linestyle=":", label="pooled LR (mean)")
        ax.set_title(f"{dataset} / {split}")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("ROC AUC on the common test set")
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the report -----------------------------------------------------------------------------------

def dataset_section(dataset: str, rows: list[dict[str, Any]], scores: Path, img_dir: Path, report: Path,
                    resamples: int) -> str:
    """Tables and plots for one data set."""
    from benchmarks.accuracy import DATASETS

    spec = DATASETS.get(dataset)
    present = {r["split"] for r in rows}
    splits = [s for s in (spec.splits if spec else ()) if s in present] + sorted(present - set(spec.splits if spec else ()))
    banks = {s: ScoreBank(scores, dataset, s, resamples) for s in splits}
    rounds = max((r["rounds"] for r in rows if r.get("rounds")), default=0)
    auc_png, rounds_png = img_dir / f"accuracy_{dataset}_auc_by_method.png", img_dir / f"accuracy_{dataset}_rounds.png"
    plot_auc_by_method(rows, splits, auc_png, dataset)
    plot_rounds(rows, splits, rounds_png, dataset)
    rel = Path(_relpath(img_dir, report.parent))
    out = [f"## {dataset}", "", "Mean ROC AUC over seeds on the common test set; differences with paired-bootstrap "
           "95% intervals (seeds pooled).", "", headline_table(banks, rows, splits), "",
           f"![ROC AUC by method]({rel / auc_png.name})", ""]
    for split in splits:
        out += [f"### {dataset} / {split}", "", summary_table(rows, split), "",
                "Paired-bootstrap differences (seeds pooled as described under Method):", "",
                comparison_table(banks[split], rows, split), ""]
    out += [f"### {dataset}: rounds to come within {TOLERANCE} of pooled", "",
            f"![federated AUC per round vs pooled]({rel / rounds_png.name})", ""]
    for split in splits:
        if any(r.get("round_roc_auc") for r in rows if r["split"] == split):
            out += [f"**{split}**", "", convergence_table(rows, split, rounds), ""]
    suffixes = sorted({r["method"].split("pooled_mlp_", 1)[1] for r in rows if r["method"].startswith("pooled_mlp_")})
    for suffix in suffixes:
        out += [f"### {dataset}: the cost of minimum-necessary use ({suffix.replace('_', ' ')})", "",
                "Difference = AUC with the extra feature(s) − AUC without; positive means leaving them out costs "
                "accuracy. Pooled data only; the split changes only the row order the pooled models see, so "
                "the last line pools every split × seed run (scikit-learn's lbfgs LR is deterministic, so its runs "
                "coincide).", "",
                variant_table(rows, splits, banks, suffix), ""]
    return "\n".join(out)


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), start.resolve())


def write_report(results: Path, scores: Path, report: Path, img_dir: Path, *, meta: dict[str, Any],
                 resamples: int) -> None:
    """Write the Markdown report and the plots from the rows file and saved scores."""
    rows = read_rows(results)
    if not rows:
        raise SystemExit(f"{results}: no rows yet; run the benchmark first")
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    head = ["# Accuracy benchmark: federated vs pooled vs local-only", "",
            "Generated by `python -m benchmarks.accuracy` (`make bench`) from "
            f"`{_relpath(results, report.parent)}`; rewrite with `--report-only`. Do not edit by hand.", ""]
    if meta:
        head += [f"Last full run: {meta.get('finished', '?')}, {meta.get('machine', '?')}; "
                 f"rounds {meta.get('rounds')}, seeds {meta.get('seeds')}, aggregations {meta.get('aggregations')}; "
                 f"**total wall time {meta.get('total_wall_s', 0) / 60:.1f} min**.", ""]
    body = [METHOD.format(resamples=resamples, bootstrap_seed=BOOTSTRAP_SEED, tolerance=TOLERANCE)]
    for ds in datasets:
        body.append(dataset_section(ds, [r for r in rows if r["dataset"] == ds], scores, img_dir, report, resamples))
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(head + body).rstrip() + "\n")
