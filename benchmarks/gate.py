"""Cost of the fail-closed consent read the gate does on every round, SQLite, side by side.

Run: ``.venv/bin/python -m benchmarks.gate [--sizes 10000 100000 1000000] [--reps 3]``.
For each log size N (N consent receipts, one customer each, one in seven a withdrawal)
it measures, in the same process on the same database:

* ``unverified read`` — what the gate did before: the consent rows picked by the
  ``kind`` column joined with their payloads, each rebuilt as a validated event (no
  hashing; a ``kind`` edit or a deleted payload went unnoticed);
* ``verified read`` — ``integrity.read_history``: every leaf below the size re-hashed,
  the root recomputed and compared with the signed one, payload hashes, kinds, erasure
  and rotation rows checked, receipts parsed into light records;
* ``gate`` — the whole ``gate()`` call over a frame of the N customers (verified read,
  policy evaluation, subject set and usage record written).

Writes benchmarks/results/gate.json, docs/benchmarks-gate.md and docs/img/gate_read.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
from sqlalchemy import select  # noqa: E402

from fedcrm.consent.checkpoint import generate_signing_key  # noqa: E402
from fedcrm.consent.db import LogEntry, PersonalPayload  # noqa: E402
from fedcrm.consent.events import ConsentEvent, from_leaf  # noqa: E402
from fedcrm.consent.gate import UsageContext, clear_subject_memo, gate  # noqa: E402
from fedcrm.consent.integrity import read_history  # noqa: E402
from fedcrm.consent.ledger import Ledger  # noqa: E402

NOW = datetime(2025, 1, 1, tzinfo=UTC)
#: what is timed per repetition: the two reads alone, then the gate as a new process, a later round, and a
#: later round after 100 new receipts
VARIANTS = ("unverified", "verified", "gate", "gate_steady", "gate_receipts")
BATCH = 10_000
_E, _P = LogEntry.__table__, PersonalPayload.__table__


def _pseudonym(n: int) -> str:
    return f"0a1b2c3d:{n:064x}"


def _receipt(i: int, receipt_id: str) -> ConsentEvent:
    return ConsentEvent(
        receipt_id=receipt_id, subject=_pseudonym(i), purpose="churn_prediction",
        category="user.behavior.service_subscription", action="withdraw" if i % 7 == 0 else "grant",
        legal_basis="legitimate_interest", effective_at=NOW, recorded_at=NOW, source="import", notice_version="1",
    )


def _fill(ledger: Ledger, n: int) -> None:
    for lo in range(0, n, BATCH):
        ledger.append([_receipt(i, f"r{i}") for i in range(lo, min(n, lo + BATCH))])


def _unverified_read(ledger: Ledger, size: int) -> int:
    """The pre-integrity gate read, kept here only as the baseline."""
    q = (select(_E.c.idx, _E.c.public_json, _P.c.value)
         .join(_P, (_P.c.idx == _E.c.idx) & (_P.c.field == "subject"))
         .where((_E.c.kind == "consent") & (_E.c.idx < size)))
    with ledger._engine.connect() as conn:
        rows = list(conn.execute(q))
    return len([from_leaf(json.loads(r.public_json), {"subject": r.value})[0] for r in sorted(rows, key=lambda r: r.idx)])


def _verified_read(ledger: Ledger, size: int) -> int:
    head = ledger.latest_checkpoint()
    with ledger._engine.connect() as conn:
        return len(read_history(conn, head.size, head.root_hash).consents)


def _timed(fn: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def measure(n: int, reps: int, work: Path) -> dict[str, Any]:
    """One log of n receipts: each variant ``reps`` times, interleaved."""
    key = work / f"k{n}.pem"
    generate_signing_key(key)
    ledger = Ledger.open(work / f"l{n}.db", signing_key_path=key, origin="bench.fedcrm/gate")
    started = time.perf_counter()
    _fill(ledger, n)
    fill_s = time.perf_counter() - started
    frame = pd.DataFrame({"subject": [_pseudonym(i) for i in range(n)], "tenure": range(n)})
    use = UsageContext(job_id="bench", partner="p", model_version="bench:1", stage="fit")

    def run_gate() -> None:
        gate(frame, {"tenure": "user.behavior.service_subscription"}, "churn_prediction", NOW + timedelta(days=1),
             ["tenure"], ledger=ledger, use=use)

    def new_process_gate() -> None:
        clear_subject_memo()  # what a new process holds: no proven log, no memo of the subject column
        run_gate()

    def regrants() -> None:  # 100 new receipts that change no one's cover (granted customers grant again)
        ledger.append([_receipt(i, f"again-{i}") for i in range(1, 701, 7)])

    started = time.perf_counter()
    run_gate()  # writes the subject set once (every later call gates the same subjects): not measured
    first_s = time.perf_counter() - started
    out: dict[str, list[float]] = {f"{k}_{u}": [] for k in VARIANTS for u in ("wall", "cpu")}
    for _ in range(reps):
        size = ledger.tree_size()
        for name, fn in (("unverified", lambda: _unverified_read(ledger, size)),
                         ("verified", lambda: _verified_read(ledger, size)),
                         ("gate", new_process_gate),
                         ("gate_steady", run_gate)):
            wall, cpu = _timed(fn)
            out[f"{name}_wall"].append(wall)
            out[f"{name}_cpu"].append(cpu)
        regrants()
        wall, cpu = _timed(run_gate)
        out["gate_receipts_wall"].append(wall)
        out["gate_receipts_cpu"].append(cpu)
    ledger.close()
    return {"n": n, "fill_s": fill_s, "first_gate_s": first_s, **{k: _stats(v) for k, v in out.items()}}


def write_markdown(results: dict[str, Any], path: Path) -> None:
    def cell(r: dict[str, Any], key: str) -> str:
        return f"{r[key]['mean']:.2f} ± {r[key]['std']:.2f}"

    lines = [
        "# Benchmark: the gate's fail-closed consent read",
        "",
        "Generated by `.venv/bin/python -m benchmarks.gate` (numbers: `benchmarks/results/gate.json`).",
        f"Machine: {results['machine']}; {results['reps']} repetitions per size, mean ± std, seconds.",
        "",
        "N consent receipts (one customer each: an opt-in style log, the gate's worst case), SQLite. *unverified read* is",
        "what the gate did before (rows chosen by the `kind` column, joined with payloads: a tampered kind or a deleted",
        "payload went unnoticed); *verified read* re-hashes every leaf, recomputes the root against the signed head and",
        "checks payloads, kinds, erasures and rotation rows (`consent/integrity.py`). The *gate* columns are the whole",
        "`gate()` call over a frame of all N customers:",
        "",
        "* *new process*: nothing proven yet (what every new process, and every erasure or key rotation, starts from):",
        "  the whole log is read as the verified read does, the receipts go into columns, the rules run over them;",
        "* *later round*: a long-lived partner process gating again (`consent/verified.py`): only the entries appended",
        "  since it last proved the log are read, hashed onto the tree it proved then and compared with the newly",
        "  signed root; the receipts and the time crossed no threshold, so the covered mask is reused;",
        "* *after 100 receipts*: the same, after 100 new receipts were logged (they change no one's cover): the new",
        "  entries are proven, and the receipts' table and the mask are rebuilt from the kept columns.",
        "",
        "The subject set is written once, by a gate before the measured ones (every gate here lets through the same",
        f"subjects). CPU time is given beside wall time because the machine may be shared (measured "
        f"{results.get('date', '?')}).",
        "",
        "| N | unverified read CPU | verified read CPU | gate, new process CPU | gate, later round CPU | "
        "gate after 100 receipts CPU | gate, new process wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["sizes"]:
        lines.append(f"| {r['n']:,} | {cell(r, 'unverified_cpu')} | {cell(r, 'verified_cpu')} | {cell(r, 'gate_cpu')} | "
                     f"{cell(r, 'gate_steady_cpu')} | {cell(r, 'gate_receipts_cpu')} | {cell(r, 'gate_wall')} |")
    million = next((r for r in results["sizes"] if r["n"] == 1_000_000), None)
    if million is not None:
        scale = _scale_gate_at_a_million()
        exceptions_only = (f"{scale[0]:.2f} s at 1M customers with {scale[1]:,} withdrawals" if scale else
                           "see `benchmarks.scale`")
        steady = max(million["gate_steady_cpu"]["mean"], million["gate_receipts_cpu"]["mean"])
        verdict = "met" if steady <= 1.0 else "not met"
        lines += ["", f"**Against issue 22's goal (the gate ≤ 1 s at 1M customers), for a log holding a receipt per "
                      f"customer: {verdict} in a long-lived partner process** ({million['gate_steady_cpu']['mean']:.2f} s "
                      f"CPU a later round, {million['gate_receipts_cpu']['mean']:.2f} s after 100 new receipts). "
                      f"The first gate of a new process reads the whole log: {million['gate_cpu']['mean']:.1f} s CPU at "
                      f"1,000,000 receipts (the verified read alone, which also builds a record per receipt for the other readers: "
                      f"{million['verified_cpu']['mean']:.1f} s). "
                      "Where the log holds the exceptions only (an opt-out purpose such as churn prediction) the gate "
                      f"costs {exceptions_only} (docs/benchmarks-scale.md)."]
    lines += ["", "![gate read cost](img/gate_read.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _scale_gate_at_a_million() -> tuple[float, int] | None:
    """(steady fit's gate CPU, withdrawals) of the 1M partner in the latest `benchmarks.scale` run, if there is one."""
    path = ROOT / "benchmarks" / "results" / "scale.json"
    entry = json.loads(path.read_text(encoding="utf-8")).get("partner", {}).get("1000000") if path.exists() else None
    if entry is None:
        return None
    fits = [m for m in entry["round"]["messages"] if m["stage"] == "fit"]
    steady = fits[1] if len(fits) > 1 else fits[-1]  # round 2 (round 3 follows a new withdrawal)
    return steady["steps_cpu_s"]["gate"], entry["withdrawn"]


def write_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    ns = [r["n"] for r in results["sizes"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("unverified_cpu", "unverified read (before)"), ("verified_cpu", "verified read"),
                       ("gate_cpu", "gate, new process"), ("gate_steady_cpu", "gate, later round"),
                       ("gate_receipts_cpu", "gate after 100 new receipts")):
        ax.errorbar(ns, [r[key]["mean"] for r in results["sizes"]], yerr=[r[key]["std"] for r in results["sizes"]],
                    marker="o", label=label, capsize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("consent receipts in the log (= customers gated)")
    ax.set_ylabel("CPU seconds")
    ax.set_title("Gate consent read, SQLite")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedcrm-gate-bench-") as tmp:
        sizes = []
        for n in args.sizes:
            sizes.append(measure(n, args.reps, Path(tmp)))
            print(json.dumps(sizes[-1]), flush=True)
    results = {"machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
               "reps": args.reps, "sizes": sizes, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "gate.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_markdown(results, ROOT / "docs" / "benchmarks-gate.md")
    (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
    write_plot(results, ROOT / "docs" / "img" / "gate_read.png")


if __name__ == "__main__":
    main()
