"""Benchmark: `fedcrm client score` on 100,000 customers, with and without `--explain`.

What a partner's data team waits for, measured as they run it: the CLI in a fresh
process (interpreter start, imports, consent gate with its ledger record, encoding,
the model, the output file), after ingestion (timed separately: it runs once per export,
not per scoring job). Customers are Telco rows drawn with replacement under new ids;
the model is the task's MLP with seeded weights (scoring time does not depend on the
weights). Each configuration is repeated; the table gives mean ± std.

    python -m benchmarks.scoring [--customers 100000] [--repeats 3]

Writes benchmarks/results/scoring.json and docs/benchmarks-scoring.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks._common import mean_std, upsert_rows
from fedcrm.paths import DATASETS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scoring.json"
DOC = ROOT / "docs" / "benchmarks-scoring.md"
TASK = DATASETS / "tasks" / "telco_churn.yaml"
KEY = ("customers", "mode", "repeat")


def make_partner(root: Path, customers: int, seed: int = 0) -> Path:
    """A Telco-style partner with ``customers`` rows, initialised (key, ledger) and ingested."""
    from fedcrm.client.config import load_partner_config
    from fedcrm.client.ingest import ingest
    from fedcrm.client.pseudonymise import create_key
    from fedcrm.consent.checkpoint import generate_signing_key
    from fedcrm.consent.ledger import Ledger

    source = pd.read_csv(DATASETS / "telco_churn.csv", dtype=str, keep_default_na=False)
    rows = source.sample(n=customers, replace=True, random_state=seed).reset_index(drop=True)
    rows["customerID"] = [f"C{i:07d}" for i in range(customers)]
    root.mkdir(parents=True, exist_ok=True)
    rows.to_csv(root / "customers.csv", index=False)
    template = (DATASETS / "telco" / "partner_template.toml").read_text().replace("{name}", "bench")
    (root / "partner.toml").write_text(template.replace("chunk_rows = 5000", "chunk_rows = 50000"))
    config = load_partner_config(root / "partner.toml")
    create_key(config.key_path)
    generate_signing_key(config.ledger_key_path)
    Ledger.open(config.ledger_url, signing_key_path=config.ledger_key_path, origin="fedcrm/bench").close()
    ingest(config)
    return root / "partner.toml"


def make_run(root: Path, architecture: str = "mlp", seed: int = 0) -> Path:
    """A finished run directory for the Telco task, written with the registry's own writers."""
    from fedcrm.coordinator.registry import write_manifest
    from fedcrm.models.io import save_model_arrays
    from fedcrm.models.nets import build_model
    from fedcrm.models.params import get_arrays, get_names
    from fedcrm.protocol import load_task_schema

    task = load_task_schema(TASK)
    run_dir = root / f"run-{architecture}"
    (run_dir / "metrics").mkdir(parents=True)
    (run_dir / "task_schema.json").write_text(task.canonical_json().decode())
    data = pd.read_csv(DATASETS / "telco_churn.csv")
    columns = {"tenure_months": "tenure", "monthly_charges": "MonthlyCharges", "total_charges": "TotalCharges"}
    scaling = {}
    for name in task.numeric_features:
        values = pd.to_numeric(data[columns[name]], errors="coerce").dropna()
        scaling[name] = [float(values.mean()), float(values.std())]
    (run_dir / "metrics" / "statistics.json").write_text(json.dumps({"scaling": scaling}))
    model = build_model(architecture, task.width, seed=seed)
    save_model_arrays(run_dir / "model" / "final.safetensors", get_names(model), get_arrays(model),
                      {"architecture": architecture, "n_features": task.width, "task_schema_sha256": task.sha256()})
    write_manifest(run_dir)
    return run_dir


def time_cli(config: Path, run_dir: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (children) of one `fedcrm client score` process."""
    cmd = [sys.executable, "-m", "fedcrm.cli", "client", "score", "--config", str(config), "--run", str(run_dir),
           "--out", str(out), *extra]
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env=dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="2"))
    wall = time.perf_counter() - start
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"score failed: {proc.stdout}\n{proc.stderr}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def import_seconds(module: str) -> float:
    """Wall seconds to import ``module`` in a fresh interpreter."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - start


def run(customers: int, repeats: int, explain: int) -> list[dict[str, object]]:
    """Measure every mode ``repeats`` times, interleaved so that load drifts hit all modes alike."""
    work = Path(tempfile.mkdtemp(prefix="fedcrm-bench-score-"))
    try:
        load_start = round(os.getloadavg()[0], 2)
        started = time.perf_counter()
        config = make_partner(work / "partner", customers)
        ingest_s = time.perf_counter() - started
        run_dir = make_run(work)
        rows: list[dict[str, object]] = []
        # Exact integrated gradients (the default) and Captum's numerical ones (16 steps, the former default)
        # side by side in one run, so their ratio does not depend on the machine's load of the day.
        modes = {"score": [], f"score --explain {explain}": ["--explain", str(explain)],
                 f"score --explain {explain} --explain-steps 16": ["--explain", str(explain), "--explain-steps", "16"]}
        for repeat in range(repeats):
            for number, (mode, extra) in enumerate(modes.items()):
                out = work / f"scores-{repeat}-{number}.csv"
                wall, cpu = time_cli(config, run_dir, out, extra)
                n = len(pd.read_csv(out, usecols=["customer_id"]))
                assert n == customers, (n, customers)
                rows.append({"customers": customers, "mode": mode, "repeat": repeat, "wall_s": round(wall, 3),
                             "cpu_s": round(cpu, 3), "ingest_s": round(ingest_s, 3)})
                print(f"{mode:>22}  repeat {repeat}: {wall:6.2f} s wall, {cpu:6.2f} s CPU", flush=True)
        torch_import = import_seconds("torch")
        load = round(os.getloadavg()[0], 2)  # wall times depend on what else the machine runs
        for row in rows:
            row["torch_import_s"] = round(torch_import, 3)
            row["load_average_1m_at_start"] = load_start
            row["load_average_1m_at_end"] = load
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_doc(rows: list[dict[str, object]]) -> None:
    """The Markdown table of the latest results."""
    lines = [
        "# Scoring benchmark",
        "",
        "`fedcrm client score` on a Telco-style partner, run as a data team runs it: a fresh process, consent "
        "gate and its ledger record, encoding, the model, the CSV written. Ingestion (once per export) is "
        "timed apart. Produced by `python -m benchmarks.scoring`; raw rows in `benchmarks/results/scoring.json`.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s) visible, Python {platform.python_version()}. "
        "1-minute load average "
        f"{rows[0].get('load_average_1m_at_start', 'not recorded')} at the start, "
        f"{rows[0].get('load_average_1m_at_end', 'not recorded')} at the end (the 2-core machine may be shared: "
        "above a load of 2, wall times include waiting for a core; CPU seconds are the process's own work, and "
        "on an idle 2-core machine the wall time is at most about the CPU time).",
        "",
        "| customers | command | wall s (mean ± std) | CPU s (mean ± std) | runs |",
        "|---:|---|---:|---:|---:|",
    ]
    by_mode: dict[tuple[int, str], list[dict[str, object]]] = {}
    for r in rows:
        by_mode.setdefault((int(r["customers"]), str(r["mode"])), []).append(r)
    for (n, mode), group in sorted(by_mode.items()):
        wall = mean_std(float(g["wall_s"]) for g in group)
        cpu = mean_std(float(g["cpu_s"]) for g in group)
        lines.append(f"| {n:,} | `fedcrm client {mode}` | {wall[0]:.2f} ± {wall[1]:.2f} | "
                     f"{cpu[0]:.2f} ± {cpu[1]:.2f} | {wall[2]} |")
    sample = rows[0]
    lines += [
        "",
        f"Ingesting the {int(sample['customers']):,}-row export took {float(sample['ingest_s']):.1f} s (once). "
        f"Importing torch alone took {float(sample['torch_import_s']):.1f} s (wall) during this run. Before "
        "the change, on bundled partner A (2,753 customers, a lightly loaded machine), `fedcrm client score` "
        "took 9.7 s: importing torch 3.2 s and scikit-learn 2.3 s (through the training module), the scoring "
        "itself 1.0 s; on a loaded machine the same imports made the 27–29 s of the issue. Plain scoring now "
        "evaluates the model with numpy from its safetensors arrays and imports neither; categorical encoding "
        "is vectorised and the gate gets plain-string pseudonyms (pandas' isin on Arrow strings converted "
        "every value). `--explain` computes exact integrated gradients in closed form (both task "
        "architectures are piecewise linear: per hidden unit, the share of the path where it is active is one "
        "division), for all customers at once in numpy, without torch; completeness holds to float rounding. "
        "`--explain-steps 16` is the former method, Captum's numerical integration with 16 Gauss-Legendre steps "
        "(it loads torch and runs 16 forward and backward passes per customer), kept as the cross-check.",
        "",
    ]
    DOC.write_text("\n".join(lines))


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--explain", type=int, default=3)
    args = parser.parse_args()
    rows = run(args.customers, args.repeats, args.explain)
    merged = upsert_rows(RESULTS, rows, KEY)
    write_doc([r for r in merged if r["customers"] == args.customers])
    print(f"wrote {RESULTS} and {DOC}")


if __name__ == "__main__":
    main()
