"""Lifecycle stage per customer: new, active, at risk, lapsed.

A customer is judged against their *own* buying rhythm, not one calendar cut-off for
everyone: someone who buys weekly is at risk after a few silent weeks, someone who buys
twice a year is not. The rules, first match wins:

1. **new** — first purchase at most ``new_days`` ago (too little history to judge).
2. **lapsed** — days since the last purchase > ``lapsed_gap_multiple`` × expected gap.
3. **at risk** — days since the last purchase > ``at_risk_gap_multiple`` × expected gap.
4. **active** — everyone else.

The expected gap is the customer's mean days between purchase days; for a customer with
a single purchase day it is the median of that over the repeat buyers (or
``default_gap_days`` when set). It is never below ``min_gap_days``, so two purchases on
consecutive days do not make a customer "at risk" two days later.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedcrm.errors import AnalyticsError

STAGES: tuple[str, ...] = ("new", "active", "at risk", "lapsed")


class LifecycleThresholds(BaseModel):
    """Thresholds of the lifecycle rules (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    new_days: int = Field(90, ge=0, description="First purchase at most this many days ago → new.")
    at_risk_gap_multiple: float = Field(2.0, gt=0, description="Silent for more than this many expected gaps → at risk.")
    lapsed_gap_multiple: float = Field(4.0, gt=0, description="Silent for more than this many expected gaps → lapsed.")
    min_gap_days: float = Field(14.0, gt=0, description="Floor on the expected gap, in days.")
    default_gap_days: float | None = Field(
        None, gt=0, description="Expected gap for single-purchase customers; default: median gap of repeat buyers."
    )

    @model_validator(mode="after")
    def _lapsed_after_at_risk(self) -> LifecycleThresholds:
        if self.lapsed_gap_multiple <= self.at_risk_gap_multiple:
            raise ValueError("lapsed_gap_multiple must be greater than at_risk_gap_multiple")
        return self


def expected_gap_days(summary: pd.DataFrame, thresholds: LifecycleThresholds | None = None) -> pd.Series:
    """Each customer's expected days between purchases (own mean, else the population's)."""
    th = thresholds or LifecycleThresholds()
    _require(summary, ["mean_gap_days"])
    own = summary["mean_gap_days"].astype(float)
    fallback = th.default_gap_days
    if fallback is None:
        repeat = own.dropna()
        # With no repeat buyer at all there is no rhythm to learn from: use the new-customer window.
        fallback = float(repeat.median()) if len(repeat) else float(max(th.new_days, th.min_gap_days))
    return own.fillna(fallback).clip(lower=th.min_gap_days).rename("expected_gap_days")


def lifecycle_stages(summary: pd.DataFrame, thresholds: LifecycleThresholds | None = None) -> pd.Series:
    """Stage per customer from ``days_since_first``, ``days_since_last`` and ``mean_gap_days``."""
    th = thresholds or LifecycleThresholds()
    _require(summary, ["days_since_first", "days_since_last", "mean_gap_days"])
    gap = expected_gap_days(summary, th)
    silent = summary["days_since_last"].astype(float)
    conditions = [
        summary["days_since_first"].to_numpy() <= th.new_days,
        (silent > th.lapsed_gap_multiple * gap).to_numpy(),
        (silent > th.at_risk_gap_multiple * gap).to_numpy(),
    ]
    stage = np.select(conditions, ["new", "lapsed", "at risk"], default="active")
    return pd.Series(stage, index=summary.index, name="lifecycle_stage")


def _require(summary: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in summary.columns]
    if missing:
        raise AnalyticsError(f"lifecycle input lacks column(s) {missing} (use summarise_transactions)")
