"""Round-time benchmark: seconds per federated round on the deployment engine and on simulation.

Run: ``.venv/bin/python -m benchmarks.rounds`` (``--quick``: 2 rounds, results under
``benchmarks/results/raw/``). Three bundled skewed Telco partners, SecAgg+, the Telco run
config, one seed per setting; everything in one run so the settings share the machine's
load (recorded with the rows: other work shares the 2 cores).

Settings (rows keyed by ``setting``):

* ``deployment`` — what ``fedcrm client join`` does now: a real ``flower-superlink``
  (``fedcrm.coordinator.superlink``), three ``fedcrm client join`` processes (SuperNode in
  ``--isolation process`` with one long-lived ClientApp worker each, short polls) and
  ``run_deployment`` (what ``fedcrm coordinator run --superlink`` calls);
* ``deployment_sqlstate`` — ``deployment`` with the SuperLink's state in Flower's SQLite store
  (``fedcrm coordinator superlink --state-db``) instead of in memory (the default);
* ``deployment_stock`` — the same processes with Flower's stock behaviour: ``--isolation
  subprocess`` (a new ``flwr-clientapp`` per message) and its fixed 3 s polls
  (``FEDCRM_GRID_POLL_S=3``, stock ``flower-superlink``/``flower-supernode`` sleeps);
* ``simulation`` — ``run_federation`` on Flower's simulation engine (Ray).

Per round: wall seconds (round *k* ends at the coordinator's ``evaluate`` event of round
*k*; round 1 starts at its ``round_start``), the common-test ROC AUC of the round's model,
and for ``deployment`` a breakdown from the workers' task journals
(``$FLWR_HOME/clientapp-tasks.jsonl``): partner work (load, gate, encode, train,
evaluate, statistics), ClientApp task handling (pull, push through the Runtime API) and
the rest (Flower transport and polling); from the ServerApp's exchange journal
(``FEDCRM_GRID_JOURNAL``): seconds pushing orders to the SuperLink, waiting for replies, and
the coordinator's own work between exchanges. The cost of one stock ``flwr-clientapp``
process start is measured apart (importing what it imports, 3 times). Time to quality:
the first round whose model is within 0.005 ROC AUC of pooled logistic regression on the
common test set, in wall seconds from the call that ``fedcrm coordinator run`` makes.

Outputs: ``benchmarks/results/rounds.json``, ``docs/benchmarks-rounds.md``,
``docs/img/rounds_wall.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import fmt_mean_std, markdown_table, read_rows, upsert_rows
from fedcrm.paths import DATASETS, REPO_ROOT

RESULTS = REPO_ROOT / "benchmarks" / "results"
RAW = RESULTS / "raw"
TOLERANCE = 0.005
ROW_KEY = ("setting", "seed")
SETTINGS = ("deployment", "deployment_sqlstate", "deployment_stock", "simulation")
GRID_JOURNAL = "grid-exchanges.jsonl"
WORK_STEPS = ("load", "gate", "encode", "train", "evaluate", "statistics")
PARTNERS = ("A", "B", "C")
TASK = DATASETS / "tasks" / "telco_churn.yaml"
RUN_CONFIG = DATASETS / "telco" / "run.toml"


def _env_flower() -> None:
    from fedcrm import _offline

    _offline.enforce_offline_environment()


# -- partners and the reference -------------------------------------------------------------------

def fresh_partners(work: Path) -> tuple[list[Path], Path]:
    """Copies of the skewed Telco partners (initialised, task approved) and of the common test set."""
    from typer.testing import CliRunner

    from fedcrm.cli import app

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    configs = []
    for name in PARTNERS:
        shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / name, work / name)
        config = work / name / "partner.toml"
        for args in (["client", "init", "--config", str(config)],
                     ["client", "approve", "--config", str(config), "--task", str(TASK), "--by", "benchmark"]):
            result = CliRunner().invoke(app, args)
            if result.exit_code != 0:
                raise SystemExit(f"{' '.join(args)} failed:\n{result.output}")
        configs.append(config)
    shutil.copytree(DATASETS / "partners" / "telco" / "common_test", work / "common_test")
    return configs, work / "common_test" / "partner.toml"


def pooled_lr_auc(configs: list[Path], test_config: Path, seed: int) -> float:
    """ROC AUC of pooled logistic regression on the common test set (the quality target)."""
    import pandas as pd

    from benchmarks.accuracy import sklearn_scores
    from fedcrm.evaluation import evaluate_scores, load_rows
    from fedcrm.protocol import load_task_schema

    task = load_task_schema(TASK)
    pooled = pd.concat([load_rows(c) for c in configs], ignore_index=True)
    test = load_rows(test_config)
    return float(evaluate_scores(test, sklearn_scores("lr", pooled, test, task, seed))["roc_auc"])


def round_aucs(run_dir: Path, test_config: Path, rounds: int) -> list[float]:
    """Common-test ROC AUC of each round's model."""
    from fedcrm.evaluation import evaluate_scores, federated_model, load_rows, score
    from fedcrm.protocol import load_task_schema

    task = load_task_schema(TASK)
    test = load_rows(test_config)
    out = []
    for k in range(1, rounds + 1):
        model, scaling = federated_model(run_dir, task, f"round-{k}")
        out.append(round(float(evaluate_scores(test, score(model, test, task, scaling))["roc_auc"]), 6))
    return out


# -- timings from a run directory -----------------------------------------------------------------

def round_times(run_dir: Path, t0: float) -> tuple[list[float], list[float], float]:
    """Per-round wall seconds, seconds from ``t0`` to each round's end, and seconds to round 1's start."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line]
    starts = {int(e["round"]): e["time"] for e in events if e["event"] == "round_start"}
    ends = {int(e["round"]): e["time"] for e in events if e["event"] == "evaluate"}
    walls, since = [], []
    if 1 not in starts:
        return [], [], round(time.time() - t0, 3)
    previous = starts[1]
    for k in sorted(ends):
        walls.append(round(ends[k] - previous, 3))
        since.append(round(ends[k] - t0, 3))
        previous = ends[k]
    return walls, since, round(starts[1] - t0, 3)


def stage_times(run_dir: Path) -> list[list[Any]]:
    """[round, stage, seconds since the previous stage ended] for every SecAgg+ stage and evaluation."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line]
    out, previous = [], None
    for e in events:
        if e["event"] == "round_start":
            previous = e["time"]
        elif e["event"] in ("secagg_stage", "evaluate", "dropout") and previous is not None:
            stage = e.get("stage", "evaluate") if e["event"] != "dropout" else f"{e.get('stage')} (dropout)"
            out.append([int(e["round"]), stage, round(e["time"] - previous, 2)])
            previous = e["time"]
    return out


def worker_breakdown(partner_dirs: list[Path], rounds: int) -> list[dict[str, float]]:
    """Per round: the slowest partner's work by step, its task handling, from the workers' journals."""
    per_round: list[dict[str, float]] = [dict() for _ in range(rounds)]
    for pdir in partner_dirs:
        journal = pdir / "work" / "flwr_home" / "clientapp-tasks.jsonl"
        if not journal.exists():
            continue
        mine: list[dict[str, float]] = [dict() for _ in range(rounds)]
        for line in journal.read_text().splitlines():
            task = json.loads(line)
            k = int(task.get("group_id") or 0)
            if not 1 <= k <= rounds:
                continue
            acc = mine[k - 1]
            for step, seconds in (task.get("work") or {}).items():
                acc[step] = acc.get(step, 0.0) + float(seconds)
            acc["task_handling"] = acc.get("task_handling", 0.0) + float(task.get("pull_s", 0.0)) + \
                float(task.get("push_s", 0.0)) + float(task.get("load_s", 0.0))
            acc["clientapp_call"] = acc.get("clientapp_call", 0.0) + float(task.get("call_s", 0.0))
            acc["tasks"] = acc.get("tasks", 0.0) + 1
        for k in range(rounds):
            busy = mine[k].get("clientapp_call", 0.0) + mine[k].get("task_handling", 0.0)
            if busy > per_round[k].get("clientapp_call", 0.0) + per_round[k].get("task_handling", 0.0):
                per_round[k] = mine[k]
    return [{key: round(v, 4) for key, v in r.items()} for r in per_round]


def clientapp_start_s(repeats: int = 3) -> list[float]:
    """Wall seconds a stock ``flwr-clientapp`` spends importing before it can handle its one message."""
    code = "import flwr.supernode.cli.flwr_clientapp, fedcrm.client.flower_app"
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd="/")
        out.append(round(time.perf_counter() - started, 3))
    return out


# -- the settings ---------------------------------------------------------------------------------

def _run_config(rounds: int, seed: int, run_id: str):  # noqa: ANN202
    from fedcrm.coordinator.run_config import load_run_config

    return load_run_config(RUN_CONFIG, {"rounds": rounds, "seed": seed, "run_id": run_id})


def run_deployment_setting(work: Path, configs: list[Path], rounds: int, seed: int, *, stock: bool,
                           sql_state: bool = False) -> dict[str, Any]:
    """SuperLink + three joins + one run; returns timings (the processes are stopped by PID)."""
    from fedcrm.coordinator.deployment import run_deployment
    from fedcrm.coordinator.grid_polling import JOURNAL_ENV, POLL_ENV
    from fedcrm.coordinator.processes import stop_processes
    from fedcrm.coordinator.superlink import free_port, start_superlink, stop_superlink

    setting = "deployment_stock" if stock else "deployment_sqlstate" if sql_state else "deployment"
    previous_poll = os.environ.get(POLL_ENV)
    os.environ[POLL_ENV] = "3" if stock else "0.1"  # read by the ServerApp the SuperLink starts
    journal = work / GRID_JOURNAL
    journal.unlink(missing_ok=True)
    os.environ[JOURNAL_ENV] = str(journal)
    state_dir = work / f"superlink-{setting}"
    link = start_superlink(state_dir, database=state_dir / "state.db" if sql_state else None)
    joins: list[subprocess.Popen[bytes]] = []
    try:
        for config in configs:
            log = (config.parent / f"join-{setting}.log").open("wb")
            joins.append(subprocess.Popen(
                [sys.executable, "-m", "fedcrm.cli", "client", "join", "--config", str(config),
                 "--superlink", link.address, "--port", str(free_port()), "--insecure",
                 "--isolation", "subprocess" if stock else "process"],
                stdout=log, stderr=subprocess.STDOUT))
        t0 = time.time()
        result = run_deployment(_run_config(rounds, seed, f"rounds-{setting}-s{seed}"), len(configs), link.address,
                                work / "runs", timeout_s=3600)
        total = time.time() - t0
    finally:
        for join in joins:
            if join.poll() is None:
                join.send_signal(signal.SIGINT)
        for join in joins:
            try:
                join.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop_processes({join.pid})
        stop_superlink(link)
        os.environ.pop(JOURNAL_ENV, None)
        if previous_poll is None:
            os.environ.pop(POLL_ENV, None)
        else:
            os.environ[POLL_ENV] = previous_poll
    return {"run_dir": result.run_dir, "t0": t0, "total_s": total, "error": result.error, "journal": journal}


def exchange_breakdown(journal: Path, rounds: int) -> list[dict[str, float]]:
    """Per round, from the ServerApp's exchange journal: exchanges, push, wait and between-exchange seconds."""
    if not journal.exists():
        return []
    entries = [json.loads(line) for line in journal.read_text().splitlines() if line]
    per_round: list[dict[str, float]] = [{"exchanges": 0, "push_s": 0.0, "wait_s": 0.0, "between_s": 0.0}
                                         for _ in range(rounds)]
    previous_end: float | None = None
    for e in entries:
        k = int(e["group_id"]) if str(e.get("group_id", "")).isdigit() else 0
        if 1 <= k <= rounds:
            acc = per_round[k - 1]
            acc["exchanges"] += 1
            acc["push_s"] += e["push_s"]
            acc["wait_s"] += e["last_reply_s"] - e["push_s"]
            if previous_end is not None:
                acc["between_s"] += max(0.0, e["started"] - previous_end)
        previous_end = e["started"] + e["last_reply_s"]
    return [{key: round(v, 3) for key, v in r.items()} for r in per_round]


def run_simulation_setting(work: Path, configs: list[Path], rounds: int, seed: int) -> dict[str, Any]:
    """One run on the simulation engine."""
    from fedcrm.coordinator.runner import run_federation

    t0 = time.time()
    result = run_federation(_run_config(rounds, seed, f"rounds-simulation-s{seed}"), configs, runs_dir=work / "runs")
    total = time.time() - t0
    return {"run_dir": result.run_dir, "t0": t0, "total_s": total, "error": result.error}


def measure(setting: str, work: Path, rounds: int, seed: int, results: Path) -> dict[str, Any]:
    """Run one setting on fresh partners and write its row."""
    print(f"== {setting}, seed {seed}, {rounds} rounds (load {os.getloadavg()[0]:.1f})", flush=True)
    configs, test_config = fresh_partners(work / setting)
    reference = pooled_lr_auc(configs, test_config, seed)
    load_before = [round(x, 2) for x in os.getloadavg()]
    if setting == "simulation":
        out = run_simulation_setting(work / setting, configs, rounds, seed)
    else:
        out = run_deployment_setting(work / setting, configs, rounds, seed, stock=setting == "deployment_stock",
                                     sql_state=setting == "deployment_sqlstate")
    load_after = [round(x, 2) for x in os.getloadavg()]
    walls, since, startup = round_times(out["run_dir"], out["t0"])
    aucs = round_aucs(out["run_dir"], test_config, len(walls))
    k = next((i + 1 for i, auc in enumerate(aucs) if auc >= reference - TOLERANCE), None)
    row: dict[str, Any] = {
        "setting": setting, "seed": seed, "rounds": rounds, "aggregation": "secagg", "partners": len(configs),
        "round_wall_s": walls, "round_end_s": since, "startup_s": startup, "total_s": round(out["total_s"], 3),
        "round_roc_auc": aucs, "pooled_lr_roc_auc": round(reference, 6), "rounds_to_quality": k,
        "wall_s_to_quality": since[k - 1] if k else None,
        "load_before": load_before, "load_after": load_after, "error": out["error"],
        "stage_s": stage_times(out["run_dir"]),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if out.get("journal"):
        row["exchanges"] = exchange_breakdown(out["journal"], rounds)
    if setting == "deployment":
        row["breakdown"] = worker_breakdown([c.parent for c in configs], rounds)
        logs = [(c.parent / "work" / "flwr_home" / "clientapp.log") for c in configs]
        row["worker_warm_up_s"] = [_warm_up(p) for p in logs]
    upsert_rows(results, [row], ROW_KEY)
    print(f"  per round {walls} s; ROC AUC {aucs}; to quality: round {k}, "
          f"{row['wall_s_to_quality']} s; error: {out['error']}", flush=True)
    return row


def _warm_up(log: Path) -> float | None:
    if not log.exists():
        return None
    for line in log.read_text().splitlines():
        if "warmed up in" in line:
            return float(line.split("warmed up in")[1].split()[0])
    return None


# -- report ---------------------------------------------------------------------------------------

LABELS = {
    "deployment": "deployment (fedcrm: process isolation, one worker per partner, short polls, SuperLink state in memory)",
    "deployment_sqlstate": "deployment, SuperLink state in Flower's SQLite store (--state-db)",
    "deployment_stock": "deployment, Flower stock (one flwr-clientapp per message, 3 s polls)",
    "simulation": "simulation (Ray)",
}


def write_report(results: Path, report: Path, img_dir: Path, meta: dict[str, Any]) -> None:
    """Markdown table and plot from the saved rows."""
    rows = sorted(read_rows(results), key=lambda r: (SETTINGS.index(r["setting"]), r["seed"]))
    table = []
    for r in rows:
        later = r["round_wall_s"][1:] or r["round_wall_s"]
        done = f"{len(r['round_wall_s'])} of {r['rounds']}"
        if r.get("error"):
            done += f" (failed: {r['error'][:120]})"
        table.append([LABELS[r["setting"]], r["seed"], done, fmt_mean_std(r["round_wall_s"], 2),
                      fmt_mean_std(later, 2), f"{r['startup_s']:.1f}", r["rounds_to_quality"] or "–",
                      f"{r['wall_s_to_quality']:.1f}" if r["wall_s_to_quality"] else "–",
                      f"{r['round_roc_auc'][-1]:.4f} / {r['pooled_lr_roc_auc']:.4f}" if r["round_roc_auc"] else "–",
                      " / ".join(f"{x:.1f}" for x in r["load_before"])])
    lines = [
        "# Round-time benchmark",
        "",
        "Written by `benchmarks/rounds.py` (do not edit by hand). Three bundled skewed Telco partners, SecAgg+,",
        f"Telco run config, {meta.get('machine', '')}; other agents shared the 2 cores, so the load average",
        "(1/5/15 min, before each run) is given with every row. All settings ran in one session.",
        "",
        markdown_table(["setting", "seed", "rounds done", "s per round (all)", "s per round (2nd on)", "s to round 1",
                        "rounds to pooled LR − 0.005", "s to quality", "final / pooled LR ROC AUC", "load"], table),
        "",
        "*s to round 1*: from the call `fedcrm coordinator run` makes to round 1's start (partners connect, "
        "handshake, statistics round). *s to quality*: from that call to the end of the first round whose model is "
        "within 0.005 ROC AUC of pooled logistic regression on the common test set.",
    ]
    dep = next((r for r in rows if r["setting"] == "deployment" and r.get("breakdown")), None)
    if dep is not None:
        lines += ["", "## Where a deployment round's time goes", "",
                  "From the ClientApp workers' task journals (the busiest partner of each round): partner work by "
                  "step; the rest of the ClientApp call (SecAgg+ key agreement, masking, Flower's mods); task "
                  "handling through the SuperNode's Runtime API (claiming, pulling the task and its message — "
                  "which includes waiting while the SuperNode is still downloading that message from the "
                  "SuperLink — and pushing the reply); and the rest of the round, spent between SuperLink, "
                  "SuperNodes and ServerApp (HTTP requests for every message and object, 0.1 s grid poll, 0.2 s "
                  "SuperNode and worker polls; 5 message exchanges per SecAgg+ round). No process starts during "
                  "a round.", ""]
        brow = []
        exchanges = dep.get("exchanges") or []
        for k, (wall, b) in enumerate(zip(dep["round_wall_s"], dep["breakdown"], strict=False), start=1):
            work = sum(b.get(s, 0.0) for s in WORK_STEPS)
            handling = b.get("task_handling", 0.0)
            call_other = max(0.0, b.get("clientapp_call", 0.0) - work)
            rest = max(0.0, wall - handling - b.get("clientapp_call", 0.0))
            x = exchanges[k - 1] if k <= len(exchanges) else {}
            brow.append([k, f"{wall:.2f}", *(f"{b.get(s, 0.0):.3f}" for s in WORK_STEPS), f"{call_other:.3f}",
                         f"{handling:.3f}", f"{rest:.2f}", int(b.get("tasks", 0)),
                         *(f"{x[key]:.2f}" if key in x else "–" for key in ("push_s", "wait_s", "between_s"))])
        lines.append(markdown_table(["round", "wall s", *WORK_STEPS, "ClientApp other (SecAgg+ crypto, Flower)",
                                     "task handling", "Flower transport + polling", "tasks",
                                     "ServerApp pushing orders", "ServerApp waiting for replies",
                                     "coordinator between exchanges"], brow))
        lines += ["", "The last three columns are the coordinator's view of the same round (its exchange journal): "
                      "pushing each exchange's messages and their objects to the SuperLink, waiting until every "
                      "reply is back, and its own work between exchanges (aggregation, SecAgg+ unmasking, "
                      "checkpoint, recording)."]
        warm = [w for w in dep.get("worker_warm_up_s", []) if w is not None]
        if warm:
            lines += ["", f"Each worker's one-time start-up (imports + one torch optimiser step) took "
                          f"{fmt_mean_std(warm, 1)} s, before the run; the stock SuperNode pays an import per message "
                          "instead."]
    for r in rows:
        if r.get("error") and r.get("stage_s"):
            stages = ", ".join(f"round {k} {stage} {sec:.0f} s" for k, stage, sec in r["stage_s"])
            lines += ["", f"The {r['setting']} run failed ({r['error'][:200]}); its stages took: {stages}."]
    if meta.get("clientapp_start_s"):
        lines += ["", f"A stock `flwr-clientapp` process spends {fmt_mean_std(meta['clientapp_start_s'], 2)} s "
                      "(wall, 3 starts, this session) importing flwr and fedcrm's ClientApp before it handles its one "
                      "message; a SecAgg+ round sends 5 messages to each partner, plus the first optimiser step's "
                      "`torch._dynamo` import in every fit."]
    lines += ["", "![seconds per round](img/rounds_wall.png)", ""]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    _plot(rows, img_dir / "rounds_wall.png")


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        if not r["round_wall_s"]:
            continue
        rounds = np.arange(1, len(r["round_wall_s"]) + 1)
        left.plot(rounds, r["round_wall_s"], marker="o", label=f"{r['setting']} (seed {r['seed']})")
        right.plot(r["round_end_s"], r["round_roc_auc"], marker="o", label=r["setting"])
        right.axhline(r["pooled_lr_roc_auc"] - TOLERANCE, color="grey", linestyle=":", linewidth=1)
    left.set_xlabel("round")
    left.set_ylabel("wall seconds")
    left.set_yscale("log")
    left.set_title("seconds per SecAgg+ round, 3 Telco partners")
    left.legend(fontsize=8)
    right.set_xscale("log")
    right.set_xlabel("seconds since `fedcrm coordinator run`")
    right.set_ylabel("common-test ROC AUC")
    right.set_title("time to quality (dotted: pooled LR − 0.005)")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- driver ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.rounds", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 rounds; results and report under benchmarks/results/raw/")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--rounds", type=int, default=None, help="rounds per run (default 4)")
    p.add_argument("--stock-rounds", type=int, default=None,
                   help="rounds of the slow deployment_stock run (default: --rounds)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--report", type=Path, default=None)
    p.add_argument("--img-dir", type=Path, default=None)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.stock_rounds = args.stock_rounds or args.rounds
    args.workdir = args.workdir or RAW / ("rounds-work-quick" if args.quick else "rounds-work")
    args.results = args.results or (RAW / "rounds-quick.json" if args.quick else RESULTS / "rounds.json")
    args.report = args.report or (RAW / "benchmarks-rounds-quick.md" if args.quick
                                  else REPO_ROOT / "docs" / "benchmarks-rounds.md")
    args.img_dir = args.img_dir or (RAW / "img-quick" if args.quick else REPO_ROOT / "docs" / "img")
    args.meta = args.results.with_suffix(".meta.json")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the settings (or only the report)."""
    args = parse_args(argv)
    _env_flower()
    if not args.report_only:
        started = time.perf_counter()
        starts = clientapp_start_s()
        for seed in args.seeds:
            for setting in args.settings:
                rounds = args.stock_rounds if setting == "deployment_stock" else args.rounds
                measure(setting, args.workdir / f"seed{seed}", rounds, seed, args.results)
        args.meta.parent.mkdir(parents=True, exist_ok=True)
        args.meta.write_text(json.dumps({
            "total_wall_s": round(time.perf_counter() - started, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "clientapp_start_s": starts,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }, indent=2))
    meta = json.loads(args.meta.read_text()) if args.meta.exists() else {}
    write_report(args.results, args.report, args.img_dir, meta)
    print(f"wrote {args.report}", flush=True)


if __name__ == "__main__":
    main()

