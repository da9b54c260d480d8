"""The consortium report of an analytics run: HTML + JSON with matplotlib plots (offline, no scripts).

Reads ``analytics/results.json`` (written by :mod:`fedcrm.coordinator.analytics_run`) and writes,
in the same folder, ``report.json`` (what an analyst's tools read), ``report.html`` and the PNG
plots it shows: segment sizes, segment profiles (numeric means per segment, in units of the
consortium's standard deviation), the consortium distributions of every numeric feature (CLV /
RFM features for transaction partners) and the overlap counts. Every number shown is an aggregate
over at least the run's minimum count of customers; a withheld cell is shown as "withheld",
never as zero.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from fedcrm.errors import CoordinatorError


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_segment_sizes(results: dict[str, Any], path: Path) -> None:
    """Bar chart of customers per segment (withheld segments marked)."""
    plt = _plt()
    profiles = results["segments"]["profiles"]
    fig, ax = plt.subplots(figsize=(5, 3))
    labels = [f"S{p['segment']}" for p in profiles]
    values = [p["customers"] or 0 for p in profiles]
    bars = ax.bar(labels, values, color="tab:blue")
    for bar, p in zip(bars, profiles, strict=True):
        ax.annotate("withheld" if p["customers"] is None else f"{p['customers']:,}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("customers (all partners)")
    ax.set_title(f"Segments (k = {results['segments']['k']}, federated k-means)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_profiles(results: dict[str, Any], path: Path) -> None:
    """Heat map of numeric feature means per segment, standardised by the consortium's mean and std."""
    plt = _plt()
    profiles = [p for p in results["segments"]["profiles"] if p["customers"] is not None]
    features = sorted({f for p in profiles for f in p["numeric"]})
    if not profiles or not features:
        return
    scaling = results["scaling"]
    grid = [[(p["numeric"][f]["mean"] - scaling[f][0]) / (scaling[f][1] or 1.0) if f in p["numeric"] else float("nan")
             for f in features] for p in profiles]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 0.7 * len(features)), max(2.6, 1.2 + 0.45 * len(profiles))))
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
    ax.set_xticks(range(len(features)), features, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(profiles)), [f"S{p['segment']}" for p in profiles], fontsize=8)
    fig.colorbar(image, ax=ax, label="vs consortium (std)")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value == value:  # not NaN
                ax.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=7)
    ax.set_title("Segment profiles", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_distributions(results: dict[str, Any], path: Path) -> None:
    """Histograms of the consortium distributions (withheld bins left empty)."""
    plt = _plt()
    dists = results["distributions"]
    if not dists:
        return
    n = len(dists)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.4 * rows), squeeze=False)
    for ax, (name, d) in zip(axes.flat, dists.items(), strict=False):
        labels = ["<" + _short(d["edges"][0])] + [f"{_short(a)}–{_short(b)}" for a, b in
                                                    zip(d["edges"][:-1], d["edges"][1:], strict=True)]
        labels.append("≥" + _short(d["edges"][-1]))
        ax.bar(range(len(labels)), [c or 0 for c in d["counts"]], color="tab:green")
        ax.set_xticks(range(len(labels)), labels, rotation=70, fontsize=6)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Consortium distributions (customers per bin, all partners)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_overlap(results: dict[str, Any], path: Path) -> None:
    """Shared identifiers per partner pair and identifier kind."""
    plt = _plt()
    rows = [o for o in results["overlap"] if o["count"] is not None]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(5, 2.8))
    labels = [f"{'×'.join(o['partners'])} {o['identifier']}" for o in rows]
    ax.barh(labels, [o["count"] for o in rows], color="tab:purple")
    for i, o in enumerate(rows):
        ax.annotate(f"{o['count']:,}", (o["count"], i), va="center", fontsize=8)
    ax.set_xlabel("shared identifiers (PSI, count only)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(x: float) -> str:
    return f"{x:.3g}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(run_dir: Path) -> Path:
    """Write ``analytics/report.{json,html}`` and plots for an analytics run; returns the HTML path."""
    folder = Path(run_dir) / "analytics"
    source = folder / "results.json"
    if not source.is_file():
        raise CoordinatorError(f"{run_dir}: not an analytics run (no analytics/results.json)")
    results = json.loads(source.read_text())
    plots = {"segment_sizes.png": plot_segment_sizes, "segment_profiles.png": plot_profiles,
             "distributions.png": plot_distributions, "overlap.png": plot_overlap}
    for name, fn in plots.items():
        fn(results, folder / name)
    report = {k: v for k, v in results.items() if k not in ("scaling",)}
    report["note"] = (f"Every number is an aggregate over at least {results['min_count']} customers "
                      "(null = withheld under the minimum count); sums came through SecAgg+, overlap counts by PSI.")
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    seg = results["segments"]
    parts = [f"<h1>Consortium analytics — run {html.escape(results['run_id'])}</h1>",
             f"<p>Task <code>{html.escape(results['task'])}</code> (purpose {html.escape(results['purpose'])}), "
             f"partners {html.escape(', '.join(results['partners']))}, {results['customers']:,} customers in segments. "
             f"Every number is an aggregate over at least {results['min_count']} customers; "
             "“withheld” marks a cell under that minimum. Sums travelled through SecAgg+ "
             f"({results['secure_sums']} secure sums), overlap counts by private set intersection.</p>",
             f"<h2>Segments</h2><p>k = {seg['k']} chosen by the federated simplified silhouette "
             f"({seg['silhouette']:.3f}); inertia {seg['inertia']:.1f}.</p>",
             _table(["k", "silhouette", "inertia"], [[str(f["k"]), f"{f['silhouette']:.3f}", f"{f['inertia']:.1f}"]
                                                    for f in seg["by_k"]]),
             '<img src="segment_sizes.png" alt="segment sizes">', '<img src="segment_profiles.png" alt="profiles">']
    rows = []
    for p in seg["profiles"]:
        if p["customers"] is None:
            rows.append([f"S{p['segment']}", "withheld", ""])
            continue
        numeric = "; ".join(f"{f} {v['mean']:.3g} ± {v['std']:.3g}" for f, v in p["numeric"].items())
        shares = []
        for feature, values in p["shares"].items():
            value, share = max(values.items(), key=lambda kv: kv[1])
            shares.append(f"{feature} {value} {share:.0%}")
        rows.append([f"S{p['segment']}", f"{p['customers']:,}", numeric, "; ".join(shares)])
    parts.append(_table(["segment", "customers", "numeric means ± std", "most common value (share)"], rows))
    parts += ["<h2>Distributions across partners</h2>", '<img src="distributions.png" alt="distributions">']
    parts.append("<h2>Customer overlap</h2>")
    if results["overlap"]:
        parts.append(_table(["partners", "identifier", "shared"], [
            [" × ".join(o["partners"]), o["identifier"], "withheld" if o["count"] is None else f"{o['count']:,}"]
            for o in results["overlap"]]))
        parts.append('<img src="overlap.png" alt="overlap">')
    else:
        parts.append("<p>No overlap was asked for.</p>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;font-size:.9em}img{max-width:100%;"
             "display:block;margin:1em 0}")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>fedcrm analytics "
            f"{html.escape(results['run_id'])}</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")
    out = folder / "report.html"
    out.write_text(page)
    return out
