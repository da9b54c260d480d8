"""BG/NBD and Gamma-Gamma on CDNOW: fitted parameters vs references, fit time, holdout check.

Run: ``.venv/bin/python -m benchmarks.clv``. Writes ``benchmarks/results/clv.json``,
``docs/benchmarks-clv.md`` and ``docs/img/clv_holdout.png``.

Set-up (Fader, Hardie & Lee 2005): calibrate on 1997-01-01..1997-09-30, hold out
1997-10-01..1998-06-30; x = distinct purchase days − 1, t_x and T from the first purchase.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy  # noqa: E402

from fedcrm.client.analytics.clv import fit_bgnbd, fit_gamma_gamma, holdout_comparison  # noqa: E402
from fedcrm.client.transactions import holdout_summary, summarise_transactions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets"
CAL_END, HOLD_END = "1997-09-30", "1998-06-30"
REFERENCES = {
    "sample_weeks": {
        "bgnbd": {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
        "gamma_gamma": {"p": 6.25, "q": 3.74, "v": 15.44},
        "source": "Fader, Hardie & Lee (2005) BG/NBD paper; Fader & Hardie (2013) Gamma-Gamma note",
    },
    "master_days": {
        "bgnbd": {"r": 0.2516, "alpha": 33.52, "a": 0.7234, "b": 2.1611},
        "holdout_actual": 19684,
        "holdout_predicted": 16874,
        "source": "datasets/README.md (maximum-likelihood fit, two implementations agreeing to four decimals)",
    },
}
REPEATS = 3


def read_sample() -> pd.DataFrame:
    names = ["master_id", "sample_id", "date", "number_of_cds", "dollar_value"]
    return pd.read_csv(DATA / "cdnow_sample.txt", sep=r"\s+", header=None, names=names, dtype={"sample_id": str, "date": str})


def read_master() -> pd.DataFrame:
    return pd.read_csv(DATA / "cdnow_master.txt", sep=r"\s+", dtype={"customer_id": str, "date": str})


def run_case(name: str, tx: pd.DataFrame, customer: str, unit: str) -> dict[str, Any]:
    """Summaries, timed fits, and the holdout comparison for one data set and time unit."""
    t0 = time.perf_counter()
    cal = summarise_transactions(tx, customer=customer, date="date", amount="dollar_value", observation_end=CAL_END, time_unit=unit)  # type: ignore[arg-type]
    summary_s = time.perf_counter() - t0
    times, fit = [], None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fit = fit_bgnbd(cal["frequency"], cal["recency"], cal["T"], time_unit=unit)
        times.append(time.perf_counter() - t0)
    assert fit is not None
    t0 = time.perf_counter()
    gg = fit_gamma_gamma(cal["frequency"], cal["monetary_value"])
    gg_s = time.perf_counter() - t0
    hold = holdout_summary(tx, CAL_END, HOLD_END, customer=customer, date="date")
    length = hold.attrs["holdout_days"] / (7.0 if unit == "W" else 1.0)
    table = holdout_comparison(fit, cal, hold["holdout_purchase_days"], length)
    ref = REFERENCES[name]["bgnbd"]
    params = {k: getattr(fit, k) for k in ("r", "alpha", "a", "b")}
    return {
        "customers": int(len(cal)),
        "time_unit": unit,
        "bgnbd": params | {"log_likelihood": fit.log_likelihood, "iterations": fit.iterations},
        "bgnbd_relative_error": {k: params[k] / ref[k] - 1 for k in ref},
        "gamma_gamma": {"p": gg.p, "q": gg.q, "v": gg.v, "customers": gg.customers},
        "seconds": {"summary": summary_s, "bgnbd_fit_median": statistics.median(times), "bgnbd_fit_all": times, "gamma_gamma_fit": gg_s},
        "holdout": {
            "length": length,
            "actual_total": int(table["actual"].sum()),
            "predicted_total": float(table["predicted"].sum()),
            "by_frequency": [
                {"bucket": f"{b}+" if b == table.index.max() else str(b), **{k: float(v) for k, v in row.items()}}
                for b, row in table.iterrows()
            ],
        },
    }


def plot(results: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (name, title) in zip(axes, [("sample_weeks", "2,357-customer sample (weeks)"), ("master_days", "Master file, 23,570 customers (days)")], strict=True):
        rows = results[name]["holdout"]["by_frequency"]
        labels = [r["bucket"] for r in rows]
        ax.plot(labels, [r["actual_mean"] for r in rows], "o-", label="actual")
        ax.plot(labels, [r["predicted_mean"] for r in rows], "s--", label="BG/NBD predicted")
        ax.set_title(title)
        ax.set_xlabel("repeat purchase days in calibration (1997-01-01..09-30)")
        ax.set_ylabel("mean purchase days in holdout")
        ax.legend()
    fig.suptitle("Holdout 1997-10-01..1998-06-30: conditional expectations by calibration frequency")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    s, m = results["sample_weeks"], results["master_days"]
    lines = [
        "# Benchmark: BG/NBD and Gamma-Gamma on CDNOW",
        "",
        "Generated by `.venv/bin/python -m benchmarks.clv` (raw numbers: `benchmarks/results/clv.json`).",
        f"Machine: {env['machine']}, {env['cpus']} CPUs, Python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}, pandas {env['pandas']}.",
        "",
        "Calibration 1997-01-01..1997-09-30, holdout 1997-10-01..1998-06-30; x = distinct purchase days − 1;",
        "t_x and T measured from the first purchase day (divided by 7 for weeks).",
        "",
        "## Fitted parameters vs references",
        "",
        "| data | parameter | fitted | reference | relative error |",
        "|---|---|---:|---:|---:|",
    ]
    for label, case in (("sample, weeks", s), ("master, days", m)):
        ref = REFERENCES["sample_weeks" if case is s else "master_days"]["bgnbd"]
        for k, v in ref.items():
            lines.append(f"| {label} | {k} | {case['bgnbd'][k]:.4f} | {v} | {case['bgnbd_relative_error'][k]:+.3%} |")
    gref = REFERENCES["sample_weeks"]["gamma_gamma"]
    for k, v in gref.items():
        lines.append(f"| sample, Gamma-Gamma | {k} | {s['gamma_gamma'][k]:.4f} | {v} | {s['gamma_gamma'][k] / v - 1:+.3%} |")
    lines += [
        "",
        f"Sample log-likelihood {s['bgnbd']['log_likelihood']:.2f} (paper: −9582.4).",
        "",
        "## Fit time (median of %d fits, Nelder-Mead on log-parameters)" % REPEATS,
        "",
        "| data | customers | summary from transactions (s) | BG/NBD fit (s) | Gamma-Gamma fit (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, case in (("sample, weeks", s), ("master, days", m)):
        t = case["seconds"]
        lines.append(f"| {label} | {case['customers']:,} | {t['summary']:.3f} | {t['bgnbd_fit_median']:.3f} | {t['gamma_gamma_fit']:.3f} |")
    lines += ["", "## Holdout: predicted vs actual repeat purchase days", ""]
    for label, case in (("Sample (weeks)", s), ("Master file (days)", m)):
        h = case["holdout"]
        lines += [
            f"**{label}**: actual {h['actual_total']:,}, predicted {h['predicted_total']:,.0f} "
            f"({h['predicted_total'] / h['actual_total'] - 1:+.1%}).",
            "",
            "| repeat purchase days in calibration | customers | actual mean | predicted mean | actual total | predicted total |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in h["by_frequency"]:
            lines.append(
                f"| {r['bucket']} | {r['customers']:,} | {r['actual_mean']:.3f} | {r['predicted_mean']:.3f} | {r['actual']:,} | {r['predicted']:,.1f} |"
            )
        lines.append("")
    lines += [
        f"Master-file reference: {REFERENCES['master_days']['holdout_actual']:,} actual vs "
        f"{REFERENCES['master_days']['holdout_predicted']:,} predicted.",
        "",
        "![Predicted vs actual holdout purchases by calibration frequency](img/clv_holdout.png)",
        "",
        "The shortfall is concentrated in customers with one or two repeat purchase days in calibration, on both",
        "data sets. The fitted parameters match the references, and the totals match the reference computation",
        "on the master file, so this is how the BG/NBD model fits CDNOW, not an implementation artefact.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    results: dict[str, Any] = {
        "environment": {
            "machine": platform.machine(),
            "platform": platform.platform(),
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "pandas": pd.__version__,
        },
        "references": REFERENCES,
    }
    results["sample_weeks"] = run_case("sample_weeks", read_sample(), "sample_id", "W")
    results["master_days"] = run_case("master_days", read_master(), "customer_id", "D")
    for case in ("sample_weeks", "master_days"):
        for row in results[case]["holdout"]["by_frequency"]:
            row["customers"] = int(row["customers"])
            row["actual"] = int(row["actual"])
    out_json = ROOT / "benchmarks" / "results" / "clv.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, ROOT / "docs" / "img" / "clv_holdout.png")
    (ROOT / "docs" / "benchmarks-clv.md").write_text(markdown(results))
    for case in ("sample_weeks", "master_days"):
        r = results[case]
        print(case, {k: round(v, 4) for k, v in r["bgnbd"].items() if k in "r alpha a b".split()},
              "fit", round(r["seconds"]["bgnbd_fit_median"], 2), "s;",
              "holdout actual", r["holdout"]["actual_total"], "predicted", round(r["holdout"]["predicted_total"]))


if __name__ == "__main__":
    main()
