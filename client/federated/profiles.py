"""Segment profiles and distributions on the partner (pandas/numpy, no Flower).

Per segment (each customer labelled locally by the nearest centre): the number of customers,
count / sum / sum of squares of every numeric task feature in its own units, a count per
categorical value (one-hot slots, ``__unseen__`` included) and per boolean the number of
``true`` among the customers that have a value. Every cell covers at least ``min_count`` of
the partner's customers or is withheld (a whole segment below the minimum is withheld, and so
is a value count below it). Histogram bins of the consortium distributions follow the same rule.

With differential privacy (the partner's decision, ``client/dp_sums.py``, mechanism
``gaussian_profiles``) every cell of every segment, empty or not, carries calibrated Gaussian
noise, numeric values are clipped to their public bounds in the task schema, cells are withheld
on their noised counts, and the spend is in the ledger before the cells leave. One customer
lies in one segment, one value slot per categorical and one bin per histogram, so it changes
at most 1 + 3 × numeric + 2 × boolean + categorical + histogram features' cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from fedcrm.client.dp_sums import GaussianRelease, centred, feature_bounds, sensitivity_of, uncentre
from fedcrm.protocol import UNSEEN_SLOT, TaskSchema, profile_cells


@dataclass(frozen=True)
class ProfileSums:
    """A partner's profile cells and how many it withheld for the minimum count."""

    cells: dict[str, float]
    withheld: int


def profile_sums(
    frame: pd.DataFrame,
    labels: np.ndarray,
    task: TaskSchema,
    k: int,
    *,
    min_count: int,
    histogram_edges: Mapping[str, Sequence[float]] | None = None,
    dp: GaussianRelease | None = None,
    at: datetime | None = None,
    rng: np.random.Generator | None = None,
) -> ProfileSums:
    """Cells (names of :func:`fedcrm.protocol.profile_cells`) over this partner's labelled customers.

    With ``dp`` the cells are clipped and noised, and the spend is recorded (at ``at``) first.
    """
    if dp is not None:
        return _noised_profile_sums(frame, labels, task, k, min_count=min_count, histogram_edges=histogram_edges,
                                    dp=dp, at=at, rng=rng)
    cells: dict[str, float] = {}
    withheld = 0

    def put(name: str, value: float, count: int) -> None:
        nonlocal withheld
        if count < min_count:
            withheld += 1
        else:
            cells[name] = float(value)

    labels = np.asarray(labels)
    for j in range(k):
        members = frame[labels == j]
        n = len(members)
        if n == 0:
            continue
        if n < min_count:
            withheld += 1
            continue
        cells[f"profile.{j}.count"] = float(n)
        for f in task.features:
            if f.name not in members.columns:
                continue
            column = members[f.name]
            if f.type == "numeric":
                values = column.astype("float64").dropna()
                m = len(values)
                if m < min_count:
                    withheld += 3
                    continue
                cells[f"profile.{j}.{f.name}.count"] = float(m)
                cells[f"profile.{j}.{f.name}.sum"] = float(values.sum())
                cells[f"profile.{j}.{f.name}.sumsq"] = float((values * values).sum())
            elif f.type == "boolean":
                present = column.astype("float64").dropna()
                if len(present) < min_count:
                    withheld += 2
                    continue
                cells[f"profile.{j}.{f.name}.count"] = float(len(present))
                true = int((present > 0).sum())
                put(f"profile.{j}.{f.name}=true", true, true)
            else:
                text = column.astype(object)  # missing or out-of-vocabulary: the unseen slot, as encoded
                known = text[text.isin(f.vocabulary)]
                for value in f.vocabulary:
                    c = int((known == value).sum())
                    if c:
                        put(f"profile.{j}.{f.name}={value}", c, c)
                unseen = len(text) - len(known)
                if unseen:
                    put(f"profile.{j}.{f.name}={UNSEEN_SLOT}", unseen, unseen)
    for name, edges in (histogram_edges or {}).items():
        if name not in frame.columns:
            continue
        values = frame[name].astype("float64").dropna().to_numpy()
        bins = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
        counts = np.bincount(bins, minlength=len(edges) + 1)
        for b, c in enumerate(counts):
            if c:
                put(f"hist.{name}.{b}", int(c), int(c))
    assert set(cells) <= set(profile_cells(task, k, histogram_edges))
    return ProfileSums(cells=cells, withheld=withheld)


def _noised_profile_sums(
    frame: pd.DataFrame, labels: np.ndarray, task: TaskSchema, k: int, *, min_count: int,
    histogram_edges: Mapping[str, Sequence[float]] | None, dp: GaussianRelease, at: datetime | None,
    rng: np.random.Generator | None,
) -> ProfileSums:
    """Every cell of every segment exact, then noised, then withheld on its noised count."""
    if "subject" in frame.columns and not frame["subject"].is_unique:
        raise ValueError(f"partner {dp.config.name}: the profile's view has several rows for one customer; a "
                         "noised release assumes one row per customer")
    held = [f for f in task.features if f.name in frame.columns]
    numeric = [f.name for f in held if f.type == "numeric"]
    bounds = feature_bounds(task, numeric, "a segment profile")
    edges_of = {name: np.asarray(e, dtype=np.float64) for name, e in (histogram_edges or {}).items()
                if name in frame.columns}
    labels = np.asarray(labels)
    exact: dict[str, float] = {}
    sensitivity: dict[str, float] = {}

    def put(name: str, value: float, delta: float = 1.0) -> None:
        exact[name] = float(value)
        sensitivity[name] = delta

    for j in range(k):
        members = frame[labels == j]
        put(f"profile.{j}.count", len(members))
        for f in held:
            column = members[f.name]
            if f.type == "numeric":
                u, _, shifted = centred(column.astype("float64").dropna(), bounds[f.name])
                put(f"profile.{j}.{f.name}.count", len(u))
                put(f"profile.{j}.{f.name}.sum", u.sum(), sensitivity_of("sum", shifted))
                put(f"profile.{j}.{f.name}.sumsq", (u * u).sum(), sensitivity_of("sumsq", shifted))
            elif f.type == "boolean":
                present = column.astype("float64").dropna()
                put(f"profile.{j}.{f.name}.count", len(present))
                put(f"profile.{j}.{f.name}=true", (present > 0).sum())
            else:
                text = column.astype(object)
                known = text[text.isin(f.vocabulary)]
                for value in f.vocabulary:
                    put(f"profile.{j}.{f.name}={value}", (known == value).sum())
                put(f"profile.{j}.{f.name}={UNSEEN_SLOT}", len(text) - len(known))
    for name, edges in edges_of.items():
        values = frame[name].astype("float64").dropna().to_numpy()
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        for b, c in enumerate(counts):
            put(f"hist.{name}.{b}", c)
    kinds = {"numeric": 3, "boolean": 2, "categorical": 1}
    units = 1 + sum(kinds[f.type] for f in held) + len(edges_of)
    noisy = dp.noise(exact, sensitivity, units=units, rng=rng)
    for j in range(k):  # sums of shifted values back in the feature's units (post-processing)
        for name in numeric:
            key = f"profile.{j}.{name}"
            centre = (bounds[name][0] + bounds[name][1]) / 2.0
            noisy[f"{key}.sum"], noisy[f"{key}.sumsq"] = uncentre(noisy[f"{key}.count"], noisy[f"{key}.sum"],
                                                                  noisy[f"{key}.sumsq"], centre)
    cells: dict[str, float] = {}
    withheld = 0
    for j in range(k):
        if noisy[f"profile.{j}.count"] < min_count:  # every decision below is on noised values: post-processing
            withheld += 1
            continue
        cells[f"profile.{j}.count"] = noisy[f"profile.{j}.count"]
        for f in held:
            if f.type in ("numeric", "boolean"):
                group = [f"profile.{j}.{f.name}.{s}" for s in ("count", "sum", "sumsq")] if f.type == "numeric" \
                    else [f"profile.{j}.{f.name}.count", f"profile.{j}.{f.name}=true"]
                if noisy[group[0]] < min_count:
                    withheld += len(group)
                    continue
                for name in group:
                    if f.type == "boolean" and name.endswith("=true") and noisy[name] < min_count:
                        withheld += 1
                        continue
                    cells[name] = noisy[name]
            else:
                for name in (f"profile.{j}.{n}" for n in f.encoded_names()):
                    if noisy[name] < min_count:
                        withheld += 1
                    else:
                        cells[name] = noisy[name]
    for name, count in noisy.items():
        if name.startswith("hist."):
            if count < min_count:
                withheld += 1
            else:
                cells[name] = count
    assert set(cells) <= set(profile_cells(task, k, histogram_edges))
    dp.record(units=units, cells=len(exact), bounds=bounds, at=at or datetime.now(UTC))
    return ProfileSums(cells=cells, withheld=withheld)
