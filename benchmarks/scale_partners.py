"""Many partners in simulation: 10 and 50 partners of 100k customers, one SecAgg+ federation each.

Run: ``.venv/bin/python -m benchmarks.scale_partners [--partners 10 50] [--rows 100000] [--rounds 2]``
(``--actors 1 2 4`` measures several Ray actor counts for each partner count).

Each partner is a synthetic Telco-schema export (``benchmarks.scale.make_partner``: the
bundled Telco rows resampled with fresh unique customer ids, initialised and approving
the churn task), ingested with ``fedcrm.client.ingest.ingest``. The federation is a real
run on the simulation engine (``fedcrm.coordinator.runner.run_federation``: Flower's
simulation runtime on Ray, SecAgg+ by default, MLP, one local epoch, batch 512).

Recorded per run: total wall, per-round wall (from the run's ``events.jsonl``: end of one
round's evaluation to the next's), peak memory of the whole process tree (every
descendant of this process and every process in their sessions: engine, Ray's GCS,
raylet, workers and the ClientApp actors), sampled from ``/proc`` every 0.5 s as the sum
of RSS (shared pages counted once per process: an upper bound) and of PSS (shared pages
split between processes: what the tree really costs), the largest single actor's RSS,
CPU seconds of the tree (utime + stime, last value seen per process), the Ray resources
the engine used (``simulation_resources.json`` in the run directory), the SecAgg+
parameters, and the final federated ROC AUC.

Writes benchmarks/results/scale_partners.json, docs/benchmarks-scale-partners.md and
docs/img/scale_partners.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "scale_partners.json"
DOC = ROOT / "docs" / "benchmarks-scale-partners.md"
PLOT = ROOT / "docs" / "img" / "scale_partners.png"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# --- the process tree, from /proc ---------------------------------------------------------------
# psutil is not a dependency; /proc gives the same figures for Linux (where Ray's simulation runs).


def _stat(pid: int) -> tuple[int, int, float] | None:
    """(parent pid, session id, CPU seconds) of a process, or None once it has gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[3]), (int(fields[11]) + int(fields[12])) / TICKS


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in kB (0, 0 once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("Rss:", "Pss:"):
            values[parts[0]] = int(parts[1])
    return values.get("Rss:", 0), values.get("Pss:", 0)


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return ""


def process_tree(root: int) -> dict[int, tuple[int, int, float]]:
    """Every live descendant of ``root`` and every process sharing a session with one: pid -> stat."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    own_session = stats[root][1] if root in stats else None
    sessions = {stats[p][1] for p in tree} - {own_session}
    tree |= {p for p, (_, sid, _) in stats.items() if sid in sessions}  # Ray processes re-parented to init
    return {p: stats[p] for p in tree}


@dataclass
class TreeSampler:
    """Samples the process tree's memory and CPU every ``interval_s`` in a thread."""

    root: int = field(default_factory=os.getpid)
    interval_s: float = 0.5
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    peak_process_rss_mb: float = 0.0
    peak_process: str = ""
    peak_processes: int = 0
    cpu_by_pid: dict[int, float] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        tree = process_tree(self.root)
        rss = pss = 0
        for pid, (_, _, cpu) in tree.items():
            r, p = _memory_kb(pid)
            rss, pss = rss + r, pss + p
            self.cpu_by_pid[pid] = max(cpu, self.cpu_by_pid.get(pid, 0.0))
            if pid not in self.names:
                self.names[pid] = _command(pid)
            if r / 1024 > self.peak_process_rss_mb:
                self.peak_process_rss_mb, self.peak_process = r / 1024, self.names[pid]
        self.peak_rss_mb = max(self.peak_rss_mb, rss / 1024)
        self.peak_pss_mb = max(self.peak_pss_mb, pss / 1024)
        self.peak_processes = max(self.peak_processes, len(tree))
        self.samples += 1

    def cpu_s(self) -> float:
        """CPU seconds of the tree's processes (the last value seen of each)."""
        return sum(self.cpu_by_pid.values())


def live_tree_pids(root: int | None = None) -> list[int]:
    """PIDs still alive in this process's tree (what the run left behind: should be none)."""
    return sorted(process_tree(root or os.getpid()))


# --- partners ------------------------------------------------------------------------------------


def make_partners(work: Path, partners: int, rows: int) -> tuple[list[Path], dict[str, Any]]:
    """``partners`` synthetic partners of ``rows`` customers each, made and ingested; configs and timings."""
    from benchmarks.scale import make_partner
    from fedcrm.client.config import load_partner_config
    from fedcrm.client.ingest import ingest

    configs, make_s, ingest_s = [], 0.0, []
    for i in range(partners):
        started = time.perf_counter()
        config = make_partner(work, f"S{i:02d}", rows, seed=i)
        made = time.perf_counter()
        ingest(load_partner_config(config))
        make_s += made - started
        ingest_s.append(time.perf_counter() - made)
        configs.append(config)
    return configs, {"make_s": make_s, "ingest_s_total": sum(ingest_s), "ingest_s_mean": sum(ingest_s) / partners}


# --- one run -------------------------------------------------------------------------------------


def run_timeline(run_dir: Path, started_at: float) -> dict[str, Any]:
    """Phases of a run from its ``events.jsonl``: start-up, statistics, and each round with its stages."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    first = next((e["time"] for e in events if e["event"] == "run_start"), None)
    starts = {e["round"]: e["time"] for e in events if e["event"] == "round_start"}
    rounds = []
    for r in sorted(starts):
        t0 = starts[r]
        marks = {}
        for e in events:
            if e.get("round") != r:
                continue
            if e["event"] == "secagg_stage":
                marks.setdefault(e["stage"], e["time"])
            elif e["event"] == "evaluate":  # ("fit" is recorded with the aggregate, at the unmask stage's end)
                marks.setdefault(e["event"], e["time"])
        if "evaluate" not in marks:
            continue
        steps, last = {}, t0
        for name, at in sorted(marks.items(), key=lambda item: item[1]):  # each step: since the one before
            steps[name] = at - last
            last = at
        rounds.append({"round": r, "wall_s": marks["evaluate"] - t0, "steps_s": steps})
    return {"to_run_start_s": (first - started_at) if first else None,
            "statistics_s": (min(starts.values()) - first) if first and starts else None,
            "rounds": rounds}


def measure(work: Path, partners: int, rows: int, rounds: int, actors: int | None,
            configs: list[Path]) -> dict[str, Any]:
    """One SecAgg+ federation of ``configs`` on the simulation engine, with ``actors`` Ray actors."""
    from fedcrm.coordinator.engine import ACTORS_VAR, SIMULATION_RESOURCES_FILE
    from fedcrm.coordinator.run_config import RunConfig
    from fedcrm.coordinator.runner import run_federation
    from fedcrm.coordinator.secagg import secagg_parameters

    if actors is None:
        os.environ.pop(ACTORS_VAR, None)
    else:
        os.environ[ACTORS_VAR] = str(actors)
    config = RunConfig.model_validate({"task": ROOT / "datasets" / "tasks" / "telco_churn.yaml", "rounds": rounds,
                                       "seed": 0, "local_epochs": 1, "batch_size": 512})
    num_shares, threshold = secagg_parameters(partners, config.min_partners_of(partners))
    load_before = os.getloadavg()
    sampler = TreeSampler().start()
    wall, started_at = time.perf_counter(), time.time()
    try:
        result = run_federation(config, configs, runs_dir=work / "runs", timeout_s=3600)
    finally:
        wall = time.perf_counter() - wall
        sampler.stop()
        os.environ.pop(ACTORS_VAR, None)
    resources_path = result.run_dir / SIMULATION_RESOURCES_FILE
    resources = json.loads(resources_path.read_text()) if resources_path.exists() else None
    done = [r for r in result.rounds if "federated" in r]
    last = done[-1]["federated"] if done else {}
    leftover = live_tree_pids()
    return {
        "partners": partners, "rows_per_partner": rows, "rounds": rounds, "actors_requested": actors,
        "succeeded": result.succeeded, "outcome": result.outcome, "error": result.error,
        "rounds_completed": len(done), "wall_s": wall, **_timeline(result.run_dir, started_at),
        "peak_tree_rss_mb": sampler.peak_rss_mb, "peak_tree_pss_mb": sampler.peak_pss_mb,
        "peak_process_rss_mb": sampler.peak_process_rss_mb, "peak_process": sampler.peak_process,
        "peak_processes": sampler.peak_processes, "tree_cpu_s": sampler.cpu_s(), "samples": sampler.samples,
        "ray_resources": resources,
        "secagg": {"num_shares": num_shares, "reconstruction_threshold": threshold},
        "roc_auc": last.get("roc_auc"), "final_metrics": last,
        "left_running": leftover,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _timeline(run_dir: Path, started_at: float) -> dict[str, Any]:
    timeline = run_timeline(run_dir, started_at)
    return {"timeline": timeline, "round_wall_s": [r["wall_s"] for r in timeline["rounds"]]}


# --- SecAgg+ alone, in one process -------------------------------------------------------------
# Flower's own SecAgg+ workflow and client mod, messages delivered in this process (no Ray, no
# fedcrm partner work): what the protocol itself costs for n partners and k shares.

_MLP_SHAPES = [(45, 32), (32,), (32, 1), (1,)]


def secagg_protocol_cpu(partners: int, num_shares: int, threshold: int) -> dict[str, Any]:
    """CPU seconds of one SecAgg+ round (partners' side and server's side) with Flower's workflow."""
    import copy
    import logging
    from types import SimpleNamespace

    import numpy as np
    from flwr.app import Context, RecordDict
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp.grid import Grid
    from flwr.supercore.task_identity import TaskIdentity

    class Update(NumPyClient):
        def fit(self, parameters: Any, config: Any) -> Any:
            return [np.full(s, 0.5, np.float32) for s in _MLP_SHAPES], 100, {}

    app = ClientApp(client_fn=lambda context: Update().to_client(), mods=[secaggplus_mod])

    class LocalGrid(Grid):
        def __init__(self) -> None:
            self.contexts = {i + 1: Context(run_id=1, node_id=i + 1, node_config={}, state=RecordDict(),
                                            run_config={}) for i in range(partners)}
            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
            self.client_s = 0.0

        def set_run(self, run: Any) -> None:
            pass

        @property
        def run(self) -> Any:
            return SimpleNamespace(run_id=1)

        def create_message(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        def get_node_ids(self) -> list[int]:
            return sorted(self.contexts)

        def push_messages(self, messages: Any) -> Any:
            raise NotImplementedError

        def pull_messages(self, message_ids: Any) -> Any:
            raise NotImplementedError

        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
            replies = []
            for msg in messages:
                node = msg.metadata.dst_node_id
                incoming = copy.deepcopy(msg)  # secaggplus_mod mutates messages, as a transport would copy
                incoming.metadata.__dict__["_message_id"] = incoming.object_id
                incoming.metadata.__dict__["_src_node_id"] = 0
                started = time.process_time()
                reply = app(incoming, self.contexts[node])
                self.client_s += time.process_time() - started
                reply.metadata.__dict__["_src_node_id"] = node
                replies.append(copy.deepcopy(reply))
            return replies

    grid = LocalGrid()
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=partners,
                      min_available_clients=partners,
                      initial_parameters=ndarrays_to_parameters([np.zeros(s, np.float32) for s in _MLP_SHAPES]))
    context = LegacyContext(context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            config=ServerConfig(num_rounds=1), strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=num_shares,
                                                               reconstruction_threshold=threshold))
    logging.disable(logging.WARNING)
    try:
        started = time.process_time()
        workflow(grid, context)  # type: ignore[arg-type]
        total = time.process_time() - started
    finally:
        logging.disable(logging.NOTSET)
    return {"partners": partners, "num_shares": num_shares, "reconstruction_threshold": threshold,
            "cpu_s": total, "partners_cpu_s": grid.client_s, "server_cpu_s": total - grid.client_s,
            "load_average": os.getloadavg()}


# --- outputs -------------------------------------------------------------------------------------


def _key(entry: dict[str, Any]) -> str:
    return f"{entry['partners']}x{entry['rows_per_partner']}-r{entry['rounds']}-a{entry['actors_requested'] or 'default'}"


def load_results(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"runs": {}}


def save_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def write_markdown(results: dict[str, Any], path: Path) -> None:
    env = results.get("environment", {})
    runs = sorted(results["runs"].values(), key=lambda e: (e["rows_per_partner"], e["partners"],
                                                           e["actors_requested"] or 0))
    lines = [
        "# Many partners in simulation: 10 and 50 partners of up to 100k customers",
        "",
        f"Generated by `.venv/bin/python -m benchmarks.scale_partners` (numbers: "
        f"`benchmarks/results/scale_partners.json`) on {env.get('machine', '?')} ({env.get('cpus', '?')} CPUs, "
        f"Python {env.get('python', '?')}).",
        "",
        "One SecAgg+ federation per row on the simulation engine (Flower's simulation runtime on Ray): MLP, one "
        "local epoch, batch 512, every partner in every round (`min_partners` = all). Partners are synthetic "
        "Telco-schema exports (bundled rows resampled with fresh unique ids), ingested before the run. "
        "*Round wall* is from the end of one round to the end of the next (training with SecAgg+'s four stages "
        "plus federated evaluation); round 1 also pays Ray's start and each actor's first imports and first gate. "
        "*Tree* memory is every process of the run (engine, Ray's GCS and raylet, the ClientApp actors) sampled "
        "from `/proc` every 0.5 s: RSS summed over processes counts shared pages once per process (an upper "
        "bound), PSS splits them (what the tree really costs). CPU is utime + stime of every process of the tree.",
        "",
        "**Machines and load differ between rows.** Each row is one run on a 2-core machine, on the date and "
        "commit its *measured* column gives; the earlier rows ran while other tests and benchmarks shared the "
        "cores (load average in the table), some on slower CPUs (docs/benchmarks-ledger.md's SHA-256 floor "
        "differed twofold between these machines). Wall times are inflated by the load; compare "
        "CPU seconds, and only between rows measured together.",
        "",
        "| partners | rows each | actors | rounds | outcome | total wall (s) | round walls (s) | tree CPU (s) | "
        "peak tree PSS (MB) | peak tree RSS (MB) | largest process RSS (MB) | SecAgg+ shares / threshold | "
        "ROC AUC | load before → after | measured |",
        "|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for e in runs:
        res = e.get("ray_resources") or {}
        walls = ", ".join(f"{w:.0f}" for w in e["round_wall_s"])
        auc = f"{e['roc_auc']:.4f}" if e.get("roc_auc") is not None else "–"
        lines.append(
            f"| {e['partners']} | {e['rows_per_partner']:,} | {res.get('actors', '?')} | {e['rounds']} | "
            f"{e['outcome']}{' (' + e['label'] + ')' if e.get('label') else ''} | {e['wall_s']:.0f} | {walls} | {e['tree_cpu_s']:.0f} | {e['peak_tree_pss_mb']:,.0f} | "
            f"{e['peak_tree_rss_mb']:,.0f} | {e['peak_process_rss_mb']:,.0f} | "
            f"{e['secagg']['num_shares']} / {e['secagg']['reconstruction_threshold']} | {auc} | "
            f"{e['load_average_before'][0]:.1f} → {e['load_average_after'][0]:.1f} | "
            f"{e.get('date', '?')}, {e.get('commit', '?')} |")
    lines += ["", "Per stage of the last round (wall s; each SecAgg+ stage's messages to every partner and their "
              "replies; `collect_masked_vectors` holds the local training, `evaluate` the federated evaluation):", "",
              "| partners | rows each | actors | SecAgg+ shares | setup | share_keys | collect_masked_vectors | "
              "unmask | evaluate | statistics round (secure sums) | Ray start to first message |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in runs:
        tl = e.get("timeline") or {}
        if not tl.get("rounds"):
            continue
        st = tl["rounds"][-1]["steps_s"]
        cells = " | ".join(f"{st[k]:.1f}" if k in st else "–" for k in
                           ("setup", "share_keys", "collect_masked_vectors", "unmask", "evaluate"))
        lines.append(f"| {e['partners']} | {e['rows_per_partner']:,} | {(e.get('ray_resources') or {}).get('actors', '?')} "
                     f"| {e['secagg']['num_shares']} | {cells} | {tl.get('statistics_s') or 0:.0f} | "
                     f"{tl.get('to_run_start_s') or 0:.0f} |")
    failed = [e for e in runs if not e["succeeded"]]
    for e in failed:
        lines += ["", f"**{e['partners']} × {e['rows_per_partner']:,} failed:** {e['error']}"]
    protocol = sorted(results.get("secagg_protocol", {}).values(), key=lambda e: (e["partners"], e["num_shares"]))
    if protocol:
        lines += ["", "## SecAgg+ alone: Flower's protocol for n partners and k shares (one process)", "",
                  "Flower's `SecAggPlusWorkflow` and `secaggplus_mod` with an MLP-sized update, messages "
                  "delivered in this process (no Ray, no partner work): the cryptography's own CPU per round. "
                  "Shamir sharing (partners, `share_keys`) costs O(k·t) per partner and reconstruction (server, "
                  "`unmask`) O(n·t²), in pure Python; with k = n a round is O(n³).", "",
                  "| partners n | shares k | threshold t | round CPU (s) | partners' CPU (s) | server CPU (s) | "
                  "load avg |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for e in protocol:
            lines.append(f"| {e['partners']} | {e['num_shares']} | {e['reconstruction_threshold']} | "
                         f"{e['cpu_s']:.1f} | {e['partners_cpu_s']:.1f} | {e['server_cpu_s']:.1f} | "
                         f"{e['load_average'][0]:.1f} |")
    notes = results.get("notes")
    if notes:
        lines += ["", "## Findings", "", *notes]
    lines += ["", "![per-round wall and peak memory against partners](img/scale_partners.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Steady round wall and peak tree memory against partners; CPU and memory against Ray actors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [e for e in results["runs"].values() if e["succeeded"]]
    if not runs:
        return
    actors_of = {id(e): (e.get("ray_resources") or {}).get("actors") for e in runs}
    sweep = [e for e in runs if e.get("actors_requested") is None]
    by_actors = sorted((e for e in runs if e.get("actors_requested") is not None), key=lambda e: actors_of[id(e)])
    fig, axes = plt.subplots(1, 3 if by_actors else 2, figsize=(14 if by_actors else 10, 4.2))
    for e in sweep:
        steady = _mean(e["round_wall_s"][1:] or e["round_wall_s"])
        shares = e["secagg"]["num_shares"]
        colour = "#d95f02" if shares == e["partners"] and e["partners"] > 21 else "#1b9e77"
        text = f"{e['partners']}x{e['rows_per_partner'] // 1000}k, k={shares}"
        axes[0].plot(e["partners"], steady, "o", color=colour)
        axes[0].annotate(text, (e["partners"], steady), textcoords="offset points", xytext=(5, 3), fontsize=7)
        axes[1].plot(e["partners"], e["peak_tree_pss_mb"] / 1024, "o", color=colour)
        axes[1].annotate(text, (e["partners"], e["peak_tree_pss_mb"] / 1024), textcoords="offset points",
                         xytext=(5, 3), fontsize=7)
    axes[0].set_title("Wall per round after the first (s)\n(orange: SecAgg+ with k = n shares, before the fix)",
                      fontsize=9)
    axes[1].set_title("Peak PSS of the whole process tree (GB)", fontsize=9)
    for ax in axes[:2]:
        ax.set_xlabel("partners")
        ax.set_xlim(0, 60)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    if by_actors:
        xs = [actors_of[id(e)] for e in by_actors]
        axes[2].plot(xs, [e["peak_tree_pss_mb"] / 1024 for e in by_actors], "o-", label="peak tree PSS (GB)")
        axes[2].plot(xs, [e["tree_cpu_s"] / 100 for e in by_actors], "s--", label="tree CPU (100 s)")
        axes[2].plot(xs, [_mean(e["round_wall_s"][1:] or e["round_wall_s"]) / 10 for e in by_actors], "^:",
                     label="steady round wall (10 s)")
        first = by_actors[0]
        axes[2].set_title(f"Ray actors, {first['partners']} partners x {first['rows_per_partner']:,} rows", fontsize=9)
        axes[2].set_xlabel("Ray actors (ClientApp workers) on 2 cores")
        axes[2].set_xticks(xs)
        axes[2].legend(fontsize=7)
        axes[2].grid(alpha=0.3)
    fig.suptitle("Many partners in Flower's simulation engine (SecAgg+, shared 2-core machine)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--partners", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rows", type=int, default=100_000, help="customers per partner")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--actors", type=int, nargs="*", default=[],
                        help="Ray actor counts to measure (default: the engine's, one per core)")
    parser.add_argument("--work", type=Path, default=None, help="where the synthetic partners go (default: a temp dir)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-docs", action="store_true", help="write only the JSON (tests)")
    parser.add_argument("--docs-only", action="store_true", help="rewrite the page and plot from the JSON")
    parser.add_argument("--secagg-protocol", nargs="*", default=None, metavar="N,K,T",
                        help="measure Flower's SecAgg+ alone in-process for these partners,shares,threshold "
                             "(no value: 10,10,9 21,21,20 50,50,49 50,21,20); skips the simulation runs "
                             "unless --partners is given too")
    args = parser.parse_args(argv)
    partners_given = any(a == "--partners" or a.startswith("--partners=") for a in (argv or sys.argv[1:]))
    for var, value in (("FLWR_TELEMETRY_ENABLED", "0"), ("FLWR_DISABLE_UPDATE_CHECK", "1"),
                       ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(var, value)
    import tempfile

    results = load_results(args.results)
    if args.docs_only:
        write_markdown(results, DOC)
        write_plot(results, PLOT)
        return results
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    results["environment"] = {"machine": platform.platform(), "cpus": os.cpu_count(),
                              "python": platform.python_version(), "commit": commit}
    if args.secagg_protocol is not None:
        specs = args.secagg_protocol or ["10,10,9", "21,21,20", "50,50,49", "50,21,20"]
        for spec in specs:
            n, k, t = (int(x) for x in spec.split(","))
            entry = secagg_protocol_cpu(n, k, t)
            results.setdefault("secagg_protocol", {})[spec] = entry
            save_results(results, args.results)
            print(f"SecAgg+ alone, {n} partners, {k} shares, threshold {t}: {entry['cpu_s']:.1f}s CPU "
                  f"(partners {entry['partners_cpu_s']:.1f}s, server {entry['server_cpu_s']:.1f}s)", flush=True)
        if not args.no_docs:
            write_markdown(results, DOC)
        if not partners_given:
            return results
    with tempfile.TemporaryDirectory(prefix="fedcrm-many-", dir=args.work) as tmp:
        work = Path(tmp)
        for partners in args.partners:
            print(f"{partners} partners of {args.rows:,} customers: making and ingesting ...", flush=True)
            configs, made = make_partners(work / f"p{partners}", partners, args.rows)
            for actors in args.actors or [None]:
                entry = measure(work, partners, args.rows, args.rounds, actors, configs)
                entry["partners_made"] = made
                entry["commit"] = commit
                results["runs"][_key(entry)] = entry
                save_results(results, args.results)
                if not args.no_docs:
                    write_markdown(results, DOC)
                    write_plot(results, PLOT)
                print(f"  actors {(entry['ray_resources'] or {}).get('actors')}: {entry['outcome']} in "
                      f"{entry['wall_s']:.0f}s, rounds {[round(w) for w in entry['round_wall_s']]}, "
                      f"tree CPU {entry['tree_cpu_s']:.0f}s, peak PSS {entry['peak_tree_pss_mb']:.0f} MB "
                      f"(RSS sum {entry['peak_tree_rss_mb']:.0f}), AUC {entry['roc_auc']}"
                      + (f", error: {entry['error']}" if entry["error"] else ""), flush=True)
            shutil.rmtree(work / f"p{partners}", ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
