"""RFM scores and segments, lifecycle stages, health score and k-means segments."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from fedcrm.client.analytics import (
    FeatureText,
    HealthWeights,
    LifecycleThresholds,
    health_components,
    health_from_columns,
    health_score,
    kmeans_segments,
    lifecycle_stages,
    prepare_features,
    profile_segments,
    rfm_scores,
)
from fedcrm.client.analytics.rfm import segment_name
from fedcrm.errors import AnalyticsError

# --- RFM -------------------------------------------------------------------------------


def test_rfm_quintiles_with_recency_reversed() -> None:
    ids = [f"c{i:02d}" for i in range(10)]
    summary = pd.DataFrame(
        {"days_since_last": np.arange(10) * 10, "purchase_days": np.arange(10) + 1, "total_spend": np.arange(10)[::-1] * 5.0},
        index=pd.Index(ids, name="who"),
    )
    s = rfm_scores(summary)
    # Two customers per quintile; the most recent (0 days) gets R = 5.
    assert s["r_score"].tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert s["f_score"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert s["m_score"].tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert s.loc["c00", "rfm_code"] == "515"
    assert s.loc["c00", "rfm_segment"] == "new" and s.loc["c09", "rfm_segment"] == "cannot lose"


def test_rfm_ties_are_broken_by_customer_id_whatever_the_row_order() -> None:
    summary = pd.DataFrame(
        {"days_since_last": [7] * 10, "purchase_days": [1] * 10, "total_spend": [20.0] * 10},
        index=pd.Index([f"id{i}" for i in range(10)], name="who"),
    )
    forward = rfm_scores(summary)
    shuffled = rfm_scores(summary.sample(frac=1, random_state=4))
    pd.testing.assert_frame_equal(forward, shuffled.loc[forward.index])
    # Equal values still fill the five scores evenly (rank "first").
    assert sorted(forward["f_score"].value_counts().tolist()) == [2, 2, 2, 2, 2]


def test_segment_map_names_every_r_and_f_pair() -> None:
    names = {segment_name(r, f) for r in range(1, 6) for f in range(1, 6)}
    assert len(names) == 10
    assert segment_name(5, 5) == "champions" and segment_name(1, 1) == "hibernating"
    assert segment_name(2, 4) == "at risk" and segment_name(4, 1) == "promising"
    with pytest.raises(AnalyticsError):
        segment_name(0, 3)


def test_rfm_other_bin_counts_give_scores_only() -> None:
    summary = pd.DataFrame({"days_since_last": [1, 2, 3, 4], "purchase_days": [1, 2, 3, 4], "total_spend": [1.0, 2, 3, 4]})
    s = rfm_scores(summary, bins=4)
    assert "rfm_segment" not in s and s["f_score"].tolist() == [1, 2, 3, 4]


def test_rfm_names_missing_columns() -> None:
    with pytest.raises(AnalyticsError, match="total_spend"):
        rfm_scores(pd.DataFrame({"days_since_last": [1], "purchase_days": [1]}))


# --- lifecycle -------------------------------------------------------------------------


def _lifecycle_frame() -> pd.DataFrame:
    rows = {
        "fresh": (30, 30, np.nan),
        "steady": (400, 40, 30.0),
        "slipping": (400, 70, 30.0),
        "gone": (400, 130, 30.0),
        "once_long_ago": (200, 200, np.nan),
        "burst": (400, 20, 1.0),
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=["days_since_first", "days_since_last", "mean_gap_days"])


def test_lifecycle_stages_follow_own_buying_rhythm() -> None:
    stages = lifecycle_stages(_lifecycle_frame())
    assert stages.to_dict() == {
        "fresh": "new",
        "steady": "active",  # 40 days ≤ 2 × 30
        "slipping": "at risk",  # 70 > 2 × 30
        "gone": "lapsed",  # 130 > 4 × 30
        "once_long_ago": "lapsed",  # no rhythm of its own: median of repeat buyers' gaps (30)
        "burst": "active",  # gap floored at 14 days: 20 ≤ 28
    }


def test_lifecycle_thresholds_are_configurable_and_validated() -> None:
    loose = LifecycleThresholds(at_risk_gap_multiple=3, lapsed_gap_multiple=5, default_gap_days=250)
    stages = lifecycle_stages(_lifecycle_frame(), loose)
    assert stages["slipping"] == "active" and stages["gone"] == "at risk" and stages["once_long_ago"] == "active"
    with pytest.raises(ValidationError, match="lapsed_gap_multiple"):
        LifecycleThresholds(at_risk_gap_multiple=4, lapsed_gap_multiple=3)


# --- health ----------------------------------------------------------------------------


def test_health_components_and_score() -> None:
    summary = pd.DataFrame(
        {"days_since_last": [0, 30, 300], "days_since_first": [359, 359, 359], "purchase_days": [4, 4, 4]},
        index=["now", "usual", "silent"],
    )
    gap = pd.Series(30.0, index=summary.index)
    recent = pd.Series({"now": 1, "usual": 1})  # "silent" bought nothing in the window
    comps = health_components(summary, gap, recent, window_days=90, purchase_chance=pd.Series({"now": 0.9, "usual": 0.8, "silent": 0.1}))
    assert comps.loc["now", "recency"] == 1.0 and comps.loc["usual", "recency"] == 0.5
    # 4 purchase days over 360 days predict 1 in 90 days; 1 seen → steady (0.5); 0 → 0.
    assert comps.loc["usual", "trend"] == pytest.approx(0.5) and comps.loc["silent", "trend"] == 0.0
    score = health_score(comps)
    assert score["now"] == pytest.approx(100 * (0.5 * 0.9 + 0.3 * 1.0 + 0.2 * 0.5), abs=0.05)
    assert score["now"] > score["usual"] > score["silent"] >= 0


def test_health_reweights_when_model_component_is_missing() -> None:
    comps = pd.DataFrame({"alive": [np.nan], "recency": [1.0], "trend": [0.5]})
    assert health_score(comps, HealthWeights())[0] == pytest.approx(100 * (0.3 + 0.2 * 0.5) / 0.5, abs=0.05)


def test_health_from_columns_ranks_and_reverses() -> None:
    frame = pd.DataFrame({"tenure": [1, 10, 50], "complaints": [5, 1, 0]})
    score = health_from_columns(frame, higher_is_better=["tenure"], lower_is_better=["complaints"])
    assert score.tolist() == sorted(score.tolist()) and score.iloc[-1] == 100.0
    with pytest.raises(AnalyticsError, match="nope"):
        health_from_columns(frame, higher_is_better=["nope"])


# --- segments --------------------------------------------------------------------------


def _blobs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    parts = [
        pd.DataFrame({"visits": rng.normal(m_v, 0.3, n), "basket": rng.normal(m_b, 2, n), "plan": plan})
        for n, m_v, m_b, plan in [(50, 1.5, 20, "basic"), (30, 6.0, 22, "basic"), (20, 2.0, 90, "premium")]
    ]
    frame = pd.concat(parts, ignore_index=True)
    frame.index = [f"k{i:03d}" for i in range(len(frame))]
    return frame


def test_silhouette_picks_three_blobs_numbered_by_size() -> None:
    frame = _blobs()
    seg = kmeans_segments(prepare_features(frame, ["visits", "basket"]), seed=1)
    assert seg.k == 3 and set(seg.silhouettes) == {2, 3, 4, 5, 6}
    assert seg.labels.value_counts().sort_index().tolist() == [50, 30, 20]
    assert (seg.labels.iloc[:50] == 1).all() and (seg.labels.iloc[80:] == 3).all()
    again = kmeans_segments(prepare_features(frame, ["visits", "basket"]), seed=1)
    pd.testing.assert_series_equal(seg.labels, again.labels)


def test_profiles_speak_plain_language() -> None:
    frame = _blobs()
    labels = kmeans_segments(prepare_features(frame, ["visits", "basket"], ["plan"]), k=3, seed=0).labels
    texts = {"visits": FeatureText(high="buys often", low="buys rarely", unit="purchase days")}
    profiles = profile_segments(frame, labels, numeric=["visits", "basket"], categorical=["plan"], texts=texts, min_count=10)
    by_size = {p["customers"]: p for p in profiles}
    assert by_size[30]["description"].startswith("Segment 2 (30 customers): buys often (6.0 purchase days vs")
    assert "higher basket" in by_size[20]["description"]
    assert "mostly plan = premium (100% vs 20% overall)" in by_size[20]["description"]
    # With a minimum of 25, the 20 premium customers are too few to be named as a trait.
    strict = profile_segments(frame, labels, numeric=["visits", "basket"], categorical=["plan"], min_count=25)
    assert all("premium" not in p["description"] for p in strict)


def test_skewed_columns_are_log_transformed_before_scaling() -> None:
    spend = pd.Series([1.0] * 20 + [10_000.0], name="spend")
    prepared = prepare_features(spend.to_frame(), ["spend"])
    expected = np.log1p(spend)
    expected = (expected - expected.mean()) / expected.std(ddof=0)
    np.testing.assert_allclose(prepared["spend"], expected)


def test_segmentation_errors_name_the_problem() -> None:
    with pytest.raises(AnalyticsError, match="lacks column"):
        prepare_features(pd.DataFrame({"a": [1, 2]}), ["b"])
    with pytest.raises(AnalyticsError, match="customer 1: missing"):
        prepare_features(pd.DataFrame({"a": [1.0, None, 3.0]}), ["a"])
    with pytest.raises(AnalyticsError, match="constant"):
        prepare_features(pd.DataFrame({"a": [1.0, 1.0]}), ["a"])
    with pytest.raises(AnalyticsError, match="segments of 3 customers"):
        kmeans_segments(pd.DataFrame({"a": [0.0, 1.0, 2.0]}), k=5)
