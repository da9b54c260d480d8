"""Dashboard pages: plain HTML with inline SVG charts and inline CSS, rendered from the registry.

No JavaScript, no fonts, no CDN: a page is one self-contained document, so it works offline
and behind any proxy. Numbers come from the same registry queries the API serves. Counts of
customers below the dashboard's minimum count are shown as withheld, never as numbers.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from fedcrm.coordinator.dashboard.charts import epsilon_chart, metric_chart, participation_chart, timing_chart

_CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header{background:#1f4e8c;color:#fff;padding:.6rem 1.5rem;display:flex;gap:1.5rem;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}
main{max-width:72rem;margin:1rem auto;padding:0 1.5rem}
table{border-collapse:collapse;margin:.5rem 0 1.2rem;background:#fff}
td,th{border:1px solid #d0d0d0;padding:.25rem .55rem;text-align:left;font-size:.88rem}
th{background:#eef2f7}
.status-completed{color:#1e7b34;font-weight:600}.status-failed,.status-killed{color:#b3261e;font-weight:600}
.status-running,.status-starting{color:#8a5a00;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:1rem}.chart{background:#fff;border:1px solid #ddd;padding:.4rem}
.chart svg{max-width:100%;height:auto}.note{color:#555;font-size:.85rem}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def page(title: str, body: str) -> str:
    """A complete dashboard page."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)} · fedcrm</title><meta name='viewport' content='width=device-width'>"
        f"<style>{_CSS}</style></head><body><header><a href='/'>fedcrm operator</a><a href='/'>runs</a>"
        "<a href='/dashboard/partners'>partners</a><a href='/dashboard/models'>models</a>"
        "<a href='/docs'>API</a></header>"
        f"<main><h1>{_e(title)}</h1>{body}</main></body></html>"
    )


def _status(status: str) -> str:
    return f"<span class='status-{_e(status)}'>{_e(status)}</span>"


def runs_page(runs: list[dict[str, Any]], last_auc: dict[str, float | None]) -> str:
    """Every run with its status."""
    rows = []
    for r in runs:
        final = f"round {r['final_round']} ({r['final_rule']})" if r["final_round"] else "—"
        rows.append(
            f"<tr data-run='{_e(r['run_id'])}'><td><a href='/dashboard/runs/{_e(r['run_id'])}'>{_e(r['run_id'])}</a></td>"
            f"<td class='status'>{_status(r['status'])}</td><td>{_e(r['task_name'])}</td><td>{_e(r['aggregation'])}</td>"
            f"<td>{_e(r['strategy'])}</td><td class='rounds'>{r['rounds_completed']}/{r['rounds_planned']}</td>"
            f"<td>{final}</td><td class='auc'>{_num(last_auc.get(r['run_id']))}</td>"
            f"<td>{_time(r['started_at'])}</td><td>{_e((r['error'] or '')[:120])}</td></tr>"
        )
    body = (
        "<table id='runs'><tr><th>run</th><th>status</th><th>task</th><th>aggregation</th><th>strategy</th>"
        "<th>rounds</th><th>final model</th><th>final model ROC AUC (local hold-outs)</th><th>started</th>"
        "<th>error</th></tr>" + "".join(rows) + "</table>"
        + ("" if runs else "<p>No runs in the registry yet.</p>")
    )
    return page("Runs", body)


def _chart(svg: str | None, name: str) -> str:
    return f"<figure class='chart' data-chart='{name}'>{svg}</figure>" if svg else ""


def run_page(run: dict[str, Any], rounds: list[dict[str, Any]], lineage: dict[str, Any] | None) -> str:
    """One run: metric curves (federated and per partner), participation, timings, ε, rounds table, lineage."""
    summary = (
        "<table id='summary'>"
        f"<tr><th>status</th><td>{_status(run['status'])} {_e(run['error'] or '')}</td></tr>"
        f"<tr><th>task</th><td>{_e(run['task_name'])} <code>{_e(run['task_schema_sha256'][:16])}…</code></td></tr>"
        f"<tr><th>aggregation / strategy / model</th><td>{_e(run['aggregation'])} / {_e(run['strategy'])} / "
        f"{_e(run['architecture'])}</td></tr>"
        f"<tr><th>partners</th><td>{_e(', '.join(run['partners']))}</td></tr>"
        f"<tr><th>rounds</th><td>{run['rounds_completed']} of {run['rounds_planned']}"
        + (f"; stopped early after round {run['stopped_early_after']}" if run["stopped_early_after"] else "")
        + (f"; resumed after round(s) {_e(', '.join(map(str, run['resumed_from'])))}" if run["resumed_from"] else "")
        + "</td></tr>"
        "<tr><th>final model</th><td id='final-round'>"
        + (f"round {run['final_round']} ({'best federated validation loss' if run['final_rule'] == 'best' else 'last round'}"
           f"; best round {run['best_round']})" if run["final_round"] else "—")
        + "</td></tr>"
        f"<tr><th>wall time</th><td>{_num(run['wall_s'], 1)} s</td></tr></table>"
    )
    charts = "".join([
        _chart(metric_chart(rounds, "roc_auc", best_round=run["best_round"]), "roc_auc"),
        _chart(metric_chart(rounds, "loss", best_round=run["best_round"]), "loss"),
        _chart(metric_chart(rounds, "pr_auc"), "pr_auc"),
        _chart(participation_chart(rounds, run["num_partners"]), "participation"),
        _chart(timing_chart(rounds), "timings"),
        _chart(epsilon_chart(rounds), "epsilon"),
    ])
    table = ["<table id='rounds'><tr><th>round</th><th>trained</th><th>evaluated</th><th>dropouts</th>"
             "<th>federated ROC AUC</th><th>PR AUC</th><th>top-decile lift</th><th>validation loss</th>"
             "<th>SecAgg+ stages</th><th>time (s)</th></tr>"]
    for r in rounds:
        fed = r["federated"]
        drops = "; ".join(f"{d['partner']} at {d['stage']}: {d['reason']}" for d in r["dropouts"]) or "—"
        table.append(
            f"<tr data-round='{r['round']}'><td>{r['round']}</td><td>{_e(', '.join(r['fit_partners']))}</td>"
            f"<td>{_e(', '.join(r['evaluate_partners']))}</td><td>{_e(drops)}</td>"
            f"<td class='roc_auc'>{_num(fed.get('roc_auc'))}</td><td class='pr_auc'>{_num(fed.get('pr_auc'))}</td>"
            f"<td class='top_decile_lift'>{_num(fed.get('top_decile_lift'))}</td>"
            f"<td class='loss'>{_num(r['federated_loss'])}</td><td>{len(r['secagg_stages']) or 'plain'}</td>"
            f"<td class='duration'>{_num(r['duration_s'], 2)}</td></tr>")
    table.append("</table>")
    partner_rows = ["<table id='partner-rounds'><tr><th>round</th><th>partner</th><th>trained on</th>"
                    "<th>training loss</th><th>ROC AUC (local hold-out)</th><th>hold-out loss</th><th>ε spent</th></tr>"]
    for r in rounds:
        for p in r["partners"]:
            partner_rows.append(
                f"<tr data-round='{r['round']}' data-partner='{_e(p['partner'])}'><td>{r['round']}</td>"
                f"<td>{_e(p['partner'])}</td><td>{_num(p['fit_examples'])}</td><td>{_num(p['fit_loss'])}</td>"
                f"<td class='roc_auc'>{_num(p['roc_auc'])}</td><td>{_num(p['eval_loss'])}</td>"
                f"<td class='epsilon'>{_num(p['dp_epsilon'], 3)}</td></tr>")
    partner_rows.append("</table>")
    body = (summary + "<h2>Curves</h2><p class='note'>Federated metrics are example-weighted means of each partner's "
            "metrics on its own local hold-out; a partner withholds a metric below its minimum count.</p>"
            f"<div class='charts'>{charts}</div><h2>Rounds</h2>{''.join(table)}<h2>Per partner</h2>"
            f"{''.join(partner_rows)}" + (lineage_section(lineage) if lineage else ""))
    return page(f"Run {run['run_id']}", body)


def lineage_section(lineage: dict[str, Any]) -> str:
    """What the final model is made of."""
    model = lineage["model"]
    heads = "".join(
        f"<tr data-partner='{_e(h['partner'])}'><td>{_e(h['partner'])}</td><td>{h['round']}</td><td>{_e(h['stage'])}</td>"
        f"<td>{_e(h['origin'])}</td><td class='tree-size'>{_e(h['tree_size'])}</td><td><code>{_e(h['root_hash'])}</code></td></tr>"
        for h in lineage["ledger_heads"])
    privacy = lineage["privacy"]
    dp = ("<p>Differential privacy: " + ", ".join(
        f"partner {_e(p)} ε = {v['epsilon']:.3f} (δ = {v['delta']}) as of round {v['as_of_round']}"
        for p, v in sorted(privacy["partners"].items())) + "</p>") if privacy["differential_privacy"] else (
        "<p>Differential privacy: not used by any partner for this model.</p>")
    return (
        f"<h2 id='lineage'>Lineage of {_e(model['model_id'])}</h2>"
        f"<table><tr><th>model file</th><td><code>{_e(model['file'])}</code> sha256 <code>{_e(model['sha256'])}</code></td></tr>"
        f"<tr><th>stage</th><td class='stage'>{_e(model['stage'])}</td></tr>"
        f"<tr><th>from round</th><td>{_e(model['round'])}</td></tr>"
        f"<tr><th>partners</th><td class='partners'>{_e(', '.join(lineage['partners']))}</td></tr>"
        f"<tr><th>rounds</th><td>{_e(', '.join(str(r['round']) for r in lineage['rounds']))}</td></tr>"
        f"<tr><th>task schema</th><td>{_e(lineage['task']['name'])} <code>{_e(lineage['task']['schema_sha256'])}</code></td></tr>"
        "</table><h3>Consent-ledger heads (the last each partner signed up to that round)</h3>"
        "<table id='heads'><tr><th>partner</th><th>round</th><th>stage</th><th>origin</th><th>tree size</th>"
        f"<th>root hash</th></tr>{heads}</table>{dp}"
    )


def partners_page(partners: list[dict[str, Any]], summaries: dict[str, dict[str, Any]], min_count: int) -> str:
    """Every partner: status, participation, and aggregate data and consent summaries (≥ min count only)."""

    def count(value: int | None) -> str:
        if value is None:
            return "—"
        return str(value) if value >= min_count else f"withheld (&lt; {min_count})"

    rows = []
    for p in partners:
        s = summaries.get(p["partner"], {})
        rows.append(
            f"<tr data-partner='{_e(p['partner'])}'><td>{_e(p['partner'])}</td>"
            f"<td class='connected'>{'yes' if p['connected'] else 'no'}</td><td>{_time(p['last_seen'])}</td>"
            f"<td class='runs'>{len(p['runs'])}</td><td class='rounds-taken'>{p['rounds_taken_part']}</td>"
            f"<td class='dropouts'>{p['dropouts']}</td><td class='trained-on'>{count(s.get('fit_examples'))}</td>"
            f"<td class='holdout'>{count(s.get('eval_examples'))}</td>"
            f"<td class='ledger-size'>{_e(s.get('ledger_size'))}</td><td>{_e(s.get('ledger_growth'))}</td>"
            f"<td>{_e(s.get('consent_as_of'))}</td></tr>")
    body = (
        "<p class='note'>Customer counts are what each partner's consent gate kept for the task in its latest round "
        f"(aggregates only; below {min_count} shown as withheld). The ledger size is the partner's signed consent-log "
        "size; growth is over that run.</p>"
        "<table id='partners'><tr><th>partner</th><th>connected</th><th>last seen</th><th>runs</th>"
        "<th>rounds taken part in</th><th>dropouts</th><th>customers trained on</th><th>customers in hold-out</th>"
        "<th>consent-ledger size</th><th>ledger growth</th><th>consent as of</th></tr>" + "".join(rows) + "</table>")
    return page("Partners", body)


def models_page(models: list[dict[str, Any]]) -> str:
    """Final models with their stage."""
    rows = "".join(
        f"<tr data-model='{_e(m['model_id'])}'><td><a href='/dashboard/runs/{_e(m['run_id'])}#lineage'>{_e(m['model_id'])}</a></td>"
        f"<td class='stage'>{_e(m['stage'])}</td><td>{_e(m['task_name'])}</td><td>{_e(m['round'])}</td>"
        f"<td>{_num(m['federated'].get('roc_auc'))}</td><td>{_num(m['federated_loss'])}</td>"
        f"<td><code>{_e(m['sha256'][:16])}…</code></td></tr>" for m in models)
    body = ("<table id='models'><tr><th>model</th><th>stage</th><th>task</th><th>round</th>"
            "<th>ROC AUC (local hold-outs)</th><th>validation loss</th><th>sha256</th></tr>" + rows + "</table>")
    return page("Models", body)


def login_page(error: str | None = None) -> str:
    """Sign in with an operator or viewer token (kept in an HttpOnly, SameSite=Strict cookie)."""
    message = f"<p style='color:#b3261e'>{_e(error)}</p>" if error else ""
    return page("Sign in", message + "<form method='post' action='/login'><label>Token "
                "<input type='password' name='token' autocomplete='off' size='60'></label> "
                "<button type='submit'>Sign in</button></form>")
