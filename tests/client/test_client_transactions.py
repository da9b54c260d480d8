"""Per-customer summaries from hand-made transactions with known answers."""

from __future__ import annotations

import pandas as pd
import pytest

from fedcrm.client.transactions import holdout_summary, recent_purchase_days, summarise_transactions
from fedcrm.errors import DataValidationError


@pytest.fixture()
def tx() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cust": ["A", "A", "A", "A", "B", "B", "C"],
            "when": ["2024-01-01", "2024-01-01", "2024-01-11", "2024-01-31", "2024-02-01", "2024-02-01", "2024-03-01"],
            "paid": [10.0, 5.0, 20.0, 30.0, 7.0, 8.0, 99.0],
            "items": [1, 2, 1, 3, 1, 1, 9],
        }
    )


def summary(frame: pd.DataFrame, **kw: object) -> pd.DataFrame:
    opts = {"customer": "cust", "date": "when", "amount": "paid", "observation_end": "2024-02-10"} | kw
    return summarise_transactions(frame, **opts)  # type: ignore[arg-type]


def test_same_day_purchases_are_one_purchase_day(tx: pd.DataFrame) -> None:
    s = summary(tx, quantity="items")
    a = s.loc["A"]
    assert a["purchase_days"] == 3 and a["transactions"] == 4
    assert a["frequency"] == 2
    assert a["recency"] == 30 and a["T"] == 40
    # Mean over repeat days only (20 and 30); the first day's 15 is left out.
    assert a["monetary_value"] == 25
    assert a["total_spend"] == 65 and a["average_spend"] == pytest.approx(65 / 3)
    assert a["total_quantity"] == 7
    assert a["days_since_last"] == 10 and a["days_since_first"] == 40
    assert a["mean_gap_days"] == 15
    b = s.loc["B"]
    assert (b["frequency"], b["recency"], b["T"], b["monetary_value"]) == (0, 0, 9, 0)
    assert b["transactions"] == 2 and b["total_spend"] == 15
    assert pd.isna(b["mean_gap_days"])


def test_purchases_after_observation_end_are_ignored(tx: pd.DataFrame) -> None:
    s = summary(tx)
    assert list(s.index) == ["A", "B"]
    assert s.index.name == "cust"
    assert summary(tx, observation_end="2024-01-15").loc["A", "frequency"] == 1


def test_weeks_divide_days_by_seven(tx: pd.DataFrame) -> None:
    s = summary(tx, time_unit="W")
    assert s.loc["A", "T"] == pytest.approx(40 / 7)
    assert s.loc["A", "recency"] == pytest.approx(30 / 7)
    assert s.loc["A", "days_since_last"] == 10


def test_holdout_counts_purchase_days_of_the_calibration_cohort(tx: pd.DataFrame) -> None:
    h = holdout_summary(tx, "2024-01-20", "2024-02-10", customer="cust", date="when")
    # B and C first buy after calibration: not in the cohort.
    assert list(h.index) == ["A"]
    assert h.loc["A", "holdout_purchase_days"] == 1 and bool(h.loc["A", "holdout_any"])
    assert h.attrs["holdout_days"] == 21
    extra = pd.concat([tx, pd.DataFrame({"cust": ["D"], "when": ["2024-01-05"], "paid": [1.0], "items": [1]})])
    h2 = holdout_summary(extra, "2024-01-20", "2024-02-10", customer="cust", date="when")
    assert h2.loc["D", "holdout_purchase_days"] == 0 and not h2.loc["D", "holdout_any"]


def test_holdout_end_must_follow_calibration_end(tx: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError, match="not after calibration_end"):
        holdout_summary(tx, "2024-02-01", "2024-01-01", customer="cust", date="when")


def test_dates_as_yyyymmdd_numbers_and_tz_aware_datetimes_agree(tx: pd.DataFrame) -> None:
    as_int = tx.assign(when=tx["when"].str.replace("-", "").astype(int))
    as_tz = tx.assign(when=pd.to_datetime(tx["when"]).dt.tz_localize("Europe/Berlin"))
    expected = summary(tx)
    pd.testing.assert_frame_equal(summary(as_int), expected)
    pd.testing.assert_frame_equal(summary(as_tz), expected)


def test_recent_purchase_days_counts_distinct_days_in_window(tx: pd.DataFrame) -> None:
    counts = recent_purchase_days(tx, customer="cust", date="when", observation_end="2024-02-10", window_days=30)
    assert counts.to_dict() == {"A": 1, "B": 1}


def test_missing_column_is_named(tx: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError, match=r"\['spend'\]"):
        summarise_transactions(tx, customer="cust", date="when", amount="spend", observation_end="2024-02-10")


def test_bad_date_names_column_and_row(tx: pd.DataFrame) -> None:
    bad = tx.copy()
    bad.loc[4, "when"] = "yesterday"
    with pytest.raises(DataValidationError, match=r"column 'when', row 4: not a date.*'yesterday'"):
        summary(bad)


def test_bad_amount_names_column_and_row(tx: pd.DataFrame) -> None:
    bad = tx.astype({"paid": object})
    bad.loc[2, "paid"] = "twenty"
    with pytest.raises(DataValidationError, match=r"column 'paid', row 2: not a finite number"):
        summary(bad)


def test_empty_customer_id_is_rejected(tx: pd.DataFrame) -> None:
    bad = tx.copy()
    bad.loc[1, "cust"] = None
    with pytest.raises(DataValidationError, match=r"column 'cust', row 1: customer id is empty"):
        summary(bad)


def test_unknown_time_unit_is_rejected(tx: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError, match="time_unit 'M'"):
        summary(tx, time_unit="M")


def test_nothing_before_observation_end_is_an_error(tx: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError, match="no purchase on or before"):
        summary(tx, observation_end="2023-12-31")
