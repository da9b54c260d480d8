"""Torch models for binary customer tasks (churn, purchase propensity)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Architecture = Literal["logistic", "mlp"]


class LogisticModel(nn.Module):
    """Logistic regression: one linear layer producing a logit."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.linear(x).squeeze(-1)


class MLPModel(nn.Module):
    """A small multi-layer perceptron producing a logit."""

    def __init__(self, n_features: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x).squeeze(-1)


def build_model(architecture: Architecture, n_features: int, *, hidden: int = 32, seed: int = 0) -> nn.Module:
    """Create a model with deterministic initial weights for ``seed``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if architecture == "logistic":
            return LogisticModel(n_features)
        if architecture == "mlp":
            return MLPModel(n_features, hidden)
    finally:
        torch.random.set_rng_state(generator_state)
    raise ValueError(f"unknown architecture '{architecture}' (use 'logistic' or 'mlp')")
