"""RFM scoring: recency, frequency and monetary quintile scores and a named segment.

Each of R, F and M is scored 1..``bins`` (default 5) by rank: customers are ordered by
the value (recency reversed: fewer days since the last purchase scores higher), ties
broken by the customer id so the same data always gets the same scores, and the i-th
of n customers gets score ⌈i·bins/n⌉ — equal-sized groups even when many customers share
a value (on CDNOW most customers have exactly one purchase day; value-based quantile
edges would put them all in one score).

The segment name comes from the R and F scores through the widely used R×F segment map
(`SEGMENT_MAP`, first matching row wins; every one of the 25 R×F cells is covered). The
M score is reported beside it but does not change the name.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fedcrm.errors import AnalyticsError

#: (segment, R scores, F scores): the R×F map, read top to bottom, first match wins.
SEGMENT_MAP: tuple[tuple[str, frozenset[int], frozenset[int]], ...] = (
    ("champions", frozenset({5}), frozenset({4, 5})),
    ("loyal", frozenset({3, 4}), frozenset({4, 5})),
    ("potential loyalist", frozenset({4, 5}), frozenset({2, 3})),
    ("new", frozenset({5}), frozenset({1})),
    ("promising", frozenset({4}), frozenset({1})),
    ("needs attention", frozenset({3}), frozenset({3})),
    ("about to sleep", frozenset({3}), frozenset({1, 2})),
    ("cannot lose", frozenset({1, 2}), frozenset({5})),
    ("at risk", frozenset({1, 2}), frozenset({3, 4})),
    ("hibernating", frozenset({1, 2}), frozenset({1, 2})),
)

#: Segment names in map order (for reports).
SEGMENT_NAMES: tuple[str, ...] = tuple(name for name, _, _ in SEGMENT_MAP)


def rank_scores(values: pd.Series, *, bins: int = 5, higher_is_better: bool = True) -> pd.Series:
    """Scores 1..bins by rank; ties broken by index order after sorting the index."""
    if bins < 2:
        raise AnalyticsError(f"RFM needs at least 2 score bins, got {bins}")
    if values.isna().any():
        raise AnalyticsError(f"RFM input '{values.name}' has missing values")
    ordered = values.sort_index(kind="stable")
    key = ordered if higher_is_better else -ordered
    rank = key.rank(method="first").to_numpy()
    n = len(ordered)
    scores = np.ceil(rank * bins / n).astype(np.int64)
    return pd.Series(scores, index=ordered.index, name=values.name).reindex(values.index)


def segment_name(r_score: int, f_score: int) -> str:
    """The R×F map's segment for one pair of 1..5 scores."""
    for name, rs, fs in SEGMENT_MAP:
        if r_score in rs and f_score in fs:
            return name
    raise AnalyticsError(f"no RFM segment for R={r_score}, F={f_score} (scores are 1..5)")


def rfm_scores(
    summary: pd.DataFrame,
    *,
    recency: str = "days_since_last",
    frequency: str = "purchase_days",
    monetary: str = "total_spend",
    bins: int = 5,
) -> pd.DataFrame:
    """R, F, M scores, the three-digit RFM code and the segment name for each customer.

    ``summary`` is one row per customer (e.g. from ``summarise_transactions``); the
    column parameters name its recency (days since last purchase), frequency and
    monetary columns. Segment names need ``bins == 5``; other bin counts get only scores.
    """
    missing = [c for c in (recency, frequency, monetary) if c not in summary.columns]
    if missing:
        raise AnalyticsError(f"RFM input lacks column(s) {missing}")
    if summary.empty:
        raise AnalyticsError("RFM needs at least one customer")
    out = pd.DataFrame(index=summary.index)
    out["r_score"] = rank_scores(summary[recency].rename("r"), bins=bins, higher_is_better=False)
    out["f_score"] = rank_scores(summary[frequency].rename("f"), bins=bins)
    out["m_score"] = rank_scores(summary[monetary].rename("m"), bins=bins)
    width = int(math.log10(bins)) + 1
    out["rfm_code"] = [f"{r:0{width}d}{f:0{width}d}{m:0{width}d}" for r, f, m in out.to_numpy()]
    if bins == 5:
        pairs = zip(out["r_score"], out["f_score"], strict=True)
        out["rfm_segment"] = [segment_name(int(r), int(f)) for r, f in pairs]
    return out
