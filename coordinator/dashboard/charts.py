"""Server-side charts for the dashboard: matplotlib → inline SVG (nothing to load from anywhere).

Each plotted series gets an SVG id (``gid``) naming what it shows (``federated-roc_auc``,
``partner-A-roc_auc``, ``participation-fit``, …) so a browser test can find the curve a
person sees and count its points.
"""

from __future__ import annotations

import io
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

matplotlib.rcParams["svg.hashsalt"] = "fedcrm"  # stable ids inside the SVG
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text (readable, searchable)

METRIC_NAMES = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "top_decile_lift": "top-decile lift",
                "loss": "validation loss"}


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG is inlined in HTML
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # matplotlib's RDF block: nothing to show


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _bar_ids(bars: Any, prefix: str, xs: list[int]) -> None:
    for x, patch in zip(xs, bars, strict=True):
        patch.set_gid(f"{prefix}-{x}")


def metric_chart(rounds: list[dict[str, Any]], metric: str, *, best_round: int | None = None) -> str | None:
    """A metric per round: federated (example-weighted over partners' local hold-outs) and each partner's."""
    fed = [(r["round"], r["federated_loss"] if metric == "loss" else r["federated"].get(metric))
           for r in rounds if r["completed"]]
    fed = [(x, y) for x, y in fed if y is not None]
    if not fed:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    (line,) = ax.plot([x for x, _ in fed], [y for _, y in fed], "o-", lw=2.5, color="#1f4e8c", label="federated")
    line.set_gid(f"federated-{metric}")
    key = "eval_loss" if metric == "loss" else metric
    names = sorted({p["partner"] for r in rounds for p in r["partners"]})
    for name in names:
        ys = [(r["round"], p[key]) for r in rounds for p in r["partners"] if p["partner"] == name and p[key] is not None]
        if ys:
            (pl,) = ax.plot([x for x, _ in ys], [y for _, y in ys], "--", marker=".", alpha=0.75,
                            label=f"partner {name}")
            pl.set_gid(_safe_id(f"partner-{name}-{metric}"))
    if best_round is not None and any(x == best_round for x, _ in fed):
        ax.axvline(best_round, color="#888", ls=":", lw=1)
        ax.annotate(f"best round {best_round}", (best_round, ax.get_ylim()[1]), fontsize=7, ha="left", va="top")
    ax.set_xlabel("round")
    ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} (local hold-outs)")
    ax.set_title(f"{METRIC_NAMES.get(metric, metric)} per round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _svg(fig)


def participation_chart(rounds: list[dict[str, Any]], num_partners: int) -> str | None:
    """Partners that delivered training and evaluation per round, and dropouts."""
    if not rounds:
        return None
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=100)
    width = 0.38
    fit = ax.bar([x - width / 2 for x in xs], [len(r["fit_partners"]) for r in rounds], width, label="trained",
                 color="#1f4e8c")
    _bar_ids(fit, "participation-fit", xs)
    ev = ax.bar([x + width / 2 for x in xs], [len(r["evaluate_partners"]) for r in rounds], width,
                label="evaluated", color="#6a9fd8")
    _bar_ids(ev, "participation-evaluate", xs)
    drops = [len({d["partner"] for d in r["dropouts"]}) for r in rounds]
    if any(drops):
        (dl,) = ax.plot(xs, drops, "x", color="#c0392b", ms=9, mew=2, label="dropped out")
        dl.set_gid("participation-dropouts")
    ax.axhline(num_partners, color="#888", ls=":", lw=1)
    ax.set_ylim(0, num_partners + 0.8)
    ax.set_xlabel("round")
    ax.set_ylabel("partners")
    ax.set_title("Participation per round")
    ax.set_xticks(xs)
    ax.legend(fontsize=7, loc="lower right")
    return _svg(fig)


def timing_chart(rounds: list[dict[str, Any]]) -> str | None:
    """Wall time of each round (training start → federated evaluation)."""
    timed = [(r["round"], r["duration_s"]) for r in rounds if r["duration_s"] is not None]
    if not timed:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 2.8), dpi=100)
    bars = ax.bar([x for x, _ in timed], [y for _, y in timed], color="#4b8b3b")
    _bar_ids(bars, "round-time", [x for x, _ in timed])
    ax.set_xlabel("round")
    ax.set_ylabel("seconds")
    ax.set_title("Round time")
    ax.set_xticks([x for x, _ in timed])
    return _svg(fig)


def epsilon_chart(rounds: list[dict[str, Any]]) -> str | None:
    """ε spent per partner as of each round (only partners that trained with differential privacy)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rounds:
        for p in r["partners"]:
            if p["dp_epsilon"] is not None:
                series.setdefault(p["partner"], []).append((r["round"], p["dp_epsilon"]))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=100)
    for name, points in sorted(series.items()):
        (line,) = ax.plot([x for x, _ in points], [y for _, y in points], "o-", label=f"partner {name}")
        line.set_gid(_safe_id(f"epsilon-{name}"))
    ax.set_xlabel("round")
    ax.set_ylabel("ε spent")
    ax.set_title("Privacy budget spent per partner (ε)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _svg(fig)
