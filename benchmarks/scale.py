"""Scale benchmark: ingest, per-round cost and peak memory of a partner, from 100k to millions of customers.

Run: ``.venv/bin/python -m benchmarks.scale [--rows 100000 300000 1000000 3000000]``.

Synthetic exports: the bundled Telco rows (``datasets/telco_churn.csv``) resampled with
replacement, each row given a fresh unique customer id, written with the bundled
partner config (``datasets/partners/telco/skewed/A/partner.toml``). Two percent of the
customers carry a logged withdrawal, so the gate has real work to do.

Every measurement runs in a fresh child process (``--worker``) so its peak RSS
(``ru_maxrss``) is its own:

* ``ingest``: ``fedcrm.client.ingest.ingest`` of the export (wall, peak RSS);
* ``round``: what a long-lived partner process does for two federated rounds:
  statistics, fit and evaluate per round through :class:`PartnerSession`
  (wall per message, the breakdown load / gate / encode / train / evaluate, peak RSS).

Many partners in one simulation run are measured by ``benchmarks/scale_partners.py``
(docs/benchmarks-scale-partners.md).

Writes benchmarks/results/scale.json, docs/benchmarks-scale.md and docs/img/scale_loglog.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fedcrm.paths import DATASETS  # noqa: E402

TELCO_CSV = DATASETS / "telco_churn.csv"
TEMPLATE = DATASETS / "partners" / "telco" / "skewed" / "A"
TASK = DATASETS / "tasks" / "telco_churn.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
WITHDRAWN_FRACTION = 0.02


def synthetic_export(path: Path, rows: int, seed: int) -> None:
    """``rows`` Telco rows resampled with replacement, each with a fresh unique customer id."""
    base = pd.read_csv(TELCO_CSV, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    out = base.iloc[rng.integers(0, len(base), size=rows)].reset_index(drop=True)
    out["customerID"] = [f"S{seed:02d}-{i:09d}" for i in range(rows)]
    out.to_csv(path, index=False)


def make_partner(work: Path, name: str, rows: int, seed: int) -> Path:
    """A partner directory with a synthetic export, initialised and approving the task; returns its config."""
    from typer.testing import CliRunner

    from fedcrm.cli import app

    target = work / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    text = (TEMPLATE / "partner.toml").read_text(encoding="utf-8")
    text = text.replace('name = "A"', f'name = "{name}"').replace("chunk_rows = 5000", "chunk_rows = 100000")
    config = target / "partner.toml"
    config.write_text(text, encoding="utf-8")
    synthetic_export(target / "customers.csv", rows, seed)
    runner = CliRunner()
    for args in (["client", "init", "--config", str(config)],
                 ["client", "approve", "--config", str(config), "--task", str(TASK), "--by", "scale benchmark"]):
        result = runner.invoke(app, args)
        if result.exit_code != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.output}")
    return config


def add_withdrawals(config_path: Path, fraction: float = WITHDRAWN_FRACTION, seed: int = 0) -> int:
    """Log a withdrawal from churn prediction for ``fraction`` of the ingested customers."""
    import pyarrow.parquet as pq

    from fedcrm.client.config import load_partner_config
    from fedcrm.client.ingest import CUSTOMERS_FILE, SUBJECT
    from fedcrm.consent.events import ConsentEvent
    from fedcrm.consent.ledger import Ledger

    cfg = load_partner_config(config_path)
    subjects = pq.read_table(cfg.work_path / CUSTOMERS_FILE, columns=[SUBJECT]).column(SUBJECT).to_pylist()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(subjects), size=int(len(subjects) * fraction), replace=False)
    when = datetime(2024, 6, 1, tzinfo=UTC)
    events = [ConsentEvent(receipt_id=f"w{i}", subject=subjects[i], purpose="churn_prediction",
                           category="user.behavior.service_subscription", action="withdraw",
                           legal_basis="legitimate_interest", effective_at=when, recorded_at=when,
                           source="import:objections.csv", notice_version="2024-01") for i in sorted(chosen)]
    ledger = Ledger.open(cfg.ledger_url, signing_key_path=cfg.ledger_key_path, origin=f"fedcrm/{cfg.name}")
    try:
        for lo in range(0, len(events), 10_000):
            ledger.append(events[lo : lo + 10_000])
    finally:
        ledger.close()
    return len(events)


# --- workers (one child process per measurement: its peak RSS is its own) -------------------------


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_ingest(config_path: Path) -> dict[str, Any]:
    """Ingest one export; wall, CPU and the process's peak RSS."""
    from fedcrm.client.config import load_partner_config
    from fedcrm.client.ingest import ingest

    cfg = load_partner_config(config_path)
    wall, cpu = time.perf_counter(), time.process_time()
    report = ingest(cfg)
    return {"rows": report.rows_kept, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "peak_rss_mb": _peak_mb()}


def _scaling(cells: dict[str, float], task: Any) -> dict[str, tuple[float, float]]:
    from fedcrm.protocol import stat_key

    out = {}
    for name in task.numeric_features:
        n = cells.get(stat_key(name, "count"), 0.0)
        if n:
            mean = cells[stat_key(name, "sum")] / n
            out[name] = (mean, max(cells[stat_key(name, "sumsq")] / n - mean * mean, 0.0) ** 0.5)
    return out


def worker_rounds(config_path: Path, rounds: int, epochs: int) -> dict[str, Any]:
    """What a long-lived partner process does for ``rounds`` federated rounds (statistics once)."""
    import torch

    from fedcrm.client import partner_session as ps
    from fedcrm.client.partner_session import PartnerSession, RoundOrder
    from fedcrm.models.nets import build_model
    from fedcrm.models.params import get_arrays
    from fedcrm.models.train import TrainConfig
    from fedcrm.protocol import load_task_schema

    torch.set_num_threads(1)  # one core per partner process: the machine is shared
    task = load_task_schema(TASK)
    session = PartnerSession(config_path)
    arrays = get_arrays(build_model("mlp", task.width))
    cfg = TrainConfig(epochs=epochs, batch_size=512)
    messages = []

    def message(stage: str, server_round: int, fn: Any) -> Any:
        ps.reset_timings()
        order = RoundOrder("scale", server_round, stage, datetime.now(UTC), task.sha256(), task.purpose)
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(order)
        messages.append({"stage": stage, "round": server_round, "wall_s": time.perf_counter() - wall,
                         "cpu_s": time.process_time() - cpu, "steps_wall_s": ps.timings(),
                         "steps_cpu_s": ps.cpu_timings(), "peak_rss_mb": _peak_mb()})
        return out

    reply = message("stats", 0, lambda o: session.statistics(task, o))
    scaling = _scaling(reply.cells, task)
    for r in range(1, rounds + 1):
        if r == rounds and rounds >= 3:
            _withdraw_one(config_path)  # logged between rounds, as a consent import in another process would
        arrays, n, _ = message("fit", r, lambda o: session.fit(task, o, arrays, scaling, cfg, architecture="mlp",
                                                                max_weight=1e9, clipping_range=None))
        message("evaluate", r, lambda o: session.evaluate(task, o, arrays, scaling, architecture="mlp"))
    return {"messages": messages, "n_train": n, "peak_rss_mb": _peak_mb()}


def _withdraw_one(config_path: Path) -> None:
    """Log one more withdrawal (a customer the gate let through so far): the next round gates a new subject set."""
    import pyarrow.parquet as pq

    from fedcrm.client.config import load_partner_config
    from fedcrm.client.ingest import CUSTOMERS_FILE, SUBJECT
    from fedcrm.consent.events import ConsentEvent
    from fedcrm.consent.ledger import Ledger

    cfg = load_partner_config(config_path)
    subject = pq.read_table(cfg.work_path / CUSTOMERS_FILE, columns=[SUBJECT]).column(SUBJECT)[1].as_py()
    when = datetime(2024, 7, 1, tzinfo=UTC)
    ledger = Ledger.open(cfg.ledger_url, signing_key_path=cfg.ledger_key_path, origin=f"fedcrm/{cfg.name}")
    try:
        ledger.append([ConsentEvent(receipt_id="w-between-rounds", subject=subject, purpose="churn_prediction",
                                    category="user.behavior.service_subscription", action="withdraw",
                                    legal_basis="legitimate_interest", effective_at=when, recorded_at=when,
                                    source="import:objections.csv", notice_version="2024-01")])
    finally:
        ledger.close()


def _child(mode: str, config: Path, *extra: str) -> dict[str, Any]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--worker", mode, "--config", str(config), *extra],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {mode} on {config} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the benchmark ------------------------------------------------------------------------------


def _load() -> dict[str, Any]:
    if RESULTS.exists():
        return json.loads(RESULTS.read_text(encoding="utf-8"))
    return {"partner": {}}


def _save(results: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, RESULTS)


def measure_partner(work: Path, rows: int, rounds: int, epochs: int) -> dict[str, Any]:
    """Make, ingest and run ``rounds`` rounds for one partner of ``rows`` customers."""
    started = time.perf_counter()
    config = make_partner(work, f"P{rows}", rows, seed=rows % 97)
    made_s = time.perf_counter() - started
    ingest = _child("ingest", config)
    withdrawn = add_withdrawals(config)
    per_round = _child("rounds", config, "--rounds", str(rounds), "--epochs", str(epochs))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    return {"rows": rows, "withdrawn": withdrawn, "export_s": made_s, "ingest": ingest, "round": per_round,
            "commit": commit,
            "load_average": os.getloadavg(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


# --- outputs ------------------------------------------------------------------------------------


def _fit_row(entry: dict[str, Any]) -> dict[str, Any]:
    """The first fit message, the steady one (round 2) and, where measured, the one after a withdrawal (round 3)."""
    fits = [m for m in entry["round"]["messages"] if m["stage"] == "fit"]
    return {"first": fits[0], "steady": fits[1] if len(fits) > 1 else fits[-1],
            "withdrawal": fits[2] if len(fits) > 2 else None}


def _non_training(m: dict[str, Any], key: str) -> float:
    steps = m[key]
    return m["cpu_s" if key == "steps_cpu_s" else "wall_s"] - steps.get("train", 0.0)


def loglog_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Slope and intercept of log10(y) = a log10(x) + b (least squares)."""
    a, b = np.polyfit(np.log10(xs), np.log10(ys), 1)
    return float(a), float(b)


def write_markdown(results: dict[str, Any], path: Path) -> None:
    env = results.get("environment", {})
    partners = sorted(results["partner"].values(), key=lambda e: e["rows"])
    lines = [
        "# Scale benchmark: a partner from 100k to millions of customers",
        "",
        f"Generated by `.venv/bin/python -m benchmarks.scale` (numbers: `benchmarks/results/scale.json`) on "
        f"{env.get('machine', '?')} ({env.get('cpus', '?')} CPUs, Python {env.get('python', '?')}).",
        "",
        "**Load.** The 1-minute load average of the 2 cores is given per row: where other work shared them, wall "
        "times are inflated and vary from run to run, so CPU seconds of the measured process are the figures to "
        "compare (rows from different commits may also come from different machines). Peak RSS is the child process's "
        "own `ru_maxrss`; it includes the pages of the memory-mapped round table the process touched (file-backed, "
        "shared with the page cache). torch runs one thread per partner process.",
        "",
        "Synthetic exports: the bundled Telco rows resampled with replacement, each given a fresh unique customer id, "
        f"with the bundled partner config; {WITHDRAWN_FRACTION:.0%} of the customers carry a logged withdrawal. A round is "
        "what a long-lived partner process (the SuperNode's ClientApp worker) does: statistics once, then per round a "
        "fit message (1 epoch, batch 512, MLP) and an evaluate message. The statistics message builds the "
        "memory-mapped round table from the Parquet table once (`.customers.arrow`); every later message maps it. "
        "The *first* fit gates and encodes (block by block from the mapped table); the "
        "*steady* fit (round 2) gates again (every round does) but reuses the encoded rows because the gate let "
        "through the same subjects. The first fit's training also pays torch's one-time import on the first "
        "optimiser step (~3 s); *non-training share* is (steady fit CPU − its training CPU) / steady fit CPU. "
        "The gate's CPU includes its fail-closed read of the consent log: the first gate of the process proves every "
        "leaf against the signed root (the 2% withdrawals, e.g. 20,000 events at 1M customers); later gates prove "
        "only the entries appended since (`consent/verified.py`). Before round 3 one more withdrawal is logged (by "
        "another process, as a consent import would): that round's gate proves it, evaluates the rules afresh and "
        "writes the new subject set, and the round encodes its rows again (*fit after a withdrawal*).",
        "",
        "## Ingest and per-round cost per partner",
        "",
        "| rows | ingest wall (s) | ingest CPU (s) | ingest peak RSS (MB) | first fit CPU (s) | steady fit CPU (s) | "
        "of which train (s) | non-training share | gate CPU (s) | encode CPU (s) | evaluate msg CPU (s) | "
        "fit after a withdrawal CPU (s): gate / encode | round peak RSS (MB) | load avg | code |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in partners:
        fit = _fit_row(e)
        steady, first = fit["steady"], fit["first"]
        ev = [m for m in e["round"]["messages"] if m["stage"] == "evaluate"][-1]
        train = steady["steps_cpu_s"].get("train", 0.0)
        share = _non_training(steady, "steps_cpu_s") / steady["cpu_s"] if steady["cpu_s"] else float("nan")
        after = fit["withdrawal"]
        after_cell = (f"{after['cpu_s']:.2f}: {after['steps_cpu_s'].get('gate', 0.0):.2f} / "
                      f"{after['steps_cpu_s'].get('encode', 0.0):.2f}" if after else "not measured")
        lines.append(
            f"| {e['rows']:,} | {e['ingest']['wall_s']:.1f} | {e['ingest']['cpu_s']:.1f} | {e['ingest']['peak_rss_mb']:.0f} | "
            f"{first['cpu_s']:.2f} | {steady['cpu_s']:.2f} | {train:.2f} | {share:.0%} | "
            f"{steady['steps_cpu_s'].get('gate', 0.0):.2f} | {first['steps_cpu_s'].get('encode', 0.0):.2f} | "
            f"{ev['cpu_s']:.2f} | {after_cell} | {e['round']['peak_rss_mb']:.0f} | {e['load_average'][0]:.0f} | "
            f"{e.get('commit') or '107c39a..b88642b'} |")
    if len(partners) >= 2:
        rows = [e["rows"] for e in partners]
        lines += ["", "## Cost against rows (log-log, least-squares fit)", "",
                  "| quantity | slope (1 = linear) | predicted at 10M rows |", "|---|---:|---:|"]
        for label, values in (
            ("ingest CPU (s)", [e["ingest"]["cpu_s"] for e in partners]),
            ("ingest peak RSS (MB)", [e["ingest"]["peak_rss_mb"] for e in partners]),
            ("steady fit CPU (s)", [_fit_row(e)["steady"]["cpu_s"] for e in partners]),
            ("round peak RSS (MB)", [e["round"]["peak_rss_mb"] for e in partners]),
        ):
            a, b = loglog_fit(rows, values)
            lines.append(f"| {label} | {a:.2f} | {10 ** (a * 7 + b):,.0f} |")
        lines += ["", "![cost against rows](img/scale_loglog.png)"]
    missing = [f"{r:,} rows" for r in (100_000, 300_000, 1_000_000, 3_000_000) if str(r) not in results["partner"]]
    if missing:
        lines += ["", f"**Not measured in this run:** {', '.join(missing)} (time on the shared machine ran out). "
                  "Run them with `.venv/bin/python -m benchmarks.scale --rows 3000000`; each "
                  "measurement is added to the JSON and the tables are rewritten."]
    lines += ["", "Many partners in one simulation run (10 × 100k, 50 × 20k): "
              "[benchmarks-scale-partners.md](benchmarks-scale-partners.md) (`benchmarks/scale_partners.py`)."]
    lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def write_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    partners = sorted(results["partner"].values(), key=lambda e: e["rows"])
    if len(partners) < 2:
        return
    rows = np.array([e["rows"] for e in partners], dtype=float)
    series = {
        "ingest CPU (s)": [e["ingest"]["cpu_s"] for e in partners],
        "steady fit CPU (s)": [_fit_row(e)["steady"]["cpu_s"] for e in partners],
        "round peak RSS (GB)": [e["round"]["peak_rss_mb"] / 1024 for e in partners],
        "ingest peak RSS (GB)": [e["ingest"]["peak_rss_mb"] / 1024 for e in partners],
    }
    fig, ax = plt.subplots(figsize=(7, 4.5))
    grid = np.logspace(np.log10(rows.min()), 7, 50)
    for (label, values), colour in zip(series.items(), ("#1b9e77", "#d95f02", "#7570b3", "#e7298a"), strict=True):
        a, b = loglog_fit(list(rows), values)
        ax.loglog(rows, values, "o", color=colour, label=f"{label}: slope {a:.2f}")
        ax.loglog(grid, 10 ** (a * np.log10(grid) + b), "--", color=colour, linewidth=1)
    ax.set_xlabel("customers per partner")
    ax.set_title("Partner cost against rows (dashed: linear fit in log-log, extrapolated to 10M)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_all(results: dict[str, Any]) -> None:
    _save(results)
    (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
    write_markdown(results, ROOT / "docs" / "benchmarks-scale.md")
    write_plot(results, ROOT / "docs" / "img" / "scale_loglog.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 300_000, 1_000_000],
                        help="customers per partner to measure (add 3000000 for the large point)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per partner (from 3: a withdrawal before the last)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="where the synthetic partners go (default: a temp dir)")
    parser.add_argument("--worker", choices=["ingest", "rounds"], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "ingest":
        print(json.dumps(worker_ingest(args.config)))
        return
    if args.worker == "rounds":
        print(json.dumps(worker_rounds(args.config, args.rounds, args.epochs)))
        return
    import tempfile

    results = _load()
    results["environment"] = {"machine": platform.platform(), "cpus": os.cpu_count(),
                              "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="fedcrm-scale-", dir=args.work) as tmp:
        work = Path(tmp)
        for rows in args.rows:
            print(f"partner of {rows:,} customers ...", flush=True)
            entry = measure_partner(work, rows, args.rounds, args.epochs)
            results["partner"][str(rows)] = entry
            write_all(results)
            steady = _fit_row(entry)["steady"]
            print(f"  ingest {entry['ingest']['cpu_s']:.1f}s CPU, peak {entry['ingest']['peak_rss_mb']:.0f} MB; "
                  f"steady fit {steady['cpu_s']:.2f}s CPU ({steady['steps_cpu_s']}); round peak "
                  f"{entry['round']['peak_rss_mb']:.0f} MB", flush=True)
            shutil.rmtree(work / f"P{rows}", ignore_errors=True)
    write_all(results)
    print("wrote benchmarks/results/scale.json, docs/benchmarks-scale.md, docs/img/scale_loglog.png")


if __name__ == "__main__":
    main()
