"""Rendering a quality report: ``quality.json`` (partner-local part + exportable part) and ``quality.html``.

The JSON has two top-level parts, each marked with ``"exportable"``:

- ``local`` (``exportable: false``): every finding with counts, actions, example rows with
  their values and line numbers. It shows customer data and never leaves the partner.
- ``export`` (``exportable: true``): counts of distinct customers per cell (a defect kind,
  or a kind in one column). A cell over fewer customers than ``privacy.min_count`` is
  withheld — absent, never zeroed — and the withholding is logged with the cell's name but
  not its count. Because each kind's total is published too, a lone withheld cell (or
  withheld cells adding up to fewer than the minimum) could be recovered as total minus
  the rest, so the next-smallest cell of that kind is withheld as well (complementary
  suppression). A true zero is published: it describes no customer.

The HTML page draws its charts with matplotlib into inline base64 PNGs: nothing is fetched.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedcrm.client.disclosure import suppress
from fedcrm.client.quality import FAMILY, ROW, QualityReport
from fedcrm.logging import get_logger

log = get_logger(__name__)

JSON_FILE = "quality.json"
HTML_FILE = "quality.html"


def withhold(cells: dict[str, int], *, min_count: int, partition: str, total: str | None = None) -> dict[str, int]:
    """Cells that may be exported; small ones withheld (with complementary suppression), names logged."""
    if total is None:
        # Without a published total, a withheld cell cannot be recovered by subtraction.
        published = [k for k, v in cells.items() if not 0 < v < min_count]
        withheld = [k for k in cells if k not in published]
    else:
        published, withheld = suppress(cells, min_count=min_count, protected=[total])
    for name in withheld:
        small = cells[name] < min_count
        reason = "fewer customers than the minimum count" if small else "protects another withheld cell"
        log.info(f"quality cell withheld: {reason}", extra={"cell": name})
    return {k: cells[k] for k in published}


def export_part(report: QualityReport) -> dict[str, Any]:
    """The exportable part: customer counts per cell under the minimum-count rule."""
    m = report.min_count
    overall = withhold({"customers_read": report.customers_read, "rows_read": report.rows_read,
                        "rows_reaching_training": report.rows_kept}, min_count=m, partition="overall")
    kinds: dict[str, dict[str, int]] = {}
    for (kind, column), group in sorted(report.groups.items()):
        kinds.setdefault(kind, {})[f"{kind}/{column}"] = group.customers
    per_kind: dict[str, Any] = {}
    for kind, cells in kinds.items():
        total = f"{kind}/total"
        hashes = [h for (k, _), g in report.groups.items() if k == kind for h in g.id_hashes]
        cells = {total: int(np.unique(np.concatenate(hashes)).size)} | cells
        # One column per kind: the column cell equals the total, so it is published (or withheld) once.
        if len(cells) == 2:
            cells = {total: cells[total]}
        per_kind[kind] = withhold(cells, min_count=m, partition=kind, total=total if len(cells) > 1 else None)
    return {"exportable": True, "min_count": m, "unit": "distinct customers", "overall": overall,
            "cells": per_kind}


def local_part(report: QualityReport) -> dict[str, Any]:
    """The partner-local part: every finding with examples and line numbers."""
    findings: dict[str, Any] = {}
    for (kind, column), g in sorted(report.groups.items()):
        entry = findings.setdefault(kind, {"family": FAMILY.get(kind, "other"), "count": 0, "columns": {}})
        entry["count"] += g.count
        lines = sorted(g.lines)
        entry["columns"][column] = {
            "count": g.count, "customers": g.customers, "action": g.action, "examples": g.examples,
            "lines": lines[: report.rules.max_lines], "lines_truncated": len(lines) > report.rules.max_lines,
        }
    return {
        "exportable": False,
        "rows_read": report.rows_read, "rows_kept": report.rows_kept, "rows_rejected": report.rows_rejected,
        "customers_read": report.customers_read, "counts": report.counts(),
        "missing_per_column": report.missing_per_column, "free_text_columns_skipped": report.skipped_columns,
        "findings": findings,
    }


def report_json(report: QualityReport) -> dict[str, Any]:
    """The whole ``quality.json`` document."""
    return {
        "partner": report.partner, "source": str(report.source),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rules": report.rules.model_dump(mode="json"),
        "local": local_part(report), "export": export_part(report),
    }


def write_quality(report: QualityReport, out_dir: Path) -> tuple[Path, Path]:
    """Write ``quality.json`` and ``quality.html`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = report_json(report)
    json_path, html_path = out_dir / JSON_FILE, out_dir / HTML_FILE
    json_path.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
    html_path.write_text(render_html(doc), encoding="utf-8")
    return json_path, html_path


# --- HTML ----------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _bar_chart(labels: list[str], values: list[int], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(labels), 3) + 0.8))
    ax.barh(labels[::-1], values[::-1], color="#4c72b0")
    ax.set_title(title)
    ax.set_xlabel("rows")
    for i, v in enumerate(values[::-1]):
        ax.text(v, i, f" {v}", va="center", fontsize=8)
    return _png(fig)


def render_html(doc: dict[str, Any]) -> str:
    """A self-contained HTML page (inline CSS and images) for the partner's data team."""
    local = doc["local"]
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Data quality — {esc(doc['partner'])}</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:70em;color:#222}table{border-collapse:collapse;"
        "margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}"
        "th{background:#f0f0f0}.num{text-align:right}.note{color:#666;font-size:.9em}code{background:#f5f5f5}",
        "</style></head><body>",
        f"<h1>Data quality: partner {esc(doc['partner'])}</h1>",
        f"<p class='note'>Source <code>{esc(doc['source'])}</code>, generated {esc(doc['generated_at'])}. "
        "This page shows customer values and stays with the partner; only the <code>export</code> part of "
        "quality.json may leave.</p>",
        "<table><tr><th>rows read</th><th>rows reaching training</th><th>rows rejected</th>"
        "<th>distinct customers</th></tr>",
        f"<tr><td class=num>{local['rows_read']}</td><td class=num>{local['rows_kept']}</td>"
        f"<td class=num>{local['rows_rejected']}</td><td class=num>{local['customers_read']}</td></tr></table>",
    ]
    counts = local["counts"]
    if counts:
        kinds = sorted(counts, key=lambda k: -counts[k])
        chart = _bar_chart(kinds, [counts[k] for k in kinds], "Findings per kind")
        parts.append(f"<img alt='findings per kind' src='{chart}'>")
    missing = {c: n for c, n in local["missing_per_column"].items() if n}
    if missing:
        cols = sorted(missing, key=lambda c: -missing[c])
        chart = _bar_chart(cols, [missing[c] for c in cols], "Missing values per column")
        parts.append(f"<img alt='missing values per column' src='{chart}'>")
    else:
        parts.append("<p>No missing values.</p>")
    parts.append("<h2>Findings</h2>")
    if not local["findings"]:
        parts.append("<p>No problems found.</p>")
    for kind, entry in local["findings"].items():
        parts.append(f"<h3>{esc(kind)} <span class=note>({entry['family']}, {entry['count']} rows)</span></h3>")
        parts.append("<table><tr><th>column</th><th>rows</th><th>customers</th><th>what ingestion does</th>"
                     "<th>examples (line: value — detail)</th></tr>")
        for column, c in entry["columns"].items():
            examples = "<br>".join(
                f"{e['line']}: <code>{esc(str(e['value']))}</code> {esc(str(e['detail']))}" for e in c["examples"])
            name = "whole row" if column == ROW else column
            parts.append(f"<tr><td>{esc(name)}</td><td class=num>{c['count']}</td><td class=num>{c['customers']}"
                         f"</td><td>{esc(c['action'])}</td><td>{examples}</td></tr>")
        parts.append("</table>")
    export = doc["export"]
    parts.append(f"<h2>Exportable summary</h2><p class=note>Distinct customers per cell; cells under "
                 f"{export['min_count']} customers are withheld (absent).</p><table><tr><th>cell</th>"
                 "<th>customers</th></tr>")
    for name, value in export["overall"].items():
        parts.append(f"<tr><td>{esc(name)}</td><td class=num>{value}</td></tr>")
    for cells in export["cells"].values():
        for name, value in cells.items():
            parts.append(f"<tr><td>{esc(name)}</td><td class=num>{value}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)
