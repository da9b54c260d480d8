"""The federated statistics round, partner side: counts, sums, sums of squares.

Every cell sent out covers at least ``min_count`` distinct pseudonymous customers; a
cell below it is withheld entirely (never zeroed or merged) and the withholding is
logged with the cell's name but not its count. A partner with fewer customers than
the minimum sends nothing and raises, naming itself.

With differential privacy (the partner's decision, ``client/dp_sums.py``) every value is
clipped to its feature's public bounds, every cell carries calibrated Gaussian noise, cells
are withheld on their noised counts, and the spend is in the ledger before the cells leave.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from fedcrm.client.dp_sums import GaussianRelease, centred, feature_bounds, sensitivity_of, uncentre
from fedcrm.errors import MinimumCountNotMet
from fedcrm.logging import get_logger
from fedcrm.protocol import ROWS_KEY, TaskSchema, stat_key

log = get_logger(__name__)


def distinct_subjects(frame: pd.DataFrame, mask: pd.Series | None = None) -> int:
    """Number of distinct pseudonymous customers (optionally under a mask)."""
    subjects = frame["subject"] if mask is None else frame.loc[mask, "subject"]
    return int(subjects.nunique())


def require_min_count(frame: pd.DataFrame, min_count: int, partner: str, what: str) -> int:
    """Raise if ``frame`` covers fewer than ``min_count`` customers; return the count."""
    n = distinct_subjects(frame)
    if n < min_count:
        # The count itself is not in the message: it may be sent to the coordinator.
        raise MinimumCountNotMet(f"partner {partner}: {what} covers fewer customers than the minimum of {min_count}")
    return n


def local_statistics(frame: pd.DataFrame, task: TaskSchema, *, min_count: int, partner: str,
                     dp: GaussianRelease | None = None, at: datetime | None = None,
                     rng: np.random.Generator | None = None) -> dict[str, float]:
    """Statistics-round cells for the numeric features of ``task`` over ``frame``.

    With ``dp`` (the partner's decision, ``client/dp_sums.py``) the cells are clipped, noised
    and the spend is recorded in the ledger (at the partner's clock ``at``) before they are returned.
    """
    n = require_min_count(frame, min_count, partner, "the statistics round")
    if dp is not None:
        return _noised_statistics(frame, task, n, min_count=min_count, dp=dp, at=at, rng=rng)
    cells: dict[str, float] = {ROWS_KEY: float(n)}
    for name in task.numeric_features:
        if name not in frame.columns:
            log.info("statistics cell withheld: feature not held by this partner", extra={"cell": name})
            continue
        values = frame[name].astype("float64")
        present = values.notna()
        if distinct_subjects(frame, present) < min_count:
            log.info("statistics cell withheld: below minimum count", extra={"cell": name})
            continue
        v = values[present]
        cells[stat_key(name, "count")] = float(len(v))
        cells[stat_key(name, "sum")] = float(v.sum())
        cells[stat_key(name, "sumsq")] = float((v * v).sum())
    return cells


def _noised_statistics(frame: pd.DataFrame, task: TaskSchema, n: int, *, min_count: int, dp: GaussianRelease,
                       at: datetime | None, rng: np.random.Generator | None) -> dict[str, float]:
    """Clipped, noised statistics cells; withheld on their noised counts; the spend recorded first.

    One customer is one row (the customer view): it changes the row count and, per held
    feature, its count, sum and sum of squares, so ``units`` = 1 + 3 × held features.
    """
    if not frame["subject"].is_unique:
        raise ValueError(f"partner {dp.config.name}: the statistics round's view has several rows for one "
                         "customer; a noised release assumes one row per customer")
    held = [name for name in task.numeric_features if name in frame.columns]
    bounds = feature_bounds(task, held, "the statistics round")
    exact: dict[str, float] = {ROWS_KEY: float(n)}
    sensitivity: dict[str, float] = {ROWS_KEY: 1.0}
    centres = {}
    for name in held:
        values = frame[name].astype("float64")
        u, centres[name], shifted = centred(values[values.notna()], bounds[name])
        exact[stat_key(name, "count")] = float(len(u))
        exact[stat_key(name, "sum")] = float(u.sum())
        exact[stat_key(name, "sumsq")] = float((u * u).sum())
        for stat in ("count", "sum", "sumsq"):
            sensitivity[stat_key(name, stat)] = sensitivity_of(stat, shifted)  # type: ignore[arg-type]
    units = 1 + 3 * len(held)
    noisy = dp.noise(exact, sensitivity, units=units, rng=rng)
    cells = {ROWS_KEY: noisy[ROWS_KEY]}
    for name in held:
        if noisy[stat_key(name, "count")] < min_count:  # post-processing of the noised count
            log.info("statistics cell withheld: noised count below minimum count", extra={"cell": name})
            continue
        count = noisy[stat_key(name, "count")]
        total, squares = uncentre(count, noisy[stat_key(name, "sum")], noisy[stat_key(name, "sumsq")], centres[name])
        cells[stat_key(name, "count")], cells[stat_key(name, "sum")], cells[stat_key(name, "sumsq")] = (
            count, total, squares)
    dp.record(units=units, cells=len(exact), bounds=bounds, at=at or datetime.now(UTC))
    return cells
