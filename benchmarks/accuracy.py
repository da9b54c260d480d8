"""Accuracy benchmark: federated vs pooled vs local-only models on the bundled partner splits.

Run: ``.venv/bin/python -m benchmarks.accuracy`` (``make bench``); ``--quick`` for a smoke
run (one seed, skewed split, 3 rounds, results under ``benchmarks/results/raw/``).

For each data set in :data:`DATASETS`, each split and each seed, on fresh copies of the
bundled partners (initialised with ``fedcrm client init``'s own code):

* pooled references trained on all partners' rows in one place — scikit-learn logistic
  regression (``pooled_lr``), LightGBM (``pooled_lightgbm``) and the torch model of the
  federated architecture (``pooled_mlp``);
* each partner's local-only model (``local_<partner>``);
* the federated model with SecAgg+ (``federated_secagg``) and plain FedAvg
  (``federated_plain``), run by the coordinator's real runner (Flower + Ray);
* benchmark-only task variants on pooled data (e.g. ``pooled_mlp_with_gender``), to price
  minimum-necessary use.

Everything is evaluated on the data set's common test set (customers no partner holds).

A consortium's own test federation runs the same comparison on **any task and partner set**:

* ``--task T.yaml --partners P1.toml P2.toml … --test-config TEST.toml [--run-config R.toml]``:
  the partner configs themselves (each partner directory is copied, as it is, to the work
  directory), or
* ``--federation ROOT --task T.yaml [--run-config R.toml]``: ``ROOT/<split>/<partner>/partner.toml``
  for each split and ``ROOT/common_test/partner.toml`` (``--test-dir``) for the test set.

The task given is the one trained everywhere (it overrides the run config's); without a run
config the run settings' defaults apply. Partners are initialised, approve the task and, where
their directory holds a ``consents.csv``, import it (``fedcrm consent import``). Pooled and
local-only models train on each partner's *consented* rows (the rows its consent gate lets
through for the task's purpose, as in the federated run); customer- and transaction-level
exports both work. Results then go under ``benchmarks/results/raw/`` unless
``--results``/``--report`` say otherwise.
Rows go to ``benchmarks/results/accuracy.json`` after every measurement; the test-set
scores go to ``benchmarks/results/raw/accuracy-scores/`` for the paired bootstrap; the
report (``docs/benchmarks.md`` and ``docs/img/accuracy_*.png``) is written at the end, or
alone with ``--report-only``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._common import upsert_rows
from fedcrm.client.features import encode_features, encode_labels
from fedcrm.client.ingest import LABEL
from fedcrm.evaluation import (TrainingRecipe, evaluate_scores, federated_model, load_rows, local_scaling, score,
                               train_model)
from fedcrm.models.baselines import lightgbm_scores, logistic_regression_scores
from fedcrm.paths import DATASETS as DATA_ROOT
from fedcrm.paths import REPO_ROOT
from fedcrm.protocol import TaskSchema, load_task_schema

RESULTS = REPO_ROOT / "benchmarks" / "results"
RAW = RESULTS / "raw"
CONVERGENCE_TOLERANCE = 0.005  # "within 0.005 ROC AUC of the pooled model of the same architecture"
DEFAULT_ROUNDS = 10
DEFAULT_SEEDS = (0, 1, 2)
AGGREGATIONS = ("secagg", "plain")


@dataclass(frozen=True)
class DatasetSpec:
    """Where one benchmark data set's bundled partners, task and run config live.

    ``partner_root/<split>/<partner>/partner.toml`` are the partners of a split and
    ``partner_root/<test_dir>/partner.toml`` the common test set. ``variants`` maps a
    suffix to a benchmark-only task file, trained on pooled data only (never federated:
    such a task may lie outside what the partners' consent covers).
    """

    partner_root: Path
    task: Path
    run_config: Path | None
    splits: tuple[str, ...]
    test_dir: str = "common_test"
    variants: dict[str, Path] = field(default_factory=dict)
    #: Explicit partner configs per split (``--partners``), instead of ``partner_root/<split>/*/partner.toml``.
    partner_configs: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    #: The test set's partner config when it is not ``partner_root/<test_dir>/partner.toml``.
    test_config: Path | None = None

    def config_of(self, split: str, name: str) -> Path:
        """The partner config of one partner of a split."""
        for path in self.partner_configs.get(split, ()):
            if path.parent.name == name:
                return path
        return self.partner_root / split / name / "partner.toml"

    def test_config_path(self) -> Path:
        """The common test set's partner config."""
        return self.test_config or self.partner_root / self.test_dir / "partner.toml"

    def run_settings(self, overrides: dict[str, object]):  # noqa: ANN201 - coordinator RunConfig (lazy import)
        """The run config with this data set's task and ``overrides`` applied."""
        from fedcrm.coordinator.run_config import load_run_config

        return load_run_config(self.run_config, {"task": self.task, **overrides})

    def partners(self, split: str) -> list[str]:
        """Partner directory names of a split, sorted."""
        if split in self.partner_configs:
            return sorted(p.parent.name for p in self.partner_configs[split])
        root = self.partner_root / split
        names = sorted(p.name for p in root.iterdir() if (p / "partner.toml").is_file()) if root.is_dir() else []
        if len(names) < 2:
            raise SystemExit(f"{root}: a split needs at least two partner directories with partner.toml")
        return names


#: Data sets the harness knows; adding one is an entry here (bundled partners, task, run config).
DATASETS: dict[str, DatasetSpec] = {
    "telco": DatasetSpec(
        partner_root=DATA_ROOT / "partners" / "telco",
        task=DATA_ROOT / "tasks" / "telco_churn.yaml",
        run_config=DATA_ROOT / "telco" / "run.toml",
        splits=("skewed", "iid", "many"),
        variants={"with_gender": DATA_ROOT / "tasks" / "telco_churn_with_gender.yaml"},
    ),
}


def partner_set_spec(task: Path, partners: list[Path], test_config: Path, run_config: Path | None = None,
                     split: str = "federation") -> DatasetSpec:
    """A DatasetSpec for any task and an explicit list of partner configs plus a test set's config."""
    task, test_config = task.resolve(), test_config.resolve()
    configs = tuple(p.resolve() for p in partners)
    for path in (task, test_config, *configs, *([run_config] if run_config else [])):
        if not path.is_file():
            raise SystemExit(f"{path}: not found")
    load_task_schema(task)  # a broken task schema stops here, naming the file and field
    if len(configs) < 2:
        raise SystemExit("--partners: a federation needs at least two partner configs")
    names = [p.parent.name for p in configs]
    if len(set(names)) != len(names):
        raise SystemExit(f"--partners: partner directories must have distinct names (got {', '.join(names)}); "
                         "each is copied to <workdir>/<name>")
    return DatasetSpec(partner_root=test_config.parent.parent, task=task,
                       run_config=run_config.resolve() if run_config else None, splits=(split,),
                       partner_configs={split: configs}, test_config=test_config)


def federation_spec(root: Path, task: Path, run_config: Path | None, test_dir: str = "common_test") -> DatasetSpec:
    """A DatasetSpec for any task and partner set laid out as ``root/<split>/<partner>/partner.toml``."""
    root, task = root.resolve(), task.resolve()
    run_config = run_config.resolve() if run_config is not None else None
    for path in (task, *([run_config] if run_config else []), root / test_dir / "partner.toml"):
        if not path.is_file():
            raise SystemExit(f"{path}: not found (a federation needs its task, run config and common test set)")
    load_task_schema(task)  # a broken task schema stops here, naming the file and field
    splits = tuple(sorted(
        d.name for d in root.iterdir()
        if d.is_dir() and d.name != test_dir and sum((p / "partner.toml").is_file() for p in d.iterdir()) >= 2))
    if not splits:
        raise SystemExit(f"{root}: no split directory with at least two partner directories (<split>/<partner>/"
                         "partner.toml)")
    return DatasetSpec(partner_root=root, task=task, run_config=run_config, splits=splits, test_dir=test_dir)


@dataclass
class Case:
    """One (data set, split, seed) and where its files go."""

    dataset: str
    spec: DatasetSpec
    split: str
    seed: int
    rounds: int
    work: Path
    results: Path
    scores: Path

    def row(self, method: str, metrics: dict[str, float], wall_s: float, rounds: int | None = None,
            **extra: Any) -> dict[str, Any]:
        """A result row in the harness's schema (extra fields after the standard ones)."""
        return {"dataset": self.dataset, "split": self.split, "method": method, "seed": self.seed,
                "roc_auc": metrics["roc_auc"], "pr_auc": metrics["pr_auc"],
                "top_decile_lift": metrics["top_decile_lift"], "rounds": rounds, "wall_s": round(wall_s, 3),
                **extra}

    def save_scores(self, method: str, scores: np.ndarray) -> None:
        """Keep a method's test-set scores for the paired bootstrap."""
        path = self.scores / self.dataset / self.split / method / f"seed{self.seed}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, scores.astype(np.float64))

    def record(self, row: dict[str, Any], scores: np.ndarray | None) -> None:
        """Write one row (replacing an older one with the same key) and its scores."""
        if scores is not None:
            self.save_scores(row["method"], scores)
        upsert_rows(self.results, [row])
        print(f"  {row['method']:<28} ROC AUC {row['roc_auc']:.4f}  ({row['wall_s']:.1f} s)", flush=True)


# -- preparing partners ---------------------------------------------------------------------------

def fresh_partners(case: Case) -> tuple[list[Path], Path]:
    """Copy the split's partners and the test set to a fresh directory: initialise, approve the task, import consents."""
    from typer.testing import CliRunner

    from fedcrm.cli import app  # the CLI's own commands, as a partner's data team runs them

    def cli(*args: str) -> None:
        result = CliRunner().invoke(app, list(args))
        if result.exit_code != 0:
            raise SystemExit(f"fedcrm {' '.join(args)} failed:\n{result.output}")

    if case.work.exists():
        shutil.rmtree(case.work)
    case.work.mkdir(parents=True)
    configs = []
    for name in case.spec.partners(case.split):
        source = case.spec.config_of(case.split, name)
        shutil.copytree(source.parent, case.work / name)
        config = case.work / name / source.name
        cli("client", "init", "--config", str(config))
        cli("client", "approve", "--config", str(config), "--task", str(case.spec.task), "--by", "benchmark")
        if (case.work / name / "consents.csv").is_file():
            from fedcrm.client.config import load_partner_config

            cli("consent", "import", str(case.work / name / "consents.csv"), "--partner-dir", str(case.work / name),
                "--partner-key", str(load_partner_config(config).key_path))
        configs.append(config)
    test = case.spec.test_config_path()
    shutil.copytree(test.parent, case.work / "_test")
    return configs, case.work / "_test" / test.name


def consented_rows(config: Path, task: TaskSchema) -> pd.DataFrame:
    """A partner's rows as its consent gate lets them through for the task's purpose (features and label)."""
    from datetime import UTC, datetime

    from fedcrm.client.partner_session import PartnerSession, RoundOrder

    session = PartnerSession(config)
    order = RoundOrder(run_id="benchmark-baselines", server_round=0, stage="benchmark", at=datetime.now(UTC),
                       schema_hash=task.sha256(), purpose=task.purpose)
    view, _ = session.consented(task, order, session.task_columns(task, with_label=True))
    return view.frame


# -- centralised methods --------------------------------------------------------------------------

def _timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def torch_scores(train: pd.DataFrame, test: pd.DataFrame, task: TaskSchema, recipe: TrainingRecipe) -> np.ndarray:
    """Train the federated architecture on one frame (its own scaling) and score the test set."""
    scaling = local_scaling(train, task)
    return score(train_model(train, task, scaling, recipe), test, task, scaling)


def sklearn_scores(kind: str, train: pd.DataFrame, test: pd.DataFrame, task: TaskSchema, seed: int) -> np.ndarray:
    """A scikit-learn / LightGBM baseline on the task schema's encoding of the same rows."""
    scaling = local_scaling(train, task)
    x_train, x_test = encode_features(train, task, scaling), encode_features(test, task, scaling)
    y_train = encode_labels(train, LABEL)
    if kind == "lr":
        return logistic_regression_scores(x_train, y_train, x_test, seed=seed)
    return lightgbm_scores(x_train, y_train, x_test, seed=seed)


def centralised(case: Case, partners: dict[str, pd.DataFrame], test: pd.DataFrame, task: TaskSchema,
                recipe: TrainingRecipe) -> dict[str, np.ndarray]:
    """Pooled baselines, benchmark-only variants and local-only models; returns scores by method."""
    pooled = pd.concat(partners.values(), ignore_index=True)
    jobs: list[tuple[str, Callable[[], np.ndarray]]] = [
        ("pooled_lr", lambda: sklearn_scores("lr", pooled, test, task, case.seed)),
        ("pooled_lightgbm", lambda: sklearn_scores("lightgbm", pooled, test, task, case.seed)),
        ("pooled_mlp", lambda: torch_scores(pooled, test, task, recipe)),
    ]
    for suffix, path in case.spec.variants.items():
        variant = load_task_schema(path)
        jobs.append((f"pooled_mlp_{suffix}", lambda v=variant: torch_scores(pooled, test, v, recipe)))
        jobs.append((f"pooled_lr_{suffix}", lambda v=variant: sklearn_scores("lr", pooled, test, v, case.seed)))
    for name, frame in partners.items():
        jobs.append((f"local_{name}", lambda f=frame: torch_scores(f, test, task, recipe)))
    out = {}
    for method, job in jobs:
        scores, wall = _timed(job)
        case.record(case.row(method, evaluate_scores(test, scores), wall), scores)
        out[method] = scores
    return out


# -- federated ------------------------------------------------------------------------------------

def round_curve(run_dir: Path, test: pd.DataFrame, task: TaskSchema, scaling: dict[str, tuple[float, float]],
                rounds: int) -> tuple[list[float], list[float]]:
    """Common-test ROC AUC of each round's model, and seconds from run start to that round's end."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line]
    start = next(e["time"] for e in events if e["event"] == "run_start")
    ends = {int(e["round"]): e["time"] - start for e in events if e["event"] == "evaluate"}
    aucs, walls = [], []
    for k in range(1, rounds + 1):
        model, _ = federated_model(run_dir, task, f"round-{k}")
        aucs.append(evaluate_scores(test, score(model, test, task, scaling))["roc_auc"])
        walls.append(round(float(ends[k]), 3))
    return aucs, walls


def first_within(curve: list[float], reference: float, tolerance: float = CONVERGENCE_TOLERANCE) -> int | None:
    """First round (1-based) whose AUC is at least ``reference − tolerance``; None if none is."""
    return next((k + 1 for k, auc in enumerate(curve) if auc >= reference - tolerance), None)


def federated(case: Case, configs: list[Path], test: pd.DataFrame, task: TaskSchema, pooled_mlp_auc: float,
              aggregations: tuple[str, ...]) -> None:
    """Run the coordinator on the fresh partners for each aggregation and record final and per-round AUCs."""
    from fedcrm.coordinator.runner import run_federation

    for aggregation in aggregations:
        method = f"federated_{aggregation}"
        run_id = f"{case.dataset}-{case.split}-s{case.seed}-{aggregation}"
        config = case.spec.run_settings({"rounds": case.rounds, "seed": case.seed, "aggregation": aggregation,
                                         "run_id": run_id})
        result = run_federation(config, configs, runs_dir=case.work / "runs")
        if not result.succeeded:
            nan = {"roc_auc": float("nan"), "pr_auc": float("nan"), "top_decile_lift": float("nan")}
            case.record(case.row(method, nan, result.wall_s, case.rounds, error=result.error,
                                 run_dir=str(result.run_dir)), None)
            continue
        model, scaling = federated_model(result.run_dir, task)
        scores = score(model, test, task, scaling)
        curve, walls = round_curve(result.run_dir, test, task, scaling, case.rounds)
        events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines() if line]
        start = next(e["time"] for e in events if e["event"] == "run_start")
        ready = next(e["time"] for e in events if e["event"] == "partners")
        k = first_within(curve, pooled_mlp_auc)
        case.record(case.row(
            method, evaluate_scores(test, scores), result.wall_s, case.rounds,
            partners=len(configs),
            round_roc_auc=[round(a, 6) for a in curve],
            round_wall_s=walls,
            startup_s=round(ready - start, 3),
            reference_pooled_mlp_roc_auc=round(pooled_mlp_auc, 6),
            rounds_to_pooled=k,
            wall_s_to_pooled=walls[k - 1] if k else None,
        ), scores)


# -- driver ---------------------------------------------------------------------------------------

def run_case(case: Case, aggregations: tuple[str, ...]) -> None:
    """Every method for one (data set, split, seed)."""
    print(f"== {case.dataset} / {case.split} / seed {case.seed}", flush=True)
    configs, test_config = fresh_partners(case)
    cfg = case.spec.run_settings({"rounds": case.rounds, "seed": case.seed})
    task = load_task_schema(cfg.task)
    test = load_rows(test_config)
    partners = {path.parent.name: consented_rows(path, task) for path in configs}
    labels = case.scores / case.dataset / case.split / "labels.npy"
    labels.parent.mkdir(parents=True, exist_ok=True)
    np.save(labels, encode_labels(test, LABEL).astype(np.int8))
    # Same number of passes over the data as a partner makes in the federated run.
    recipe = TrainingRecipe(architecture=cfg.architecture, epochs=cfg.rounds * cfg.local_epochs,
                            learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, seed=case.seed)
    scores = centralised(case, partners, test, task, recipe)
    pooled_auc = evaluate_scores(test, scores["pooled_mlp"])["roc_auc"]
    federated(case, configs, test, task, pooled_auc, aggregations)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: seed 0, skewed split, 3 rounds; results and report under benchmarks/results/raw/")
    p.add_argument("--datasets", nargs="+", default=None, choices=sorted(DATASETS))
    p.add_argument("--splits", nargs="+", default=None, help="splits to run (default: every split of the data set)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default 0 1 2)")
    p.add_argument("--rounds", type=int, default=None, help=f"federated rounds (default {DEFAULT_ROUNDS})")
    p.add_argument("--aggregations", nargs="+", default=list(AGGREGATIONS), choices=AGGREGATIONS)
    p.add_argument("--workdir", type=Path, default=None, help="partner copies and run directories")
    p.add_argument("--results", type=Path, default=None, help="rows JSON (default benchmarks/results/accuracy.json)")
    p.add_argument("--report", type=Path, default=None, help="Markdown report (default docs/benchmarks.md)")
    p.add_argument("--img-dir", type=Path, default=None, help="plots (default docs/img)")
    p.add_argument("--resamples", type=int, default=2000, help="paired-bootstrap resamples")
    p.add_argument("--scores-dir", type=Path, default=None,
                   help="test-set scores for the bootstrap (default benchmarks/results/raw/accuracy-scores*)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from saved rows and scores")
    p.add_argument("--federation", type=Path, default=None,
                   help="any partner set: ROOT/<split>/<partner>/partner.toml plus ROOT/common_test (with --task, "
                        "--run-config)")
    p.add_argument("--partners", nargs="+", type=Path, default=None,
                   help="any partner set: the partner configs themselves (with --task and --test-config)")
    p.add_argument("--test-config", type=Path, default=None,
                   help="with --partners: the common test set's partner config (customers no partner holds)")
    p.add_argument("--task", type=Path, default=None, help="with --federation/--partners: the task schema")
    p.add_argument("--run-config", type=Path, default=None,
                   help="with --federation/--partners: the run config (default: the run settings' defaults)")
    p.add_argument("--test-dir", default="common_test", help="with --federation: the common test set's directory")
    p.add_argument("--name", default="custom", help="with --federation: the data set's name in rows and plots")
    args = p.parse_args(argv)
    if args.federation is not None and args.partners is not None:
        p.error("--federation and --partners are two ways to name the partner set: give one")
    if args.federation is not None or args.partners is not None:
        if args.task is None:
            p.error("--federation/--partners need --task")
        if args.partners is not None:
            if args.test_config is None:
                p.error("--partners needs --test-config")
            DATASETS[args.name] = partner_set_spec(args.task, args.partners, args.test_config, args.run_config)
        else:
            DATASETS[args.name] = federation_spec(args.federation, args.task, args.run_config, args.test_dir)
        args.datasets = [args.name]
        args.results = args.results or RAW / f"accuracy-{args.name}.json"
        args.report = args.report or RAW / f"benchmarks-{args.name}.md"
        args.img_dir = args.img_dir or RAW / f"img-{args.name}"
        args.scores_dir = args.scores_dir or RAW / f"accuracy-scores-{args.name}"
    quick = args.quick
    args.seeds = args.seeds or ([0] if quick else list(DEFAULT_SEEDS))
    args.rounds = args.rounds or (3 if quick else DEFAULT_ROUNDS)
    args.datasets = args.datasets or list(DATASETS)
    args.workdir = args.workdir or RAW / ("accuracy-work-quick" if quick else "accuracy-work")
    args.results = args.results or (RAW / "accuracy-quick.json" if quick else RESULTS / "accuracy.json")
    args.report = args.report or (RAW / "benchmarks-quick.md" if quick else REPO_ROOT / "docs" / "benchmarks.md")
    args.img_dir = args.img_dir or (RAW / "img-quick" if quick else REPO_ROOT / "docs" / "img")
    args.scores = args.scores_dir or RAW / ("accuracy-scores-quick" if quick else "accuracy-scores")
    if quick and not args.splits:
        args.splits = ["skewed"]
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or only its report) as the options say."""
    import torch

    args = parse_args(argv)
    # One thread: on a shared 2-core machine, torch's intra-op threads mostly wait for each other
    # (measured 2x slower with 2 under load); the federated clients run with one thread too.
    torch.set_num_threads(1)
    meta_path = args.scores / "harness.json"
    if not args.report_only:
        started = time.perf_counter()
        for seed in args.seeds:  # seeds outermost: a cut-off run still covers every split
            for name in args.datasets:
                spec = DATASETS[name]
                for split in args.splits or spec.splits:
                    if split not in spec.splits:
                        raise SystemExit(f"data set {name} has no split '{split}' (choose from {spec.splits})")
                    case = Case(name, spec, split, seed, args.rounds, args.workdir / name / split / f"seed{seed}",
                                args.results, args.scores)
                    run_case(case, tuple(args.aggregations))
        total = time.perf_counter() - started
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps({
            "total_wall_s": round(total, 1), "rounds": args.rounds, "seeds": args.seeds,
            "datasets": args.datasets, "splits": args.splits, "aggregations": args.aggregations,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            # Wall times depend on what else the machine runs; keep the load next to them.
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        }, indent=2))
        print(f"benchmark finished in {total / 60:.1f} min", flush=True)
    from benchmarks.accuracy_report import write_report

    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    write_report(args.results, args.scores, args.report, args.img_dir, meta=meta, resamples=args.resamples)
    print(f"wrote {args.report} and plots in {args.img_dir}", flush=True)


if __name__ == "__main__":
    main()
