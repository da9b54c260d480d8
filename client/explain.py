"""Per-customer reasons for a score, in the partner's own column names and values.

Attributions are **integrated gradients** (Captum) of the model's logit, from a baseline
that is exactly how the task encoding treats an absent feature everywhere else (numeric:
the federated mean, boolean: 0, categorical: the ``__unseen__`` slot) — the model's own
"don't know" input, rather than an all-zero vector no customer has. The attributions of a
categorical feature's one-hot columns are summed, so each task feature gets one number,
and by IG's completeness they add up to ``logit(customer) - logit(baseline)``. A feature
this partner does not hold sits at the baseline, so its attribution is exactly 0 and it is
never a reason. The top K are the features that raise the customer's score most.

torch and Captum are imported only here, only when explanations are asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from fedcrm.client.config import PartnerConfig
from fedcrm.client.features import Scaling, encode_features
from fedcrm.protocol import TaskSchema

__all__ = ["DEFAULT_STEPS", "baseline_vector", "feature_attributions", "reason_columns"]

#: Integration steps (Gauss-Legendre); the benchmark reports the completeness gap they leave.
DEFAULT_STEPS = 16
_CHUNK_ROWS = 8192  # rows per Captum call: steps x rows x width floats stay in tens of MB


def baseline_vector(task: TaskSchema, scaling: Scaling) -> np.ndarray:
    """The encoded "feature absent" input (shape ``(task.width,)``)."""
    return encode_features(pd.DataFrame(index=range(1)), task, scaling)[0]


def feature_attributions(arch: str, arrays: Mapping[str, np.ndarray], x: np.ndarray, baseline: np.ndarray,
                         task: TaskSchema, *, steps: int = DEFAULT_STEPS) -> tuple[np.ndarray, float]:
    """Integrated-gradients attribution of the logit to each task feature, shape ``(rows, features)``.

    Returns the attributions and the largest completeness gap ``|sum - (logit(x) - logit(baseline))|``.
    """
    import torch  # noqa: PLC0415 - only when explaining
    from captum.attr import IntegratedGradients  # noqa: PLC0415

    from fedcrm.models.nets import build_model  # noqa: PLC0415
    from fedcrm.models.params import set_arrays  # noqa: PLC0415

    names = list(arrays)
    model = build_model(arch, x.shape[1])  # type: ignore[arg-type]
    set_arrays(model, [arrays[n] for n in names])
    model.eval()

    def batch_logit_sum(inputs: torch.Tensor) -> torch.Tensor:
        # Customers are independent, so the gradient of the batch's summed logit with respect to one
        # customer's input is that customer's own gradient. One output per batch instead of one per row:
        # Captum back-propagates each output separately, which costs ~0.1 ms of Python per output.
        return model(inputs).sum().reshape(1)

    ig = IntegratedGradients(batch_logit_sum)
    blocks = np.cumsum([0, *(f.width for f in task.features)])
    columns = np.zeros_like(x, dtype=np.float64)
    base = torch.from_numpy(np.asarray(baseline, dtype=np.float32))[None, :]
    for start in range(0, len(x), _CHUNK_ROWS):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start:start + _CHUNK_ROWS], dtype=np.float32))
        attr = ig.attribute(chunk, baselines=base, n_steps=steps, internal_batch_size=len(chunk) * steps)
        columns[start:start + len(chunk)] = attr.detach().numpy()
    out = np.add.reduceat(columns, blocks[:-1], axis=1)
    with torch.no_grad():  # completeness: attributions add up to logit(x) - logit(baseline), up to the steps' error
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy().astype(np.float64)
        base_logit = float(model(base)[0])
    gap = float(np.max(np.abs(out.sum(axis=1) - (logits - base_logit)))) if len(x) else 0.0
    return out, gap


def _display(values: pd.Series, feature_type: str, spec_value_map: Mapping[str, str]) -> np.ndarray:
    """The partner's own spelling of each customer's value (inverse value map, yes/no, numbers as written)."""
    if feature_type == "categorical":
        inverse: dict[str, list[str]] = {}
        for local, task_value in spec_value_map.items():
            inverse.setdefault(task_value, []).append(local)
        shown = {v: "/".join(locals_) for v, locals_ in inverse.items()}
        return np.array([shown.get(v, v) if isinstance(v, str) else "(missing)" for v in values.astype(object)])
    numbers = values.astype("float64").to_numpy()
    if feature_type == "boolean":
        return np.where(np.isnan(numbers), "(missing)", np.where(numbers > 0, "yes", "no"))
    return np.array(["(missing)" if np.isnan(v) else f"{v:g}" for v in numbers])


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
    out = pd.DataFrame(index=frame.index)
    for i in range(k):
        shown = np.empty(len(frame), dtype=object)
        for j in np.unique(top[:, i]):  # format only the values that are shown
            hit = top[:, i] == j
            feature = task.features[j]
            spec = config.columns[held[feature.name]]
            shown[hit] = _display(frame[feature.name][hit], feature.type, spec.value_map)
        out[f"reason_{i + 1}_column"] = own_names[top[:, i]]
        out[f"reason_{i + 1}_value"] = shown
        out[f"reason_{i + 1}_effect"] = attributions[rows, top[:, i]].round(4)
    return out
