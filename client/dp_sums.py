"""The Gaussian mechanism on a partner's released sums (statistics round, segment profiles).

A secure sum hides each partner's vector from the coordinator, but the sum it reveals is
still a function of every customer. With DP on, the partner adds calibrated Gaussian noise
to **its own** cells before SecAgg+ masks them, so its release is (ε, δ)-DP by itself:
whatever the other partners do, however many drop out, and whoever colludes with the
coordinator. The price is noise that grows with the number of partners (each adds its own,
so the sum carries √P times one partner's noise, where distributed noise — each adding 1/√P
of it — would carry one share); with the consortia fedcrm serves (a handful of partners)
that costs little and it needs no trust in the others or in the dropout count. docs/privacy.md.

The mechanism, for one release of a vector of cells:

* every value is clipped to the public ``bounds`` of its feature in the task schema (never
  bounds taken from the data); a release that needs bounds the schema lacks is refused;
* sums are taken over values shifted by the bounds' centre (public), so one customer changes a
  sum by at most half the range and a sum of squares by its square; the partner shifts the
  noised sums back (:func:`uncentre`, post-processing) so the cells keep their meaning;
* each cell ``i`` has the largest change one customer can make to it, ``Δ_i`` (1 for a count,
  ``max(|low|, |high|)`` for a sum, ``max(low², high²)`` for a sum of squares, of shifted values);
* dividing every cell by its ``Δ_i`` gives a vector in which one customer changes at most
  ``units`` cells by at most 1 each, so its L2 sensitivity is ``√units``;
* noise ``N(0, (z · √units · Δ_i)²)`` on cell ``i``, where ``z`` is the analytic Gaussian
  mechanism's noise for sensitivity 1 at the partner's (ε, δ) (Balle & Wang 2018, from
  ``dp_accounting.get_sigma_gaussian``: the tight calibration for one Gaussian release);
* cells are withheld for the minimum count on their *noised* counts (post-processing: the
  decision to withhold reveals nothing beyond the DP release).

Whether noise is on is the partner's decision (:func:`decide_release`): always when the
purpose's policy requires DP, otherwise when the order asks for it; ε is the partner's own
allotment (``[privacy] statistics_epsilon`` / ``profiles_epsilon``), δ its ``release_delta``
or the purpose's ``max_delta``. The planned spend must fit the purpose's remaining ε budget
before any customer data is read, and the spend is a signed ``dp_spend`` event in the
partner's ledger before the vector leaves (:meth:`GaussianRelease.record`); within a run,
repeated releases of one mechanism compose by adding their ε (basic composition).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
import pandas as pd

from fedcrm.client.approvals import open_partner_ledger
from fedcrm.client.config import PartnerConfig
from fedcrm.consent import budget
from fedcrm.consent.events import OrderRefusalEvent, PrivacySpendEvent
from fedcrm.consent.taxonomy import Vocabulary
from fedcrm.errors import DpBoundsMissing, PrivacyBudgetExceeded
from fedcrm.protocol import TaskSchema

__all__ = ["ACCOUNTANT", "PROFILES", "STATISTICS", "GaussianRelease", "centred", "decide_release", "epsilon_of",
           "feature_bounds", "noise_multiplier_for", "sensitivity_of", "uncentre"]

#: Mechanism names of the spends in the ledger.
STATISTICS = "gaussian_statistics"
PROFILES = "gaussian_profiles"
#: The accounting of one release: the analytic Gaussian mechanism (exact ε for one Gaussian release).
ACCOUNTANT = "analytic_gaussian"
DEFAULT_MAX_DELTA = 1e-5

Mechanism = Literal["gaussian_statistics", "gaussian_profiles"]


def noise_multiplier_for(epsilon: float, delta: float) -> float:
    """Noise std of the Gaussian mechanism with L2 sensitivity 1 that is (ε, δ)-DP (analytic Gaussian)."""
    import dp_accounting  # noqa: PLC0415 (imported only by partners that noise a release)

    return float(dp_accounting.get_sigma_gaussian(epsilon, delta))


def epsilon_of(noise_multiplier: float, delta: float) -> float:
    """ε at δ of one Gaussian release with noise std ``noise_multiplier`` for L2 sensitivity 1."""
    import dp_accounting  # noqa: PLC0415

    return float(dp_accounting.get_epsilon_gaussian(noise_multiplier, delta))


def feature_bounds(task: TaskSchema, features: list[str], what: str) -> dict[str, tuple[float, float]]:
    """The task schema's public clipping bounds of ``features``; raises naming every feature without one."""
    spec = {f.name: f for f in task.features}
    missing = [name for name in features if spec[name].bounds is None]
    if missing:
        raise DpBoundsMissing(
            f"task {task.name} {task.version}: {what} with differential privacy needs public clipping bounds for "
            f"numeric feature(s) {missing}; declare `bounds: [low, high]` for each in the task schema (domain "
            "knowledge, e.g. tenure in months [0, 72]; never the data's own minimum and maximum)")
    return {name: spec[name].bounds for name in features}  # type: ignore[misc]


def sensitivity_of(cell: Literal["count", "sum", "sumsq"], bounds: tuple[float, float] | None = None) -> float:
    """Largest change one customer can make to a count, a sum or a sum of squares of values within ``bounds``."""
    if cell == "count":
        return 1.0
    assert bounds is not None
    largest = max(abs(bounds[0]), abs(bounds[1]))
    return largest if cell == "sum" else largest * largest


def centred(values: pd.Series, bounds: tuple[float, float]) -> tuple[pd.Series, float, tuple[float, float]]:
    """Values clipped to ``bounds`` and shifted by the bounds' (public) centre; the centre and the shifted bounds.

    Sums of shifted values have half the sensitivity (a quarter for squares), and
    :func:`uncentre` turns them back into sums in the feature's units exactly: the
    coordinator's mean and variance then carry 2× and 4× less noise at the same ε.
    """
    low, high = bounds
    centre, half = (low + high) / 2.0, (high - low) / 2.0
    return values.clip(low, high) - centre, centre, (-half, half)


def uncentre(count: float, total: float, squares: float, centre: float) -> tuple[float, float]:
    """Sum and sum of squares in the feature's units from noised count and sums of shifted values (post-processing)."""
    return total + centre * count, squares + 2.0 * centre * total + centre * centre * count


@dataclass(frozen=True)
class GaussianRelease:
    """The partner's acceptance of one noised release, made before any customer data is read."""

    config: PartnerConfig = field(repr=False)
    mechanism: Mechanism
    purpose: str
    run_id: str
    server_round: int
    epsilon: float
    delta: float
    noise_multiplier: float
    vocabulary: Vocabulary | None = field(default=None, repr=False)

    def noise(self, values: Mapping[str, float], sensitivity: Mapping[str, float], *, units: int,
              rng: np.random.Generator | None = None) -> dict[str, float]:
        """Every cell of ``values`` plus Gaussian noise of std ``z · √units · Δ_cell``.

        ``units`` is how many cells one customer can change (each by at most its Δ). The
        generator is seeded from the operating system's entropy unless one is given (tests).
        """
        rng = rng if rng is not None else np.random.default_rng()
        names = list(values)
        scale = self.noise_multiplier * math.sqrt(units)
        stds = np.array([scale * sensitivity[n] for n in names], dtype=np.float64)
        noisy = np.array([values[n] for n in names], dtype=np.float64) + rng.normal(0.0, 1.0, len(names)) * stds
        return dict(zip(names, (float(v) for v in noisy), strict=True))

    def record(self, *, units: int, cells: int, bounds: Mapping[str, tuple[float, float]], at: datetime) -> PrivacySpendEvent:
        """The signed spend, in the partner's ledger before anything leaves (refused if it no longer fits)."""
        epsilon = epsilon_of(self.noise_multiplier, self.delta)
        with open_partner_ledger(self.config) as ledger:
            previous = budget.run_epsilon(budget.spends(ledger), self.run_id, self.mechanism)
            releases = [] if previous is None else list(previous.accountant_state.get("releases", []))
            releases.append({"round": self.server_round, "noise_multiplier": self.noise_multiplier, "units": units,
                             "cells": cells, "epsilon": epsilon, "delta": self.delta})
            state = {"mechanism": "gaussian", "releases": releases,
                     "bounds": {k: list(v) for k, v in sorted(bounds.items())}}
            # Basic composition within the run: the cumulative ε of k releases is the sum of theirs.
            return budget.record_spend(
                ledger, purpose=self.purpose, run_id=self.run_id, server_round=self.server_round,
                epsilon=sum(r["epsilon"] for r in releases), delta=sum(r["delta"] for r in releases),
                mechanism=self.mechanism, accountant_state=state, accountant=ACCOUNTANT, partner=self.config.name,
                at=at, vocabulary=self.vocabulary,
            )


def _allotment(config: PartnerConfig, mechanism: Mechanism) -> float:
    return config.privacy.statistics_epsilon if mechanism == STATISTICS else config.privacy.profiles_epsilon


def decide_release(
    config: PartnerConfig, *, mechanism: Mechanism, purpose: str, run_id: str, server_round: int, at: datetime,
    asked: bool, vocabulary: Vocabulary, stage: str, task: TaskSchema, schema_hash: str,
) -> GaussianRelease | None:
    """Noise on or off for one release, and its (ε, δ); refuse a release that would exceed the budget.

    Noise is on when the purpose's policy requires DP or the order asks for it. A planned
    spend above the remaining ε budget is an ``order_refusal`` event in the ledger and a
    :class:`~fedcrm.errors.PrivacyBudgetExceeded`, before any customer data is read.
    """
    policy = budget.purpose_privacy(purpose, vocabulary)
    required = policy is not None and policy.differential_privacy == "required"
    if not (asked or required):
        return None
    epsilon = _allotment(config, mechanism)
    cap = policy.max_delta if policy is not None else DEFAULT_MAX_DELTA
    delta = min(config.privacy.release_delta or cap, cap)
    with open_partner_ledger(config) as ledger:
        try:
            budget.check_planned_spend(ledger, purpose=purpose, epsilon=epsilon, at=at, vocabulary=vocabulary,
                                       what=f"the noised {stage} release of run {run_id}")
        except PrivacyBudgetExceeded as exc:
            ledger.append([OrderRefusalEvent(
                partner=config.name, job_id=run_id, model_version=f"{run_id}:{server_round}", stage=stage,
                task_name=task.name, task_sha256=schema_hash, purpose=purpose, reason="privacy_budget",
                detail=str(exc), at=at,
            )])
            raise
    return GaussianRelease(config=config, mechanism=mechanism, purpose=purpose, run_id=run_id,
                           server_round=server_round, epsilon=epsilon, delta=delta,
                           noise_multiplier=noise_multiplier_for(epsilon, delta), vocabulary=vocabulary)
