"""Combine partners' statistics-round cells into federated scaling (pure)."""

from __future__ import annotations

import math

from fedcrm.logging import get_logger
from fedcrm.protocol import ROWS_KEY, TaskSchema, stat_key

log = get_logger(__name__)


def combine_statistics(cells: dict[str, dict[str, float]], task: TaskSchema) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of every numeric feature over all partners that reported it.

    Partners withhold cells below the minimum count; a feature no partner reported is
    left unscaled (mean 0, std 1) and logged.
    """
    scaling: dict[str, tuple[float, float]] = {}
    for name in task.numeric_features:
        count = sum(c.get(stat_key(name, "count"), 0.0) for c in cells.values())
        if count <= 0:
            log.warning("no partner reported statistics for feature; left unscaled", extra={"cell": name})
            scaling[name] = (0.0, 1.0)
            continue
        total = sum(c.get(stat_key(name, "sum"), 0.0) for c in cells.values())
        squares = sum(c.get(stat_key(name, "sumsq"), 0.0) for c in cells.values())
        mean = total / count
        variance = max(squares / count - mean * mean, 0.0)
        scaling[name] = (mean, math.sqrt(variance) if variance > 1e-12 else 1.0)
    return scaling


def partner_rows(cells: dict[str, dict[str, float]]) -> dict[str, int]:
    """Number of customers each partner reported in the statistics round."""
    return {partner: int(c[ROWS_KEY]) for partner, c in cells.items()}
