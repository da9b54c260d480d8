"""Settings and outcome of local training, free of torch (cheap to import on any path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one local training call."""

    epochs: int = 2
    learning_rate: float = 0.01
    batch_size: int = 64  # 0 = full batch (deterministic: no shuffling)
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = 0.0
    proximal_mu: float = 0.0  # FedProx term mu/2 * ||w - w_global||^2
    param_bound: float | None = None  # project every parameter into [-bound, bound] after each step
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class TrainResult:
    """Outcome of local training."""

    loss: float
    num_examples: int
