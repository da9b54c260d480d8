"""Record-level differentially private local training (DP-SGD with Opacus).

One call trains like :func:`fedcrm.models.train.train_local`, but through Opacus: Poisson
sampling of each batch (every customer is in a batch independently with probability
``q = 1 / ceil(n / batch_size)``), per-sample gradient clipping to ``max_grad_norm``, Gaussian
noise of ``noise_multiplier × max_grad_norm`` on the clipped sum. The RDP accountant is
*resumed* from the state the previous round left (``accountant_state``) and returned
after this round's steps, so ε is cumulative over the whole run, not per round (Flower's
Opacus example builds a fresh PrivacyEngine per round and so reports a per-round ε).

What happens to the model after the noisy step — the projection into the SecAgg+ clipping
range, FedProx's pull towards the global weights — uses no customer data beyond the
noised gradient, so it is post-processing and costs no ε.

The noise is drawn from torch's ordinary (not cryptographic) generator: Opacus's
``secure_mode`` needs torchcsprng, which has no build for torch 2.x (see docs/threat-model.md).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedcrm.models.train_config import TrainConfig

__all__ = ["DpTrainConfig", "DpTrainResult", "epsilon_of", "noise_multiplier_for", "sample_rate_for",
           "steps_per_epoch", "train_local_dp"]

#: The accounting method fedcrm uses (Rényi DP; tests cross-check it with Google's dp-accounting).
ACCOUNTANT = "rdp"


@dataclass(frozen=True)
class DpTrainConfig:
    """DP-SGD settings of one local training call."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant_state: dict[str, Any] | None = None  # the run's accountant so far (None: first round)


@dataclass(frozen=True)
class DpTrainResult:
    """Outcome of DP training: the loss, and the run's cumulative privacy spend after this call."""

    loss: float
    num_examples: int
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int  # optimizer steps of this call
    total_steps: int  # steps in the accountant's whole history
    accountant_state: dict[str, Any] = field(default_factory=dict)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Poisson-sampled batches per epoch (Opacus: one per expected batch; full batch = 1)."""
    return 1 if batch_size <= 0 else max(1, math.ceil(n / batch_size))


def sample_rate_for(n: int, batch_size: int) -> float:
    """The Poisson sampling rate Opacus uses for ``n`` records and an expected batch size."""
    return 1.0 / steps_per_epoch(n, batch_size)


def _history(state: dict[str, Any] | None) -> list[tuple[float, float, int]]:
    if not state:
        return []
    return [(float(s), float(q), int(k)) for s, q, k in state.get("history", [])]


def epsilon_of(state: dict[str, Any] | None, delta: float) -> float:
    """ε at ``delta`` of an accountant state (0 for an empty history)."""
    from opacus.accountants import RDPAccountant

    history = _history(state)
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = history
    return float(accountant.get_epsilon(delta))


def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier (Opacus's search) that keeps ``steps`` DP-SGD steps within (ε, δ)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant=ACCOUNTANT, epsilon_tolerance=0.005))


def train_local_dp(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, dp: DpTrainConfig) -> DpTrainResult:
    """Fit ``model`` in place with DP-SGD; the returned ε covers the accountant's whole history."""
    from opacus import PrivacyEngine

    n = len(x)
    xt = torch.from_numpy(np.array(x, dtype=np.float32, copy=True))
    yt = torch.from_numpy(np.array(y, dtype=np.float32, copy=True))
    batch = n if cfg.batch_size <= 0 else min(cfg.batch_size, n)
    loader = DataLoader(TensorDataset(xt, yt), batch_size=batch, generator=torch.Generator().manual_seed(cfg.seed))
    model.train()
    global_params = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else None
    if cfg.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate,
                                                           weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    engine = PrivacyEngine(accountant=ACCOUNTANT)
    history = _history(dp.accountant_state)
    if history:
        engine.accountant.load_state_dict({"history": history, "mechanism": engine.accountant.mechanism()})
    before = sum(k for _, _, k in history)
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off; that is documented (the RNG is not cryptographic).
        warnings.filterwarnings("ignore", message=".*[Ss]ecure.*")
        private, dp_optimizer, dp_loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm, poisson_sampling=True,
            noise_generator=torch.Generator().manual_seed(cfg.seed + 1_000_003),
        )
    loss_fn = nn.BCEWithLogitsLoss()
    last = float("nan")
    for _ in range(cfg.epochs):
        total, seen = 0.0, 0
        for xb, yb in dp_loader:
            dp_optimizer.zero_grad()
            loss = loss_fn(private(xb), yb) if len(xb) else private(xb).sum() * 0.0
            loss.backward()
            dp_optimizer.step()
            with torch.no_grad():
                # Post-processing of the noised step: no further privacy cost.
                if global_params is not None:
                    for p, g in zip(model.parameters(), global_params, strict=True):
                        p.sub_(cfg.learning_rate * cfg.proximal_mu * (p - g))
                if cfg.param_bound is not None:
                    for p in model.parameters():
                        p.clamp_(-cfg.param_bound, cfg.param_bound)
            total += float(loss.detach()) * len(xb)
            seen += len(xb)
        last = total / max(seen, 1)
    if hasattr(private, "_close"):
        private._close()  # remove Opacus's hooks: the caller's model is a plain module again
    state = engine.accountant.state_dict()
    history_after = [(float(s), float(q), int(k)) for s, q, k in state["history"]]
    total_steps = sum(k for _, _, k in history_after)
    return DpTrainResult(
        loss=last, num_examples=n, epsilon=float(engine.accountant.get_epsilon(dp.delta)), delta=dp.delta,
        noise_multiplier=dp.noise_multiplier, sample_rate=1.0 / len(dp_loader), steps=total_steps - before,
        total_steps=total_steps,
        accountant_state={"mechanism": ACCOUNTANT, "history": [list(h) for h in history_after]},
    )
