"""Local CRM analytics: RFM, lifetime value, health, lifecycle, segments.

Everything here runs on the partner's premises on the partner's (consented) data.
``analyse_transactions`` / ``analyse_customers`` are the entry points; ``write_analytics``
writes the min-count-safe summary (JSON + HTML) and the partner-only per-customer table.
"""

from fedcrm.client.analytics.clv import (
    BGNBDFit,
    GammaGammaFit,
    bgnbd_conditional_expected_purchases,
    bgnbd_expected_purchases,
    bgnbd_log_likelihood,
    bgnbd_p_alive,
    bgnbd_probability_of_purchase,
    customer_lifetime_value,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_expected_spend,
    gamma_gamma_log_likelihood,
    holdout_comparison,
)
from fedcrm.client.analytics.health import HealthWeights, health_components, health_from_columns, health_score
from fedcrm.client.analytics.lifecycle import STAGES, LifecycleThresholds, expected_gap_days, lifecycle_stages
from fedcrm.client.analytics.report import (
    AnalyticsResult,
    analyse_customers,
    analyse_transactions,
    analytics_summary,
    withhold_small_cells,
    write_analytics,
)
from fedcrm.client.analytics.rfm import SEGMENT_MAP, SEGMENT_NAMES, rfm_scores
from fedcrm.client.analytics.segments import (
    FeatureText,
    Segmentation,
    kmeans_segments,
    prepare_features,
    profile_segments,
)

__all__ = [
    "STAGES",
    "SEGMENT_MAP",
    "SEGMENT_NAMES",
    "AnalyticsResult",
    "BGNBDFit",
    "FeatureText",
    "GammaGammaFit",
    "HealthWeights",
    "LifecycleThresholds",
    "Segmentation",
    "analyse_customers",
    "analyse_transactions",
    "analytics_summary",
    "bgnbd_conditional_expected_purchases",
    "bgnbd_expected_purchases",
    "bgnbd_log_likelihood",
    "bgnbd_p_alive",
    "bgnbd_probability_of_purchase",
    "customer_lifetime_value",
    "expected_gap_days",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "gamma_gamma_expected_spend",
    "gamma_gamma_log_likelihood",
    "health_components",
    "health_from_columns",
    "health_score",
    "holdout_comparison",
    "kmeans_segments",
    "lifecycle_stages",
    "prepare_features",
    "profile_segments",
    "rfm_scores",
    "withhold_small_cells",
    "write_analytics",
]
