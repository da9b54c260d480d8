"""The run report: a markdown and an HTML page with ROC AUC per round."""

from __future__ import annotations

import base64
import html

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_auc(rounds: list[dict[str, Any]], path: Path) -> Path | None:
    """ROC AUC per round: federated (example-weighted mean over partners) and each partner."""
    xs = [r["round"] for r in rounds if "federated" in r and "roc_auc" in r["federated"]]
    if not xs:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot(xs, [r["federated"]["roc_auc"] for r in rounds if r["round"] in xs], "o-", lw=2.5, label="federated")
    partners = sorted({p for r in rounds for p in r.get("evaluate", {})})
    for p in partners:
        ys = [(r["round"], r["evaluate"][p].get("roc_auc")) for r in rounds if p in r.get("evaluate", {})]
        ys = [(x, y) for x, y in ys if y is not None]
        if ys:
            ax.plot([x for x, _ in ys], [y for _, y in ys], "--", alpha=0.7, label=f"partner {p} (local hold-out)")
    ax.set_xlabel("round")
    ax.set_ylabel("ROC AUC")
    ax.set_title("ROC AUC per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(run_dir: Path, rounds: list[dict[str, Any]], status: dict[str, Any]) -> Path:
    """Write report.md and report.html in the run directory."""
    plan = json.loads((run_dir / "plan.json").read_text())
    cfg = plan["config"]
    plot = plot_auc(rounds, run_dir / "roc_auc.png")
    from fedcrm.coordinator.model_choice import model_selection
    from fedcrm.coordinator.registry import read_events

    chosen = model_selection(read_events(run_dir), rounds)
    lines = [
        f"# Run {plan['run_id']}",
        "",
        f"- status: **{'succeeded' if status['succeeded'] else status.get('outcome', 'failed').upper()}**"
        + (f" after round {status['after_round']}" if not status["succeeded"] and "after_round" in status else "")
        + (f" — {status['error']}" if status.get("error") else ""),
        f"- task: `{json.loads(plan['task_schema_json'])['name']}`, {plan['num_partners']} partners, "
        f"{cfg['rounds']} rounds, aggregation **{cfg['aggregation']}**, strategy {cfg['strategy']}, "
        f"model {cfg['architecture']}",
        f"- wall time: {status['wall_s']} s",
        *_selection_lines(chosen, status),
        "",
        "| round | consent as of | federated ROC AUC (local hold-outs) | PR AUC | top-decile lift | validation loss | SecAgg+ stages complete |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        fed = r.get("federated", {})
        stages = r.get("secagg_stages", {})
        done = "all 4 for all partners" if len(stages) == 4 else (f"{len(stages)}/4" if stages else "n/a (plain)")
        lines.append(
            f"| {r['round']} | {r.get('consent_as_of', '')} | {_f(fed.get('roc_auc'))} | {_f(fed.get('pr_auc'))} | "
            f"{_f(fed.get('top_decile_lift'))} | {_f(fed.get('loss'))} | {done} |"
        )
    if plot:
        lines += ["", f"![ROC AUC per round]({plot.name})"]
    lines += ["", "Federated metrics are example-weighted means of each partner's metrics on its own local hold-out; "
              "each partner withholds a metric computed over fewer customers than the minimum count."]
    md = "\n".join(lines) + "\n"
    (run_dir / "report.md").write_text(md)
    img = ""
    if plot:
        img = f'<img alt="ROC AUC per round" src="data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()}">'
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>fedcrm run "
        f"{html.escape(plan['run_id'])}</title><style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .6rem}</style></head><body>"
        f"<pre style='white-space:pre-wrap'>{html.escape(md)}</pre>{img}</body></html>"
    )
    (run_dir / "report.html").write_text(page)
    return run_dir / "report.md"


def _selection_lines(chosen: dict[str, Any], status: dict[str, Any]) -> list[str]:
    """Which round the final model is, and why (best by federated validation loss, or the last)."""
    lines = []
    if status.get("succeeded") and chosen["final_round"] is not None:
        why = ("lowest federated validation loss (partners' local hold-outs)" if chosen["final_rule"] == "best"
               else "the last round (run config final_model = \"last\")")
        lines.append(f"- final model: **round {chosen['final_round']}** — {why}; best round {chosen['best_round']}")
    if chosen["stopped_early_after"] is not None:
        lines.append(f"- early stopping: stopped after round {chosen['stopped_early_after']} "
                     "(no lower federated validation loss within the patience)")
    return lines


def _f(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "—"


