"""Model parameters as named numpy arrays: the only form they travel or rest in."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn


def get_arrays(model: nn.Module) -> list[np.ndarray]:
    """Parameters in ``state_dict`` order as float32 arrays (copies)."""
    return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()]


def get_names(model: nn.Module) -> list[str]:
    """Parameter names in ``state_dict`` order."""
    return list(model.state_dict().keys())


def set_arrays(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load arrays (``state_dict`` order) into ``model``; shapes must match exactly."""
    keys = list(model.state_dict().keys())
    if len(keys) != len(arrays):
        raise ValueError(f"expected {len(keys)} arrays, got {len(arrays)}")
    state = OrderedDict((k, torch.from_numpy(np.asarray(a, dtype=np.float32).copy())) for k, a in zip(keys, arrays, strict=True))
    model.load_state_dict(state, strict=True)


def max_abs(arrays: list[np.ndarray]) -> float:
    """Largest absolute parameter value."""
    return float(max((np.max(np.abs(a)) for a in arrays if a.size), default=0.0))
