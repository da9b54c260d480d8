"""Customer health score, 0 (gone) to 100 (thriving).

For transaction data the score is a weighted mean of three components, each in [0, 1]:

- **alive** — the BG/NBD chance that the customer buys at least once in the next
  ``window_days`` (P(alive) times the chance an active customer buys in the window).
  P(alive) alone would not do: BG/NBD lets customers drop out only after a repeat
  purchase, so everyone who bought once, however long ago, has P(alive) = 1.
- **recency** — 1 / (1 + days since last purchase / expected gap): 1 right after a
  purchase, 0.5 after one of the customer's usual gaps (see ``lifecycle.expected_gap_days``),
  falling towards 0 the longer they stay silent.
- **trend** — recent / (recent + expected): purchase days in the last ``window_days``
  against what the customer's long-run rate predicts for that window. 0.5 is steady,
  above is speeding up, below is slowing down.

Weights default to 0.5 / 0.3 / 0.2 (`HealthWeights`); a component that is not available
(no purchase chance when no model could be fitted) is left out and the others re-weighted.

For a customer-level export (no transactions) `health_from_columns` averages percentile
ranks of the columns the caller says are good when high (or when low).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from fedcrm.errors import AnalyticsError


class HealthWeights(BaseModel):
    """Weights of the health components (normalised to sum to one over those available)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alive: float = Field(0.5, ge=0)
    recency: float = Field(0.3, ge=0)
    trend: float = Field(0.2, ge=0)
    window_days: int = Field(90, ge=1, description="Length of the recent window of the trend component.")


def health_components(
    summary: pd.DataFrame,
    expected_gap: pd.Series,
    recent_days: pd.Series,
    *,
    window_days: int,
    purchase_chance: pd.Series | None = None,
) -> pd.DataFrame:
    """The three components per customer (``alive`` is NaN when ``purchase_chance`` is not given).

    ``summary`` needs ``days_since_last``, ``days_since_first`` and ``purchase_days``;
    ``recent_days`` is purchase days in the last ``window_days`` (missing = 0).
    """
    missing = [c for c in ("days_since_last", "days_since_first", "purchase_days") if c not in summary]
    if missing:
        raise AnalyticsError(f"health input lacks column(s) {missing}")
    idx = summary.index
    out = pd.DataFrame(index=idx)
    out["alive"] = purchase_chance.reindex(idx).astype(float) if purchase_chance is not None else np.nan
    out["recency"] = 1.0 / (1.0 + summary["days_since_last"] / expected_gap.reindex(idx))
    # Long-run rate over the customer's whole history, at least one window long so that a
    # brand-new customer's single purchase does not look like a surge.
    history = np.maximum(summary["days_since_first"].astype(float) + 1.0, float(window_days))
    expected = summary["purchase_days"] * window_days / history
    recent = recent_days.reindex(idx).fillna(0).astype(float)
    out["trend"] = recent / (recent + expected)
    return out


def health_score(components: pd.DataFrame, weights: HealthWeights | None = None) -> pd.Series:
    """Weighted 0–100 score from `health_components`; missing components are re-weighted."""
    w = weights or HealthWeights()
    names = ["alive", "recency", "trend"]
    vals = components[names].to_numpy(dtype=float)
    wts = np.array([w.alive, w.recency, w.trend])
    present = ~np.isnan(vals)
    denom = (present * wts).sum(axis=1)
    if np.any(denom <= 0):
        raise AnalyticsError("health score: every available component has weight 0")
    score = 100.0 * np.nansum(vals * wts, axis=1) / denom
    return pd.Series(np.round(score, 1), index=components.index, name="health_score")


def health_from_columns(
    frame: pd.DataFrame, *, higher_is_better: Sequence[str] = (), lower_is_better: Sequence[str] = ()
) -> pd.Series:
    """0–100 score as the mean percentile rank of the named columns (customer-level data).

    Each column is ranked among customers (ties averaged); columns where lower is better
    are reversed. Missing values count as the median (0.5).
    """
    cols = [*higher_is_better, *lower_is_better]
    if not cols:
        raise AnalyticsError("health_from_columns needs at least one column to rank")
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise AnalyticsError(f"health input lacks column(s) {missing}")
    parts = []
    for col in cols:
        values = pd.to_numeric(frame[col], errors="coerce")
        pct = values.rank(pct=True, method="average")
        pct = 1.0 - pct + 1.0 / values.notna().sum() if col in lower_is_better else pct
        parts.append(pct.fillna(0.5))
    score = 100.0 * pd.concat(parts, axis=1).mean(axis=1)
    return score.round(1).rename("health_score")
