"""The statistics round on the partner side: the minimum count per cell, withheld not zeroed."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from fedcrm.client.stats import local_statistics
from fedcrm.errors import MinimumCountNotMet
from fedcrm.paths import DATASETS
from fedcrm.protocol import ROWS_KEY, load_task_schema, stat_key

TASK = load_task_schema(DATASETS / "tasks" / "telco_churn.yaml")


def _frame(n: int, tenure_present: int) -> pd.DataFrame:
    tenure = np.full(n, np.nan)
    tenure[:tenure_present] = np.arange(tenure_present)
    return pd.DataFrame({"subject": [f"k:{i:04x}" for i in range(n)], "tenure_months": tenure,
                         "monthly_charges": np.linspace(20, 100, n)})


def test_cells_over_enough_customers_carry_counts_sums_and_squares() -> None:
    cells = local_statistics(_frame(40, 40), TASK, min_count=10, partner="A")
    assert cells[ROWS_KEY] == 40
    assert cells[stat_key("tenure_months", "count")] == 40
    assert cells[stat_key("tenure_months", "sum")] == sum(range(40))
    assert cells[stat_key("tenure_months", "sumsq")] == sum(i * i for i in range(40))


def test_a_cell_below_the_minimum_is_withheld_not_zeroed_and_logged_by_name_only(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fedcrm"):
        cells = local_statistics(_frame(40, 7), TASK, min_count=10, partner="A")
    assert not any(k.startswith("stat.tenure_months.") for k in cells), "withheld, not zeroed"
    assert stat_key("monthly_charges", "count") in cells
    logged = [r for r in caplog.records if getattr(r, "cell", None) == "tenure_months"]
    assert logged, "the withholding must be logged with the cell's name"
    assert all("7" not in r.getMessage() and "7" not in str(r.__dict__.get("count", "")) for r in logged)
    # features the partner does not hold at all are withheld too
    assert not any(k.startswith("stat.total_charges.") for k in cells)


def test_a_partner_below_the_minimum_sends_nothing_and_is_named() -> None:
    with pytest.raises(MinimumCountNotMet, match="partner B") as excinfo:
        local_statistics(_frame(9, 9), TASK, min_count=10, partner="B")
    assert "9" not in str(excinfo.value), "the count itself never leaves in the message"


def test_evaluation_withholds_ranking_metrics_when_a_class_is_below_the_minimum(tmp_path) -> None:  # noqa: ANN001
    from datetime import UTC, datetime

    from fedcrm.client.partner_session import PartnerSession, RoundOrder
    from fedcrm.models.nets import build_model
    from fedcrm.models.params import get_arrays
    from tests.federation import copy_partners

    (config,) = copy_partners(tmp_path, names=("B",))
    text = config.read_text().replace("min_count = 10", "min_count = 100")
    config.write_text(text)
    session = PartnerSession(config)
    order = RoundOrder("t", 1, "evaluate", datetime.now(UTC), TASK.sha256(), TASK.purpose)
    scaling = {f: (0.0, 1.0) for f in TASK.numeric_features}
    loss, n, metrics = session.evaluate(TASK, order, get_arrays(build_model("mlp", TASK.width)), scaling,
                                        architecture="mlp")
    assert n >= 100 and np.isfinite(loss)
    # B's local hold-out has fewer than 100 churners: AUCs and lift describe them, so they are withheld
    assert metrics.ranking() == {}
    assert metrics.partner == "B"
