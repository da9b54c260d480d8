"""k-means customer segments with a plain-language profile of each.

Features are prepared so that k-means' Euclidean distance treats them fairly:
non-negative, right-skewed numeric columns (spend, counts; skewness > 1) are taken as
log(1 + value) first — otherwise a handful of big spenders become their own clusters and
everyone else one blob — then every column is standardised. Categorical columns are
one-hot encoded before standardising. k is the caller's, or the k in ``k_range`` with the
best silhouette (computed on a seeded sample of at most 5,000 customers to keep it fast).
Segments are numbered by size, largest first, so the same data gives the same numbering.

Profiles compare each segment with all customers in the units the partner knows
("4.1 purchase days vs 1.6 average"), naming the features where the segment differs
most (in standardised units, at least ``min_difference``).
"""

from __future__ import annotations

from collections.abc import Sequence

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

from fedcrm.errors import AnalyticsError


class FeatureText(BaseModel):
    """How a profile talks about one feature: phrases for high and low values, and a unit."""

    model_config = ConfigDict(frozen=True)

    high: str
    low: str
    unit: str = ""


@dataclass(frozen=True)
class Segmentation:
    """Segment number (1 = largest) per customer, the k used and its silhouette."""

    labels: pd.Series
    k: int
    silhouette: float | None
    silhouettes: dict[int, float]


def prepare_features(frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str] = ()) -> pd.DataFrame:
    """Log-transform skewed non-negative columns, one-hot categoricals, standardise all."""
    missing = [c for c in (*numeric, *categorical) if c not in frame.columns]
    if missing:
        raise AnalyticsError(f"segmentation input lacks column(s) {missing}")
    if not numeric and not categorical:
        raise AnalyticsError("segmentation needs at least one feature column")
    parts: list[pd.DataFrame] = []
    for col in numeric:
        values = pd.to_numeric(frame[col], errors="coerce").astype(float)
        if values.isna().any():
            bad = values.index[values.isna()][0]
            raise AnalyticsError(f"segmentation column '{col}', customer {bad!r}: missing or not a number")
        if values.min() >= 0 and values.skew() > 1:
            values = np.log1p(values)
        parts.append(values.to_frame(col))
    for col in categorical:
        parts.append(pd.get_dummies(frame[col].astype("string").fillna("(missing)"), prefix=col, prefix_sep="=", dtype=float))
    raw = pd.concat(parts, axis=1)
    # Constant columns carry no information and would divide by zero in the scaler.
    raw = raw.loc[:, raw.std(ddof=0) > 0]
    if raw.shape[1] == 0:
        raise AnalyticsError("every segmentation feature is constant: nothing to segment on")
    scaled = StandardScaler().fit_transform(raw.to_numpy())
    return pd.DataFrame(scaled, index=frame.index, columns=raw.columns)


def kmeans_segments(
    features: pd.DataFrame,
    *,
    k: int | None = None,
    k_range: range = range(2, 7),
    seed: int = 0,
    silhouette_sample: int = 5000,
) -> Segmentation:
    """Cluster prepared (standardised) features; k given or chosen by silhouette."""
    n = len(features)
    candidates = [k] if k is not None else [c for c in k_range if 2 <= c < n]
    if not candidates or candidates[0] < 1 or candidates[0] > n:
        raise AnalyticsError(f"cannot make {k if k is not None else list(k_range)} segments of {n} customers")
    X = features.to_numpy()
    best: tuple[float, int, np.ndarray] | None = None
    scores: dict[int, float] = {}
    for c in candidates:
        labels = KMeans(n_clusters=c, n_init=10, random_state=seed).fit_predict(X)
        score = _silhouette(X, labels, silhouette_sample, seed)
        if score is not None:
            scores[c] = score
        if best is None or (score is not None and score > best[0]):
            best = (score if score is not None else -np.inf, c, labels)
    assert best is not None
    _, chosen, labels = best
    # Renumber by size (largest = 1), ties by the smallest original label, for stable output.
    sizes = pd.Series(labels).value_counts()
    order = sorted(sizes.index, key=lambda lab: (-sizes[lab], lab))
    mapping = {lab: i + 1 for i, lab in enumerate(order)}
    series = pd.Series([mapping[lab] for lab in labels], index=features.index, name="segment")
    return Segmentation(labels=series, k=chosen, silhouette=scores.get(chosen), silhouettes=scores)


def profile_segments(
    frame: pd.DataFrame,
    labels: pd.Series,
    *,
    numeric: list[str],
    categorical: Sequence[str] = (),
    texts: dict[str, FeatureText] | None = None,
    min_count: int,
    max_traits: int = 3,
    min_difference: float = 0.25,
) -> list[dict[str, object]]:
    """One profile per segment: size, feature means vs all customers, and a sentence.

    Profiles of segments with fewer than ``min_count`` customers are still built (the
    report withholds them); a categorical trait is mentioned only when at least
    ``min_count`` customers of the segment have the value.
    """
    texts = texts or {}
    overall_mean = frame[numeric].mean()
    overall_std = frame[numeric].std(ddof=0).replace(0, np.nan)
    profiles = []
    for seg, members in frame.groupby(labels, sort=True):
        means = members[numeric].mean()
        diffs = ((means - overall_mean) / overall_std).dropna()
        traits: list[tuple[float, str]] = []
        for col, d in diffs.items():
            if abs(d) >= min_difference:
                text = texts.get(str(col), FeatureText(high=f"higher {col}", low=f"lower {col}"))
                unit = f" {text.unit}" if text.unit else ""
                phrase = text.high if d > 0 else text.low
                traits.append((abs(d), f"{phrase} ({_num(means[col])}{unit} vs {_num(overall_mean[col])} average)"))
        for col in categorical:
            share = members[col].astype("string").fillna("(missing)").value_counts()
            top, count = str(share.index[0]), int(share.iloc[0])
            seg_share = count / len(members)
            all_share = float((frame[col].astype("string").fillna("(missing)") == top).mean())
            if count >= min_count and seg_share - all_share >= 0.2:
                traits.append((2 * (seg_share - all_share), f"mostly {col} = {top} ({seg_share:.0%} vs {all_share:.0%} overall)"))
        traits.sort(key=lambda t: -t[0])
        said = ", ".join(t for _, t in traits[:max_traits]) or "close to the average customer on every feature"
        profiles.append(
            {
                "segment": int(seg),
                "name": f"Segment {int(seg)}",
                "customers": int(len(members)),
                "means": {str(c): float(v) for c, v in means.items()},
                "description": f"Segment {int(seg)} ({len(members):,} customers): {said}.",
            }
        )
    return profiles


def _silhouette(X: np.ndarray, labels: np.ndarray, sample: int, seed: int) -> float | None:
    if len(set(labels)) < 2:
        return None
    size = min(sample, len(X))
    return float(silhouette_score(X, labels, sample_size=size, random_state=seed))


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"
