"""Per-customer reasons for a score, in the partner's own column names and values.

Attributions are **integrated gradients** (IG) of the model's logit, from a baseline that
is exactly how the task encoding treats an absent feature everywhere else (numeric: the
federated mean, boolean: 0, categorical: the ``__unseen__`` slot) — the model's own
"don't know" input, rather than an all-zero vector no customer has. The attributions of a
categorical feature's one-hot columns are summed, so each task feature gets one number,
and by IG's completeness they add up to ``logit(customer) - logit(baseline)``. A feature
this partner does not hold sits at the baseline, so its attribution is exactly 0 and it is
never a reason. The top K are the features that raise the customer's score most.

How IG is computed. Both task architectures are piecewise linear, so the IG path integral
has an exact closed form, computed here for every customer at once with a few numpy matrix
products (no torch, no Captum, no per-customer loop):

* logistic regression ``f(x) = w·x + c``: ``IG_i = w_i (x_i - b_i)``;
* the one-hidden-layer ReLU MLP ``f(x) = v·relu(Wx + a) + c``: along the straight path
  ``b + t(x - b)`` each hidden unit's pre-activation ``h_j(t) = h_j(b) + t (h_j(x) - h_j(b))`` is
  linear in ``t``, so the share ``s_j`` of ``t ∈ [0, 1]`` where the unit is active is one
  division; then ``IG = (x - b) ⊙ ((s ⊙ v) W)``. Completeness holds exactly (up to float
  rounding): ``Σ_i IG_i = Σ_j v_j (relu(h_j(x)) - relu(h_j(b)))``.

Captum's numerical IG (a Riemann/Gauss-Legendre sum of ``steps`` gradient evaluations)
approximates the same integral; it is kept behind ``steps=N`` (``--explain-steps``) as the
independent reference the tests compare the closed form with. It cost 16 forward and
backward passes per customer plus importing torch: 21 s of CPU for 100,000 customers,
against well under a second for the closed form.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from fedcrm.client.config import PartnerConfig
from fedcrm.client.features import Scaling, encode_features
from fedcrm.errors import ModelIntegrityError
from fedcrm.protocol import TaskSchema

__all__ = ["baseline_vector", "captum_attributions", "exact_attributions", "feature_attributions",
           "reason_columns"]

_CHUNK_ROWS = 8192  # rows per Captum call: steps x rows x width floats stay in tens of MB


def baseline_vector(task: TaskSchema, scaling: Scaling) -> np.ndarray:
    """The encoded "feature absent" input (shape ``(task.width,)``)."""
    return encode_features(pd.DataFrame(index=range(1)), task, scaling)[0]


def exact_attributions(arch: str, arrays: Mapping[str, np.ndarray], x: np.ndarray,
                       baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact IG of the logit per encoded column, shape ``(rows, width)``, and ``logit(x) - logit(baseline)``.

    float32 matrix products (the model's own precision); the activity shares in float64.
    """
    x = np.asarray(x, dtype=np.float32)
    base = np.asarray(baseline, dtype=np.float32)[None, :]
    delta = x - base
    if arch == "logistic":
        weight = np.asarray(arrays["linear.weight"], dtype=np.float32)[0]
        columns = delta * weight
        return columns, (delta @ weight).astype(np.float64)
    if arch != "mlp":
        raise ModelIntegrityError(f"unknown architecture '{arch}' in the model's sidecar")
    w1 = np.asarray(arrays["net.0.weight"], dtype=np.float32)  # (hidden, width)
    a1 = np.asarray(arrays["net.0.bias"], dtype=np.float32)
    v = np.asarray(arrays["net.2.weight"], dtype=np.float32)[0]  # (hidden,)
    h_base = (base @ w1.T + a1).astype(np.float64)  # (1, hidden)
    h_x = (x @ w1.T + a1).astype(np.float64)  # (rows, hidden)
    slope = h_x - h_base
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing = -h_base / slope  # where h_j(t) = 0 on the path
    active = np.where(slope > 0, np.clip(1.0 - crossing, 0.0, 1.0),
                      np.where(slope < 0, np.clip(crossing, 0.0, 1.0), (h_base > 0).astype(np.float64)))
    columns = delta * ((active * v).astype(np.float32) @ w1)
    logit_gap = (np.maximum(h_x, 0.0) - np.maximum(h_base, 0.0)) @ v.astype(np.float64)
    return columns, logit_gap


def captum_attributions(arch: str, arrays: Mapping[str, np.ndarray], x: np.ndarray, baseline: np.ndarray,
                        steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Captum's numerical IG per encoded column (``steps`` Gauss-Legendre points) and the logit differences."""
    import torch  # noqa: PLC0415 - only for the numerical reference
    from captum.attr import IntegratedGradients  # noqa: PLC0415

    from fedcrm.models.nets import build_model  # noqa: PLC0415
    from fedcrm.models.params import set_arrays  # noqa: PLC0415

    names = list(arrays)
    model = build_model(arch, x.shape[1])  # type: ignore[arg-type]
    set_arrays(model, [arrays[n] for n in names])
    model.eval()

    def batch_logit_sum(inputs: torch.Tensor) -> torch.Tensor:
        # Customers are independent, so the gradient of the batch's summed logit with respect to one
        # customer's input is that customer's own gradient: one backward pass per batch, not per row.
        return model(inputs).sum().reshape(1)

    ig = IntegratedGradients(batch_logit_sum)
    columns = np.zeros_like(x, dtype=np.float64)
    base = torch.from_numpy(np.asarray(baseline, dtype=np.float32))[None, :]
    for start in range(0, len(x), _CHUNK_ROWS):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start:start + _CHUNK_ROWS], dtype=np.float32))
        attr = ig.attribute(chunk, baselines=base, n_steps=steps, internal_batch_size=len(chunk) * steps)
        columns[start:start + len(chunk)] = attr.detach().numpy()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy().astype(np.float64)
        base_logit = float(model(base)[0])
    return columns, logits - base_logit


def feature_attributions(arch: str, arrays: Mapping[str, np.ndarray], x: np.ndarray, baseline: np.ndarray,
                         task: TaskSchema, *, steps: int | None = None) -> tuple[np.ndarray, float]:
    """Integrated-gradients attribution of the logit to each task feature, shape ``(rows, features)``.

    Exact (closed form) unless ``steps`` asks for Captum's numerical integration. Returns the
    attributions and the largest completeness gap ``|sum - (logit(x) - logit(baseline))|``.
    """
    if steps is None:
        columns, logit_gap = exact_attributions(arch, arrays, x, baseline)
    else:
        columns, logit_gap = captum_attributions(arch, arrays, x, baseline, steps)
    blocks = np.cumsum([0, *(f.width for f in task.features)])
    out = np.add.reduceat(columns.astype(np.float64, copy=False), blocks[:-1], axis=1) if len(x) else \
        np.zeros((0, len(task.features)))
    gap = float(np.max(np.abs(out.sum(axis=1) - logit_gap))) if len(x) else 0.0
    return out, gap


def _display(values: pd.Series, feature_type: str, spec_value_map: Mapping[str, str]) -> np.ndarray:
    """The partner's own spelling of each customer's value (inverse value map, yes/no, numbers as written).

    Vectorised: categorical values through one dictionary map, numbers formatted once per
    distinct value (a score file repeats few distinct values many times).
    """
    if feature_type == "categorical":
        inverse: dict[str, list[str]] = {}
        for local, task_value in spec_value_map.items():
            inverse.setdefault(task_value, []).append(local)
        shown = {v: "/".join(locals_) for v, locals_ in inverse.items()}
        codes, distinct = pd.factorize(values)  # a handful of distinct values, whatever the row count
        spelled = np.array([shown.get(v, v) for v in distinct.astype(object)] + ["(missing)"], dtype=object)
        return spelled[codes]  # code -1 (missing) picks the last entry
    numbers = values.astype("float64").to_numpy()
    if feature_type == "boolean":
        return np.where(np.isnan(numbers), "(missing)", np.where(numbers > 0, "yes", "no")).astype(object)
    distinct, inverse_idx = np.unique(numbers, return_inverse=True)
    formatted = np.array(["(missing)" if np.isnan(v) else f"{v:g}" for v in distinct], dtype=object)
    return formatted[inverse_idx.ravel()]


def reason_columns(frame: pd.DataFrame, attributions: np.ndarray, task: TaskSchema, config: PartnerConfig,
                   k: int) -> pd.DataFrame:
    """``reason_i_column / reason_i_value / reason_i_effect`` for the top ``k`` features of every row.

    ``column`` is the partner's own column name, ``value`` the customer's value as the partner
    writes it, ``effect`` the feature's contribution to the logit (positive: raises the score).
    """
    held = config.feature_columns()
    usable = [j for j, f in enumerate(task.features) if f.name in held and f.name in frame.columns]
    k = min(k, len(usable))
    ranked = np.full_like(attributions, -np.inf)
    ranked[:, usable] = attributions[:, usable]
    top = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
    own_names = np.array([held.get(f.name, f.name) for f in task.features], dtype=object)
    rows = np.arange(len(frame))
    displayed: dict[int, np.ndarray] = {}  # feature index -> every customer's value as the partner writes it
    for j in np.unique(top):  # only features that are someone's reason
        feature = task.features[j]
        displayed[int(j)] = _display(frame[feature.name], feature.type, config.columns[held[feature.name]].value_map)
    out = pd.DataFrame(index=frame.index)
    for i in range(k):
        shown = np.empty(len(frame), dtype=object)
        for j, values in displayed.items():
            hit = top[:, i] == j
            shown[hit] = values[hit]
        out[f"reason_{i + 1}_column"] = own_names[top[:, i]]
        out[f"reason_{i + 1}_value"] = shown
        out[f"reason_{i + 1}_effect"] = attributions[rows, top[:, i]].round(4)
    return out
