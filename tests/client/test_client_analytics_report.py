"""The exported analytics summary follows the minimum-count rule; per-customer scores stay apart."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.consented import consented_view

from fedcrm.client.analytics import (
    analyse_customers,
    analyse_transactions,
    analytics_summary,
    withhold_small_cells,
    write_analytics,
)
from fedcrm.errors import MinimumCountNotMet

DATA = Path(__file__).resolve().parents[2] / "datasets"
LOGGER = "fedcrm.client.analytics"


def _per_customer(sizes: dict[int, int]) -> pd.DataFrame:
    labels = [seg for seg, n in sizes.items() for _ in range(n)]
    return pd.DataFrame({"segment": labels}, index=[f"p{i:03d}" for i in range(len(labels))])


def test_segment_of_three_customers_is_withheld_and_logged_by_name_only(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        summary = analytics_summary(_per_customer({1: 40, 2: 3, 4: 20, 5: 30}), min_count=10)
    shown = [c["cell"] for c in summary["partitions"]["segment"]]
    assert "Segment 2" not in shown
    assert "Segment 2" not in json.dumps(summary)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("Segment 2" in m for m in messages)
    assert not any("3" in m for m in messages), messages
    # The total (93) is published: Segment 2 alone would be 93 − 90 = 3. The next-smallest
    # cell (Segment 4, 20 customers) is withheld with it; the rest is published unchanged.
    assert shown == ["Segment 1", "Segment 5"]
    assert [c["customers"] for c in summary["partitions"]["segment"]] == [40, 30]
    assert summary["withheld_cells"] == 2 and summary["customers"] == 93


def test_withheld_cells_are_not_zeroed_or_merged() -> None:
    cells = [{"cell": "a", "customers": 50}, {"cell": "b", "customers": 40}, {"cell": "c", "customers": 5}, {"cell": "d", "customers": 6}]
    visible, withheld = withhold_small_cells(cells, min_count=10, partition="x")
    # Two small cells adding up to 11 ≥ 10: neither can be recovered, nothing more is withheld.
    assert visible == cells[:2] and withheld == 2
    visible, withheld = withhold_small_cells(cells[:3], min_count=10, partition="x")
    assert visible == [{"cell": "a", "customers": 50}] and withheld == 2
    visible, withheld = withhold_small_cells(cells[:2], min_count=10, partition="x")
    assert visible == cells[:2] and withheld == 0


def test_fewer_customers_than_the_minimum_exports_nothing() -> None:
    with pytest.raises(MinimumCountNotMet):
        analytics_summary(_per_customer({1: 9}), min_count=10)


def test_customer_export_with_tiny_cluster_keeps_it_out_of_every_output(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        {
            "subject": [f"m{i}" for i in range(63)],
            "months": np.r_[rng.normal(5, 1, 35), rng.normal(40, 1, 25), [400, 410, 420]],
            "fee": np.r_[rng.normal(20, 1, 35), rng.normal(80, 1, 25), [900, 905, 910]],
        }
    )
    with caplog.at_level(logging.INFO, logger=LOGGER):
        view = consented_view(frame, tmp_path, {"months": "user.behavior.service_subscription",
                                                "fee": "user.financial.billing"})
        result = analyse_customers(view, customer="subject", numeric=["months", "fee"], health_higher=["months"],
                                   n_segments=3)
    assert result.per_customer["segment"].value_counts().min() == 3
    # The 3 are withheld, and the 25 with them so that the 3 cannot be recovered from the total.
    assert [c["cell"] for c in result.summary["partitions"]["segment"]] == ["Segment 1"]
    paths = write_analytics(result, tmp_path)
    assert [p.name for p in paths] == ["summary.json", "report.html", "customers.csv"]
    exported = (tmp_path / "summary.json").read_text() + (tmp_path / "report.html").read_text()
    assert "Segment 3" not in exported
    assert "Segment 3" in " ".join(r.getMessage() for r in caplog.records)
    customers = pd.read_csv(tmp_path / "customers.csv")
    assert customers.columns[0] == "subject" and len(customers) == 63


def test_transaction_analytics_on_cdnow_sample(tmp_path: Path) -> None:
    names = ["master_id", "subject", "date", "number_of_cds", "dollar_value"]
    tx = pd.read_csv(DATA / "cdnow_sample.txt", sep=r"\s+", header=None, names=names, dtype={"subject": str, "date": str})
    view = consented_view(tx, tmp_path, {c: "user.behavior.purchase_history" for c in names[2:]})
    result = analyse_transactions(
        view, customer="subject", date="date", amount="dollar_value", quantity="number_of_cds",
        observation_end="1997-09-30", time_unit="W", n_segments=4,
    )
    s = result.summary
    assert s["customers"] == 2357 and s["models"]["bgnbd"]["r"] == pytest.approx(0.243, rel=0.01)
    assert {"lifecycle_stage", "rfm_segment", "segment", "health_band", "repeat_purchase_days"} <= set(s["partitions"])
    for cells in s["partitions"].values():
        assert all(c["customers"] >= 10 for c in cells)
    assert sum(c["customers"] for c in s["partitions"]["r_score"]) == 2357
    pc = result.per_customer
    assert pc.index.name == "subject" and pc["health_score"].between(0, 100).all()
    assert {"clv", "p_alive", "purchase_chance", "rfm_segment", "lifecycle_stage", "segment"} <= set(pc.columns)
    write_analytics(result, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    json.loads((tmp_path / "summary.json").read_text())  # strict JSON: no NaN
    assert "NaN" not in (tmp_path / "summary.json").read_text()
