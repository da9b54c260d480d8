"""Transaction-level ingestion: purchases → one pseudonymised row per customer, all or nothing."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from fedcrm.client.config import load_partner_config
from fedcrm.client.ingest import ingest
from fedcrm.client.pseudonymise import create_key, load_key, pseudonymise
from fedcrm.client.transaction_ingest import DERIVED_LABEL, load_transactions
from fedcrm.errors import DataValidationError, RejectFractionExceeded

CONFIG = """
name = "shop"
[source]
path = "sales.csv"
level = "transaction"
delimiter = ";"
date_formats = ["%d.%m.%Y"]
chunk_rows = 3
max_reject_fraction = {max_reject}
[transactions]
date = "sold_on"
amount = "eur"
quantity = "items"
observation_end = 2024-03-31
label_window_end = 2024-06-30
category = "user.behavior.purchase_history"
[columns.client_no]
role = "customer_id"
category = "user.unique_id"
[columns.frequency]
role = "feature"
feature = "repeats"
type = "numeric"
category = "user.behavior.purchase_history"
[columns.total_spend]
role = "feature"
feature = "spend"
type = "numeric"
category = "user.behavior.purchase_history"
[columns.days_since_last]
role = "feature"
feature = "idle_days"
type = "numeric"
category = "user.behavior.purchase_history"
[columns.first_purchase_weekday]
role = "feature"
feature = "weekday"
type = "categorical"
value_map = {{ Mon = "monday" }}
category = "user.behavior.purchase_history"
[columns.{label}]
role = "label"
positive = ["true"]
category = "user.behavior.purchase_history"
"""

# c1: two purchase days before the observation date (three rows), buys again in the window.
# c2: one purchase day (a Tuesday), never again. c3: first buys after the observation date (not a customer yet).
ROWS = [
    ("client_no", "sold_on", "eur", "items"),
    ("c1", "01.01.2024", "10,5", "1"),
    ("c1", "01.01.2024", "4.5", "2"),
    ("c1", "15.03.2024", "20", "1"),
    ("c1", "02.05.2024", "7", "1"),
    ("c2", "06.02.2024", "30", "3"),
    ("c3", "10.04.2024", "12", "1"),
]


def _partner(tmp_path: Path, rows: list[tuple[str, ...]], *, max_reject: float = 0.0,
             label: str = DERIVED_LABEL) -> Path:
    with (tmp_path / "sales.csv").open("w", newline="") as handle:
        csv.writer(handle, delimiter=";").writerows(rows)
    config = tmp_path / "partner.toml"
    config.write_text(CONFIG.format(max_reject=max_reject, label=label))
    create_key(tmp_path / "partner.key")
    return config


def test_purchases_become_one_row_per_customer_for_the_observation_date(tmp_path: Path) -> None:
    rows = [r if r[2] != "10,5" else (r[0], r[1], "10.5", r[3]) for r in ROWS]
    config = load_partner_config(_partner(tmp_path, rows))
    report = ingest(config)  # dispatches on source.level
    assert report.rows_read == 6 and report.rows_kept == 6 and report.rows_rejected == 0
    customers = pd.read_parquet(config.work_path / "customers.parquet")
    key = load_key(config.key_path)
    by = customers.set_index("subject")
    c1, c2 = by.loc[pseudonymise("c1", key)], by.loc[pseudonymise("c2", key)]
    assert len(customers) == 2  # c3's first purchase is after the observation date
    assert (c1["repeats"], c1["spend"], c1["idle_days"], c1["label"]) == (1, 35.0, 16, 1)
    assert (c2["repeats"], c2["spend"], c2["idle_days"], c2["label"]) == (0, 30.0, 54, 0)
    assert c1["weekday"] == "monday"  # 2024-01-01 is a Monday, mapped by the config's value_map
    assert c2["weekday"] == "Tue"
    assert sorted(customers.columns) == sorted(["subject", "repeats", "spend", "idle_days", "weekday", "label"])
    id_map = pd.read_parquet(config.work_path / "id_map.parquet")
    assert set(id_map["customer_id"]) == {"c1", "c2"}
    tx = load_transactions(config)
    assert list(tx.columns) == ["subject", "date", "amount", "quantity"]
    assert len(tx) == 5 and set(tx["subject"]) == set(customers["subject"])
    assert not tx["subject"].isin(["c1", "c2"]).any()  # pseudonyms only


def test_bad_cells_are_rejected_with_line_column_and_reason(tmp_path: Path) -> None:
    rows = [*ROWS, ("c2", "31.02.2024", "5", "1"), ("", "01.03.2024", "5", "1")]
    config = load_partner_config(_partner(tmp_path, rows, max_reject=0.5))
    report = ingest(config)
    rejects = list(csv.DictReader((config.work_path / "rejects.csv").open()))
    problems = {(int(r["line"]), r["column"]) for r in rejects}
    # "10,5" is not a number with decimal "."; 31.02. is no date; line 9 has no customer id.
    assert problems == {(2, "eur"), (8, "sold_on"), (9, "client_no")}
    assert any("not a number" in r["reason"] for r in rejects)
    assert report.rows_rejected == 3 and report.rows_kept == 5


def test_too_many_rejects_write_nothing_but_the_rejects_file(tmp_path: Path) -> None:
    config = load_partner_config(_partner(tmp_path, ROWS, max_reject=0.0))
    with pytest.raises(RejectFractionExceeded, match=r"1 of 6 rows rejected"):
        ingest(config)
    written = sorted(p.name for p in config.work_path.iterdir())
    assert written == ["rejects.csv"]


def test_a_column_that_is_not_a_derived_summary_is_named_in_the_error(tmp_path: Path) -> None:
    config = load_partner_config(_partner(tmp_path, ROWS, label="churned"))
    with pytest.raises(DataValidationError, match=r"\[columns.churned\].*'purchased_in_label_window'"):
        ingest(config)


def test_missing_export_column_is_named(tmp_path: Path) -> None:
    rows = [tuple(c for i, c in enumerate(r) if i != 3) for r in ROWS]
    config = load_partner_config(_partner(tmp_path, rows))
    with pytest.raises(DataValidationError, match=r"\['items'\].*not in the export"):
        ingest(config)
