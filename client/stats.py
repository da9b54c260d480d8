"""The federated statistics round, partner side: counts, sums, sums of squares.

Every cell sent out covers at least ``min_count`` distinct pseudonymous customers; a
cell below it is withheld entirely (never zeroed or merged) and the withholding is
logged with the cell's name but not its count. A partner with fewer customers than
the minimum sends nothing and raises, naming itself.
"""

from __future__ import annotations

import pandas as pd

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


def local_statistics(frame: pd.DataFrame, task: TaskSchema, *, min_count: int, partner: str) -> dict[str, float]:
    """Statistics-round cells for the numeric features of ``task`` over ``frame``."""
    n = require_min_count(frame, min_count, partner, "the statistics round")
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
