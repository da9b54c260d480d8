"""Privacy benchmark: ROC AUC and membership-inference attacks against ε of record-level DP-SGD.

Run: ``.venv/bin/python -m benchmarks.privacy`` (``make bench``); ``--quick`` for a smoke run
(one seed, two rounds, results under ``benchmarks/results/raw/``).

For each data set (Telco churn on the skewed split, CDNOW purchase propensity on the cohort
partners), each seed and each ε ∈ {1, 3, 8, ∞}, a FedAvg federation of the three bundled
partners is trained **in process with the partners' own training code** (``models/dp_train.py``
for DP-SGD with Opacus: Poisson sampling, per-sample clipping, noise calibrated to the target ε
at δ = min(1e-5, 1/(10 n)) over rounds × local epochs, one accountant kept across rounds;
``models/train.py`` without DP). It runs without Flower because 24 Flower federations do not
fit the 2 shared cores here; SecAgg+ changes nothing about the privacy of each partner's
release (each update is private before masking), and ``tests/coordinator/test_coordinator_dp.py``
runs the same training through Flower with SecAgg+.

Measured on the final global model, on the common test set (customers no partner holds):

* ROC AUC, mean ± std over seeds, and a paired-bootstrap 95 % interval of AUC(ε) − AUC(∞)
  (the same test customers resampled for both);
* a **loss-threshold** membership-inference attack (Yeom et al. 2018): members are partners'
  training customers, non-members half of the common test set; score = −loss; attack ROC AUC;
* an **offline likelihood-ratio attack** (LiRA, Carlini et al. 2022, fixed-variance variant):
  ``K`` shadow models trained by the attacker, with the same recipe, on random halves of the other
  half of the test set (customers never in any training set), give each candidate's expected
  logit-confidence when it is *out*; the score is how far the target model's confidence exceeds it.
  Attack AUC 0.5 = no better than guessing.

Client-level DP (Flower's fixed clipping; noise on the sum of the partners' updates) is measured
alongside at ε = 3: the noise it needs with three partners, relative to the clipping norm, and
the AUC it reaches (``federated_client_dp``).

Rows go to ``benchmarks/results/privacy.json`` after every measurement; the report is
``docs/benchmarks-privacy.md`` with ``docs/img/privacy_auc_vs_epsilon.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks._common import (fmt_mean_std, markdown_table, mean_std, paired_bootstrap_auc_diff, read_rows,
                                upsert_rows)
from fedcrm.client.features import encode_features, encode_labels
from fedcrm.client.ingest import LABEL
from fedcrm.evaluation import load_rows, local_scaling
from fedcrm.models.dp_train import (DpTrainConfig, noise_multiplier_for, sample_rate_for, steps_per_epoch,
                                    train_local_dp)
from fedcrm.models.metrics import binary_metrics
from fedcrm.models.nets import build_model
from fedcrm.models.params import get_arrays, set_arrays
from fedcrm.models.train import predict_scores, train_local
from fedcrm.models.train_config import TrainConfig
from fedcrm.paths import DATASETS as DATA_ROOT
from fedcrm.paths import REPO_ROOT
from fedcrm.protocol import TaskSchema, load_task_schema

RESULTS = REPO_ROOT / "benchmarks" / "results"
RAW = RESULTS / "raw"
DOCS = REPO_ROOT / "docs"
EPSILONS = (1.0, 3.0, 8.0, math.inf)
DEFAULT_SEEDS = (0, 1, 2)
MAX_DELTA = 1e-5
ROW_KEY = ("dataset", "split", "method", "seed")


@dataclass(frozen=True)
class Recipe:
    """Training settings of every federation in the comparison (the same with and without DP)."""

    architecture: str = "logistic"
    rounds: int = 3
    local_epochs: int = 2
    batch_size: int = 256
    learning_rate: float = 0.02
    optimizer: str = "adam"
    max_grad_norm: float = 1.0
    shadows: int = 4


@dataclass
class Data:
    """One data set: each partner's training rows, the common test set, the task."""

    name: str
    split: str
    task: TaskSchema
    partners: dict[str, pd.DataFrame]
    test: pd.DataFrame


def load_telco() -> Data:
    """Telco churn, the bundled skewed split (partners A, B, C) and its common test set."""
    root = DATA_ROOT / "partners" / "telco"
    task = load_task_schema(DATA_ROOT / "tasks" / "telco_churn.yaml")
    partners = {p: load_rows(root / "skewed" / p / "partner.toml") for p in ("A", "B", "C")}
    return Data("telco", "skewed", task, partners, load_rows(root / "common_test" / "partner.toml"))


def load_cdnow() -> Data:
    """CDNOW propensity, the cohort partners (their consented customers) and the common test set."""
    from benchmarks.propensity import BUNDLED, PARTNERS, consented_rows
    from fedcrm.client.config import load_partner_config
    from fedcrm.client.transaction_ingest import customer_rows

    task = load_task_schema(DATA_ROOT / "tasks" / "cdnow_propensity.yaml")
    partners = {p: consented_rows(BUNDLED / p / "partner.toml") for p in PARTNERS}
    test = customer_rows(load_partner_config(BUNDLED / "common_test" / "partner.toml"))
    return Data("cdnow", "cohorts", task, partners, test)


LOADERS = {"telco": load_telco, "cdnow": load_cdnow}


def _xy(frame: pd.DataFrame, task: TaskSchema, scaling: Any) -> tuple[np.ndarray, np.ndarray]:
    return encode_features(frame, task, scaling), encode_labels(frame, LABEL)


def _cfg(recipe: Recipe, seed: int) -> TrainConfig:
    return TrainConfig(epochs=recipe.local_epochs, learning_rate=recipe.learning_rate, batch_size=recipe.batch_size,
                       optimizer=recipe.optimizer, seed=seed)  # type: ignore[arg-type]


def fedavg(parts: dict[str, tuple[np.ndarray, np.ndarray]], width: int, recipe: Recipe, seed: int,
           epsilon: float) -> tuple[list[np.ndarray], dict[str, dict[str, float]]]:
    """FedAvg over the partners; with finite ε each partner trains with DP-SGD (accountant kept across rounds)."""
    model = build_model(recipe.architecture, width, seed=seed)  # type: ignore[arg-type]
    global_arrays = get_arrays(model)
    states: dict[str, dict[str, Any] | None] = dict.fromkeys(parts)
    spend: dict[str, dict[str, float]] = {}
    sigmas: dict[str, tuple[float, float]] = {}
    for name, (x, _) in parts.items():
        if math.isfinite(epsilon):
            n = len(x)
            delta = min(MAX_DELTA, 1.0 / (10 * n))
            steps = recipe.rounds * recipe.local_epochs * steps_per_epoch(n, recipe.batch_size)
            sigmas[name] = (noise_multiplier_for(epsilon, delta, sample_rate_for(n, recipe.batch_size), steps), delta)
    for server_round in range(1, recipe.rounds + 1):
        updates, weights = [], []
        for i, (name, (x, y)) in enumerate(parts.items()):
            local = build_model(recipe.architecture, width)  # type: ignore[arg-type]
            set_arrays(local, global_arrays)
            cfg = _cfg(recipe, seed * 1000 + server_round * 10 + i)
            if math.isfinite(epsilon):
                sigma, delta = sigmas[name]
                result = train_local_dp(local, x, y, cfg, DpTrainConfig(sigma, recipe.max_grad_norm, delta, states[name]))
                states[name] = result.accountant_state
                spend[name] = {"epsilon": result.epsilon, "delta": delta, "noise_multiplier": sigma,
                               "sample_rate": result.sample_rate, "steps": result.total_steps}
            else:
                train_local(local, x, y, cfg)
            updates.append(get_arrays(local))
            weights.append(len(x))
        total = float(sum(weights))
        global_arrays = [sum(w / total * u[k] for u, w in zip(updates, weights, strict=True))
                         for k in range(len(global_arrays))]
    return global_arrays, spend


def client_level_fedavg(parts: dict[str, tuple[np.ndarray, np.ndarray]], width: int, recipe: Recipe, seed: int,
                        epsilon: float, delta: float = MAX_DELTA) -> tuple[list[np.ndarray], dict[str, float]]:
    """Client-level DP as Flower's fixed clipping does it: clip each update, Gaussian noise on the sum, mean.

    Every partner takes part in every round (sampling rate 1), so the noise multiplier for ε
    over the rounds follows from the Gaussian mechanism composed ``rounds`` times.
    """
    z = noise_multiplier_for(epsilon, delta, 1.0, recipe.rounds)
    clip = recipe.max_grad_norm
    rng = np.random.default_rng(seed)
    model = build_model(recipe.architecture, width, seed=seed)  # type: ignore[arg-type]
    global_arrays = get_arrays(model)
    for server_round in range(1, recipe.rounds + 1):
        deltas = []
        for i, (x, y) in enumerate(parts.values()):
            local = build_model(recipe.architecture, width)  # type: ignore[arg-type]
            set_arrays(local, global_arrays)
            train_local(local, x, y, _cfg(recipe, seed * 1000 + server_round * 10 + i))
            d = [a - g for a, g in zip(get_arrays(local), global_arrays, strict=True)]
            norm = math.sqrt(sum(float((v ** 2).sum()) for v in d))
            deltas.append([v * min(1.0, clip / max(norm, 1e-12)) for v in d])
        n = len(deltas)
        global_arrays = [g + (sum(dd[k] for dd in deltas) + rng.normal(0.0, z * clip, g.shape)) / n
                         for k, g in enumerate(global_arrays)]
    return global_arrays, {"noise_multiplier": z, "noise_std_on_mean_over_clip": z / len(parts)}


# -- attacks ------------------------------------------------------------------------------------------


def _confidence(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-example loss and logit-scaled confidence log(p_y / (1 − p_y)) of the true label."""
    p = np.clip(predict_scores(model, x), 1e-7, 1 - 1e-7)
    p_true = np.where(y > 0.5, p, 1 - p)
    return -np.log(p_true), np.log(p_true) - np.log1p(-p_true)


def _auc(members: np.ndarray, non_members: np.ndarray) -> float:
    labels = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    return float(binary_metrics(labels, np.r_[members, non_members])["roc_auc"])


def attacks(model: torch.nn.Module, members: tuple[np.ndarray, np.ndarray], non_members: tuple[np.ndarray, np.ndarray],
            pool: tuple[np.ndarray, np.ndarray], width: int, recipe: Recipe, seed: int) -> dict[str, float]:
    """Loss-threshold and offline LiRA attack AUCs against ``model``."""
    loss_in, conf_in = _confidence(model, *members)
    loss_out, conf_out = _confidence(model, *non_members)
    rng = np.random.default_rng(seed + 17)
    x_pool, y_pool = pool
    shadow_in, shadow_out = [], []
    for k in range(recipe.shadows):
        pick = rng.random(len(x_pool)) < 0.5
        shadow = build_model(recipe.architecture, width, seed=seed + 100 + k)  # type: ignore[arg-type]
        cfg = TrainConfig(epochs=recipe.rounds * recipe.local_epochs, learning_rate=recipe.learning_rate,
                          batch_size=recipe.batch_size, optimizer=recipe.optimizer, seed=seed + 100 + k)  # type: ignore[arg-type]
        train_local(shadow, x_pool[pick], y_pool[pick], cfg)
        shadow_in.append(_confidence(shadow, *members)[1])
        shadow_out.append(_confidence(shadow, *non_members)[1])
    mu_in, mu_out = np.mean(shadow_in, axis=0), np.mean(shadow_out, axis=0)
    sd = float(np.std(np.r_[np.concatenate(shadow_in) - np.repeat(mu_in[None], recipe.shadows, 0).ravel(),
                            np.concatenate(shadow_out) - np.repeat(mu_out[None], recipe.shadows, 0).ravel()]))
    sd = max(sd, 1e-3)
    return {"attack_loss_auc": _auc(-loss_in, -loss_out),
            "attack_lira_auc": _auc((conf_in - mu_in) / sd, (conf_out - mu_out) / sd)}


# -- the harness ------------------------------------------------------------------------------------


def method_name(epsilon: float) -> str:
    """``federated_dp_eps3`` / ``federated_nodp``."""
    return "federated_nodp" if not math.isfinite(epsilon) else f"federated_dp_eps{epsilon:g}"


def run_dataset(data: Data, seeds: tuple[int, ...], epsilons: tuple[float, ...], recipe: Recipe, results: Path,
                scores_dir: Path) -> None:
    """Every (seed, ε) federation of one data set; rows and test scores written after each."""
    pooled = pd.concat(list(data.partners.values()), ignore_index=True)
    scaling = local_scaling(pooled, data.task)  # what the statistics round computes, federated
    parts = {name: _xy(frame, data.task, scaling) for name, frame in data.partners.items()}
    x_test, y_test = _xy(data.test, data.task, scaling)
    width = data.task.width
    for seed in seeds:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(x_test))
        half = len(order) // 2
        non_idx, pool_idx = order[:half], order[half:]
        x_all = np.concatenate([p[0] for p in parts.values()])
        y_all = np.concatenate([p[1] for p in parts.values()])
        mem_idx = rng.choice(len(x_all), size=min(half, len(x_all)), replace=False)
        members, non_members = (x_all[mem_idx], y_all[mem_idx]), (x_test[non_idx], y_test[non_idx])
        pool = (x_test[pool_idx], y_test[pool_idx])
        runs: list[tuple[str, float]] = [(method_name(e), e) for e in epsilons]
        runs.append(("federated_client_dp_eps3", 3.0))
        for method, epsilon in runs:
            start = time.monotonic()
            extra: dict[str, Any] = {}
            if method.startswith("federated_client_dp"):
                arrays, extra = client_level_fedavg(parts, width, recipe, seed, epsilon)
            else:
                arrays, spend = fedavg(parts, width, recipe, seed, epsilon)
                if spend:
                    extra = {"epsilon_max": max(s["epsilon"] for s in spend.values()),
                             "noise_multipliers": {k: round(s["noise_multiplier"], 4) for k, s in spend.items()},
                             "deltas": {k: s["delta"] for k, s in spend.items()}}
            model = build_model(recipe.architecture, width)  # type: ignore[arg-type]
            set_arrays(model, arrays)
            scores = predict_scores(model, x_test)
            metrics = binary_metrics(y_test, scores)
            attack = attacks(model, members, non_members, pool, width, recipe, seed)
            row = {"dataset": data.name, "split": data.split, "method": method, "seed": seed,
                   "epsilon": None if not math.isfinite(epsilon) else epsilon, "roc_auc": round(metrics["roc_auc"], 6),
                   **{k: round(v, 6) for k, v in attack.items()}, **extra,
                   "wall_s": round(time.monotonic() - start, 2)}
            upsert_rows(results, [row], ROW_KEY)
            scores_dir.mkdir(parents=True, exist_ok=True)
            np.save(scores_dir / f"{data.name}-{method}-seed{seed}.npy", scores)
            np.save(scores_dir / f"{data.name}-labels.npy", y_test)
            print(json.dumps(row), flush=True)


def _scores(scores_dir: Path, dataset: str, method: str, seeds: list[int]) -> np.ndarray | None:
    paths = [scores_dir / f"{dataset}-{method}-seed{s}.npy" for s in seeds]
    return np.stack([np.load(p) for p in paths]) if all(p.exists() for p in paths) else None


def report(results: Path, scores_dir: Path, doc: Path, plot: Path, recipe: Recipe) -> None:
    """The Markdown table and the AUC-vs-ε plot from the rows on disk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(results)
    lines = ["# Benchmark: privacy (ROC AUC and membership inference vs ε)", "",
             f"Generated by `python -m benchmarks.privacy`; rows in `{results.relative_to(REPO_ROOT)}`. "
             "FedAvg of the three bundled partners, trained in process with the partners' own code "
             "(`models/dp_train.py`: Opacus DP-SGD, Poisson sampling, per-sample clipping, RDP accountant kept "
             f"across rounds); {recipe.architecture} model, {recipe.rounds} rounds × {recipe.local_epochs} local "
             f"epochs, batch {recipe.batch_size}, {recipe.optimizer} lr {recipe.learning_rate}, clipping norm "
             f"{recipe.max_grad_norm}; δ = min(1e-5, 1/(10 n)) per partner. ROC AUC on the common test set, "
             "mean ± std over seeds; Δ vs non-DP is the paired-bootstrap 95% interval of the difference of "
             "seed-averaged AUCs (2,000 resamples of the test customers). Attack AUCs: 0.5 = guessing.", ""]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, dataset in zip(axes, ("telco", "cdnow"), strict=True):
        mine = [r for r in rows if r["dataset"] == dataset]
        if not mine:
            continue
        seeds = sorted({int(r["seed"]) for r in mine})
        labels_path = scores_dir / f"{dataset}-labels.npy"
        y = np.load(labels_path) if labels_path.exists() else None
        base = _scores(scores_dir, dataset, "federated_nodp", seeds)
        table = []
        xs, ys, es = [], [], []
        for method in [*[method_name(e) for e in EPSILONS], "federated_client_dp_eps3"]:
            mr = [r for r in mine if r["method"] == method]
            if not mr:
                continue
            cur = _scores(scores_dir, dataset, method, seeds)
            diff = "–"
            if method != "federated_nodp" and base is not None and cur is not None and y is not None:
                diff = paired_bootstrap_auc_diff(y, cur, base, seed=0).text()
            eps = mr[0].get("epsilon")
            eps_max = mean_std(r.get("epsilon_max") for r in mr if r.get("epsilon_max") is not None)[0]
            table.append([method, "∞" if eps is None else f"{eps:g}",
                          "–" if math.isnan(eps_max) else f"{eps_max:.3f}",
                          fmt_mean_std(r["roc_auc"] for r in mr), diff,
                          fmt_mean_std(r["attack_loss_auc"] for r in mr), fmt_mean_std(r["attack_lira_auc"] for r in mr),
                          len(mr)])
            if not method.startswith("federated_client"):
                m, s, _ = mean_std(r["roc_auc"] for r in mr)
                xs.append(20.0 if eps is None else eps)
                ys.append(m)
                es.append(s)
        lines += [f"## {dataset} ({mine[0]['split']})", "",
                  markdown_table(["method", "target ε", "ε reached (max over partners)", "ROC AUC",
                                  "Δ AUC vs non-DP [95% CI]", "loss-threshold attack AUC", "LiRA attack AUC", "seeds"],
                                 table), ""]
        client = [r for r in mine if r["method"] == "federated_client_dp_eps3"]
        if client:
            ratio = client[0].get("noise_std_on_mean_over_clip")
            ten = noise_multiplier_for(3.0, MAX_DELTA, 1.0, 10) / 3
            lines += [f"Client-level DP (Flower's fixed clipping, every partner in every round) at ε = 3 over "
                      f"{recipe.rounds} rounds with 3 partners needs noise multiplier "
                      f"{client[0].get('noise_multiplier', float('nan')):.3f}: the noise on the mean update has "
                      f"standard deviation {ratio:.2f} × the clipping norm, while no partner's update may exceed "
                      f"1 × the clipping norm; over 10 rounds it is {ten:.2f} ×. The noise is of the size of the "
                      "signal, and the AUC above shows it: that is why record-level DP is the default.", ""]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3)
        ax.set_xscale("log")
        ax.set_xticks([1, 3, 8, 20], ["1", "3", "8", "∞"])
        ax.set_xlabel("target ε (δ ≤ 1e-5)")
        ax.set_ylabel("ROC AUC (common test set)")
        ax.set_title(f"{dataset}")
        ax.grid(alpha=0.3)
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    lines += [f"![ROC AUC vs ε]({os.path.relpath(plot, doc.parent)})", "",
              f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs shared with other work; "
              "torch CPU, Opacus 1.6."]
    doc.write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    p.add_argument("--rounds", type=int, default=Recipe.rounds)
    p.add_argument("--quick", action="store_true", help="one seed, two rounds, results under benchmarks/results/raw/")
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    recipe = Recipe(rounds=2 if args.quick else args.rounds)
    seeds = (0,) if args.quick else tuple(args.seeds)
    if args.quick:
        results, scores, doc, plot = (RAW / "privacy-quick.json", RAW / "privacy-scores-quick",
                                      RAW / "benchmarks-privacy-quick.md", RAW / "img-quick" / "privacy_auc_vs_epsilon.png")
    else:
        results, scores, doc, plot = (RESULTS / "privacy.json", RAW / "privacy-scores", DOCS / "benchmarks-privacy.md",
                                      DOCS / "img" / "privacy_auc_vs_epsilon.png")
    if not args.report_only:
        for name in args.datasets:
            run_dataset(LOADERS[name](), seeds, EPSILONS, recipe, results, scores)
    report(results, scores, doc, plot, recipe)
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
