"""Run the local analytics on a partner's data and export them under the minimum-count rule.

Two outputs with different audiences:

- the **summary** (``summary.json`` and ``report.html``): counts and means over groups of
  customers ("cells": a lifecycle stage, an RFM segment, a k-means segment, a frequency
  or health bucket) and population-level model parameters. Any cell over fewer distinct
  customers than ``min_count`` is withheld entirely — not zeroed, not merged into
  another — and the withholding is logged with the cell's name but never its count.
  Because each partition's total is published, one withheld cell could be recovered as
  total − the others; so while a partition's withheld cells are a single cell or add up
  to fewer than ``min_count`` customers, the next-smallest cell is withheld as well
  (complementary suppression, the standard fix in statistical disclosure control).
- the **per-customer table** (``customers.csv``), keyed by the partner's own customer
  column: scores for the partner's own use, never meant to leave the premises.
"""

from __future__ import annotations

from collections.abc import Sequence

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcrm.client.analytics import clv as clv_mod
from fedcrm.client.analytics.health import HealthWeights, health_components, health_from_columns, health_score
from fedcrm.client.analytics.lifecycle import STAGES, LifecycleThresholds, expected_gap_days, lifecycle_stages
from fedcrm.client.analytics.render import render_html
from fedcrm.client.consented import ensure_consented
from fedcrm.client.disclosure import suppress
from fedcrm.client.analytics.rfm import SEGMENT_NAMES, rfm_scores
from fedcrm.client.analytics.segments import FeatureText, kmeans_segments, prepare_features, profile_segments
from fedcrm.consent.gate import ConsentedView
from fedcrm.client.transactions import TimeUnit, recent_purchase_days, summarise_transactions, to_day
from fedcrm.errors import AnalyticsError, MinimumCountNotMet, ModelFitError
from fedcrm.logging import get_logger
from fedcrm.protocol import DEFAULT_MIN_COUNT

log = get_logger("fedcrm.client.analytics")

#: How profiles describe the transaction features the segmentation uses.
TRANSACTION_TEXTS: dict[str, FeatureText] = {
    "purchase_days": FeatureText(high="buys often", low="buys rarely", unit="purchase days"),
    "days_since_last": FeatureText(high="has not bought for a while", low="bought recently", unit="days since last purchase"),
    "average_spend": FeatureText(high="spends more per visit", low="spends less per visit", unit="per purchase day"),
    "total_spend": FeatureText(high="high total spend", low="low total spend", unit="in total"),
}
SEGMENT_FEATURES = list(TRANSACTION_TEXTS)
HEALTH_BANDS = (("0-20", 0, 20), ("20-40", 20, 40), ("40-60", 40, 60), ("60-80", 60, 80), ("80-100", 80, 100.01))
SUMMARY_KIND = "fedcrm.analytics.summary"


@dataclass
class AnalyticsResult:
    """Per-customer scores (partner-only) and the exportable summary."""

    per_customer: pd.DataFrame
    summary: dict[str, Any]
    charts: dict[str, str] = field(default_factory=dict)


def analyse_transactions(
    view: ConsentedView,
    *,
    customer: str,
    date: str,
    amount: str,
    quantity: str | None = None,
    observation_end: object,
    time_unit: TimeUnit = "D",
    min_count: int = DEFAULT_MIN_COUNT,
    n_segments: int | None = None,
    seed: int = 0,
    clv_months: int = 12,
    monthly_discount_rate: float = 0.01,
    lifecycle: LifecycleThresholds | None = None,
    health: HealthWeights | None = None,
) -> AnalyticsResult:
    """RFM, BG/NBD + Gamma-Gamma CLV, health, lifecycle and segments from transactions.

    ``frame`` has one row per purchase; the keyword names are the partner's columns.
    Raises ``MinimumCountNotMet`` when fewer than ``min_count`` customers bought by
    ``observation_end``. A model that cannot be fitted (too little repeat buying) is
    logged and its columns left empty rather than failing the whole run.
    """
    frame = ensure_consented(view, "analyse_transactions").frame
    lifecycle = lifecycle or LifecycleThresholds()
    health = health or HealthWeights()
    summ = summarise_transactions(
        frame, customer=customer, date=date, amount=amount, quantity=quantity,
        observation_end=observation_end, time_unit=time_unit,
    )
    _check_min_count(len(summ), min_count)
    out = summ.copy()
    models: dict[str, Any] = {}
    bg = _try_fit("BG/NBD", lambda: clv_mod.fit_bgnbd(summ["frequency"], summ["recency"], summ["T"], time_unit=time_unit))
    gg = None
    if bg is not None:
        models["bgnbd"] = bg.model_dump()
        args = (summ["frequency"], summ["recency"], summ["T"])
        out["p_alive"] = clv_mod.bgnbd_p_alive(bg, *args)
        horizon = 90.0 / (7.0 if time_unit == "W" else 1.0)
        out["expected_purchases_90d"] = clv_mod.bgnbd_conditional_expected_purchases(bg, horizon, *args)
        window = health.window_days / (7.0 if time_unit == "W" else 1.0)
        out["purchase_chance"] = clv_mod.bgnbd_probability_of_purchase(bg, window, *args)
        gg = _try_fit("Gamma-Gamma", lambda: clv_mod.fit_gamma_gamma(summ["frequency"], summ["monetary_value"]))
    if gg is not None and gg.customers >= min_count:
        models["gamma_gamma"] = gg.model_dump()
    if bg is not None and gg is not None:
        out["expected_spend"] = clv_mod.gamma_gamma_expected_spend(gg, summ["frequency"], summ["monetary_value"])
        out["clv"] = clv_mod.customer_lifetime_value(
            bg, gg, summ["frequency"], summ["recency"], summ["T"], summ["monetary_value"],
            months=clv_months, monthly_discount_rate=monthly_discount_rate,
        )
    out = out.join(rfm_scores(summ))
    out["lifecycle_stage"] = lifecycle_stages(summ, lifecycle)
    recent = recent_purchase_days(frame, customer=customer, date=date, observation_end=observation_end, window_days=health.window_days)
    comps = health_components(
        summ, expected_gap_days(summ, lifecycle), recent, window_days=health.window_days,
        purchase_chance=out["purchase_chance"] if "purchase_chance" in out else None,
    )
    out["health_score"] = health_score(comps, health)
    seg = kmeans_segments(prepare_features(summ, SEGMENT_FEATURES), k=n_segments, seed=seed)
    out["segment"] = seg.labels
    profiles = profile_segments(summ, seg.labels, numeric=SEGMENT_FEATURES, texts=TRANSACTION_TEXTS, min_count=min_count)
    context = {
        "source": "transactions",
        "observation_end": str(to_day(observation_end, name="observation_end").date()),
        "time_unit": time_unit,
        "clv_months": clv_months,
        "monthly_discount_rate": monthly_discount_rate,
        "lifecycle_thresholds": lifecycle.model_dump(),
        "health_weights": health.model_dump(),
        "segmentation": {"k": seg.k, "silhouette": seg.silhouette, "features": SEGMENT_FEATURES},
    }
    summary = analytics_summary(out, min_count=min_count, models=models, segment_profiles=profiles, context=context)
    return AnalyticsResult(per_customer=out, summary=summary)


def analyse_customers(
    view: ConsentedView,
    *,
    customer: str,
    numeric: list[str],
    categorical: Sequence[str] = (),
    health_higher: Sequence[str] = (),
    health_lower: Sequence[str] = (),
    min_count: int = DEFAULT_MIN_COUNT,
    n_segments: int | None = None,
    seed: int = 0,
) -> AnalyticsResult:
    """Segments (and a health score when health columns are named) from a customer-level export."""
    frame = ensure_consented(view, "analyse_customers").frame
    if customer not in frame.columns:
        raise AnalyticsError(f"customer column '{customer}' not in the data; it has {list(map(str, frame.columns))}")
    ids = frame[customer]
    if ids.isna().any() or ids.duplicated().any():
        pos = int(np.flatnonzero((ids.isna() | ids.duplicated()).to_numpy())[0])
        raise AnalyticsError(f"column '{customer}', row {frame.index[pos]!r}: customer id empty or repeated")
    data = frame.set_index(ids.astype(str).rename(customer)).drop(columns=[customer])
    _check_min_count(len(data), min_count)
    out = data[[*numeric, *categorical]].copy()
    if health_higher or health_lower:
        out["health_score"] = health_from_columns(data, higher_is_better=list(health_higher), lower_is_better=list(health_lower))
    seg = kmeans_segments(prepare_features(data, list(numeric), list(categorical)), k=n_segments, seed=seed)
    out["segment"] = seg.labels
    nums = data[list(numeric)].apply(pd.to_numeric, errors="coerce")
    profiles = profile_segments(
        pd.concat([nums, data[list(categorical)]], axis=1), seg.labels,
        numeric=list(numeric), categorical=list(categorical), min_count=min_count,
    )
    context = {
        "source": "customers",
        "health_columns": {"higher_is_better": list(health_higher), "lower_is_better": list(health_lower)},
        "segmentation": {"k": seg.k, "silhouette": seg.silhouette, "features": [*numeric, *categorical]},
    }
    summary = analytics_summary(out, min_count=min_count, models={}, segment_profiles=profiles, context=context)
    return AnalyticsResult(per_customer=out, summary=summary)


def analytics_summary(
    per_customer: pd.DataFrame,
    *,
    min_count: int = DEFAULT_MIN_COUNT,
    models: dict[str, Any] | None = None,
    segment_profiles: list[dict[str, Any]] | None = None,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The exportable summary: cells per partition, each over at least ``min_count`` customers."""
    _check_min_count(len(per_customer), min_count)
    pc = per_customer
    partitions: dict[str, list[dict[str, Any]]] = {}
    if "lifecycle_stage" in pc:
        partitions["lifecycle_stage"] = _cells(pc, pc["lifecycle_stage"], STAGES)
    if "rfm_segment" in pc:
        partitions["rfm_segment"] = _cells(pc, pc["rfm_segment"], SEGMENT_NAMES)
        for score in ("r_score", "f_score", "m_score"):
            partitions[score] = _cells(pc, pc[score].astype(str), [str(i) for i in range(1, 6)])
    if "frequency" in pc:
        bucket = pc["frequency"].clip(upper=7).astype(int).astype(str).replace("7", "7+")
        partitions["repeat_purchase_days"] = _cells(pc, bucket, [*map(str, range(7)), "7+"])
    if "health_score" in pc:
        band = pd.Series(pd.NA, index=pc.index, dtype="string")
        for name, lo, hi in HEALTH_BANDS:
            band[(pc["health_score"] >= lo) & (pc["health_score"] < hi)] = name
        partitions["health_band"] = _cells(pc, band, [b[0] for b in HEALTH_BANDS])
    if "segment" in pc:
        by_seg = {p["segment"]: p for p in segment_profiles or []}
        names = pc["segment"].map(lambda s: f"Segment {s}")
        cells = _cells(pc, names, [f"Segment {s}" for s in sorted(pc["segment"].unique())])
        for cell in cells:
            prof = by_seg.get(int(cell["cell"].split()[-1]), {})
            cell.update({k: prof[k] for k in ("description", "means") if k in prof})
        partitions["segment"] = cells
    withheld = 0
    for name, cells in partitions.items():
        partitions[name], dropped = withhold_small_cells(cells, min_count=min_count, partition=name)
        withheld += dropped
    return _clean(
        {
            "kind": SUMMARY_KIND,
            "version": 1,
            "min_count": min_count,
            "customers": int(len(pc)),
            **(context or {}),
            "models": models or {},
            "partitions": partitions,
            "withheld_cells": withheld,
        }
    )


def withhold_small_cells(
    cells: list[dict[str, Any]], *, min_count: int, partition: str
) -> tuple[list[dict[str, Any]], int]:
    """Drop cells under ``min_count`` customers, plus complementary cells; log names only."""
    counts = {str(c["cell"]): int(c["customers"]) for c in cells}
    published, withheld = suppress(counts, min_count=min_count)
    for name in withheld:
        reason = "fewer customers than the minimum count" if counts[name] < min_count else "protects another withheld cell"
        log.info("withheld cell '%s' of '%s': %s", name, partition, reason)
    keep = {name for name in published if counts[name] > 0}  # empty cells are not reported at all
    return [c for c in cells if str(c["cell"]) in keep], len(withheld)


def write_analytics(result: AnalyticsResult, out_dir: Path | str) -> list[Path]:
    """Write ``summary.json``, ``report.html`` and the partner-only ``customers.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(result.summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(render_html(result.summary), encoding="utf-8")
    csv_path = out / "customers.csv"
    result.per_customer.to_csv(csv_path, index=True, date_format="%Y-%m-%d", float_format="%.6g")
    return [summary_path, html_path, csv_path]


# --- helpers ---------------------------------------------------------------------------

_CELL_MEANS = ("health_score", "p_alive", "clv", "total_spend", "purchase_days", "days_since_last")


def _cells(pc: pd.DataFrame, key: pd.Series, order: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    cells = []
    for name in order:
        members = pc[(key == name).fillna(False).astype(bool).to_numpy()]
        if members.empty:
            continue
        cell: dict[str, Any] = {"cell": name, "customers": int(len(members))}
        for col in _CELL_MEANS:
            if col in members and members[col].notna().any():
                cell[f"mean_{col}"] = float(members[col].mean())
        cells.append(cell)
    return cells


def _check_min_count(n: int, min_count: int) -> None:
    if min_count < 1:
        raise AnalyticsError(f"min_count must be at least 1, got {min_count}")
    if n < min_count:
        raise MinimumCountNotMet(f"analytics need at least {min_count} distinct customers; the data has fewer")


def _try_fit(name: str, fit: Any) -> Any:
    try:
        return fit()
    except ModelFitError as exc:
        log.warning("%s model not fitted: %s", name, exc)
        return None


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, numpy scalars → Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value
