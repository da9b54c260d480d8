"""Readable HTML page for an analytics summary: tables and inline charts, nothing fetched.

Charts are matplotlib PNGs embedded as base64 ``data:`` URIs and the style is inline, so
the page opens offline and references no CDN. It renders only what the summary holds, so
it can never show a cell the minimum-count rule withheld.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on partner servers
import matplotlib.pyplot as plt  # noqa: E402

TITLES = {
    "lifecycle_stage": "Lifecycle stage",
    "rfm_segment": "RFM segment",
    "r_score": "Recency score (5 = most recent)",
    "f_score": "Frequency score",
    "m_score": "Monetary score",
    "repeat_purchase_days": "Repeat purchase days",
    "health_band": "Health score band",
    "segment": "k-means segments",
}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:.9rem}
img{max-width:100%}
"""


def bar_chart_png(labels: list[str], values: list[float], *, title: str, xlabel: str = "customers") -> str:
    """A horizontal bar chart as a base64 PNG string."""
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(labels) + 1.2))
    try:
        ax.barh(labels[::-1], values[::-1], color="#4C72B0")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(summary: dict[str, Any]) -> str:
    """The summary as one self-contained HTML page."""
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Customer analytics summary</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Customer analytics summary</h1>",
        f"<p>{summary['customers']:,} customers"
        + (f", observed up to {e(str(summary['observation_end']))}" if "observation_end" in summary else "")
        + f". Every group shown covers at least {summary['min_count']} customers; "
        f"{summary['withheld_cells']} smaller group(s) (and groups that would reveal them) are withheld.</p>",
    ]
    parts += _models(summary.get("models", {}))
    for name, cells in summary.get("partitions", {}).items():
        parts += _partition(name, cells)
    parts.append("</body></html>")
    return "\n".join(parts)


def _models(models: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if "bgnbd" in models:
        m = models["bgnbd"]
        out += [
            "<h2>Purchase model (BG/NBD)</h2>",
            f"<p>r = {m['r']:.4g}, α = {m['alpha']:.4g} (per {'week' if m['time_unit'] == 'W' else 'day'}), "
            f"a = {m['a']:.4g}, b = {m['b']:.4g}; log-likelihood {m['log_likelihood']:.1f} "
            f"over {m['customers']:,} customers.</p>",
        ]
    if "gamma_gamma" in models:
        g = models["gamma_gamma"]
        out += [
            "<h2>Spend model (Gamma-Gamma)</h2>",
            f"<p>p = {g['p']:.4g}, q = {g['q']:.4g}, v = {g['v']:.4g}, fitted on {g['customers']:,} repeat buyers.</p>",
        ]
    return out


def _partition(name: str, cells: list[dict[str, Any]]) -> list[str]:
    e = html.escape
    title = TITLES.get(name, name.replace("_", " "))
    out = [f"<h2>{e(title)}</h2>"]
    if not cells:
        return out + ["<p class='note'>Every group is below the minimum count: nothing to show.</p>"]
    labels = [str(c["cell"]) for c in cells]
    png = bar_chart_png(labels, [c["customers"] for c in cells], title=title)
    out.append(f"<img alt='{e(title)}' src='data:image/png;base64,{png}'>")
    metrics = [k for k in cells[0] if k.startswith("mean_")]
    head = "".join(f"<th>{e(k[5:].replace('_', ' '))} (mean)</th>" for k in metrics)
    rows = []
    for c in cells:
        vals = "".join(f"<td>{_fmt(c.get(k))}</td>" for k in metrics)
        rows.append(f"<tr><td>{e(str(c['cell']))}</td><td>{c['customers']:,}</td>{vals}</tr>")
    out.append(f"<table><tr><th>group</th><th>customers</th>{head}</tr>{''.join(rows)}</table>")
    described = [c["description"] for c in cells if c.get("description")]
    if described:
        out.append("<ul>" + "".join(f"<li>{e(d)}</li>" for d in described) + "</ul>")
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.2f}"
    return html.escape(str(value))
