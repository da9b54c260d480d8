"""Local training and evaluation loops (used by partners, baselines and benchmarks alike)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedcrm.models.metrics import binary_metrics
from fedcrm.models.train_config import TrainConfig, TrainResult

__all__ = ["TrainConfig", "TrainResult", "evaluate", "predict_scores", "train_local"]


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> TrainResult:
    """Fit ``model`` on (x, y) in place; returns the mean loss of the last epoch."""
    device = torch.device(cfg.device)
    model.to(device).train()
    xt = torch.from_numpy(np.array(x, dtype=np.float32, copy=True)).to(device)
    yt = torch.from_numpy(np.array(y, dtype=np.float32, copy=True)).to(device)
    global_params = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else None
    optimizer = _optimizer(model, cfg)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(cfg.seed)
    n = len(xt)
    batch = n if cfg.batch_size <= 0 else cfg.batch_size
    last = float("nan")
    for _ in range(cfg.epochs):
        order = torch.arange(n) if cfg.batch_size <= 0 else torch.randperm(n, generator=generator)
        total, seen = 0.0, 0
        for start in range(0, n, batch):
            idx = order[start : start + batch].to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            if global_params is not None:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True))
                loss = loss + 0.5 * cfg.proximal_mu * prox
            loss.backward()
            optimizer.step()
            if cfg.param_bound is not None:
                with torch.no_grad():
                    for p in model.parameters():
                        p.clamp_(-cfg.param_bound, cfg.param_bound)
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        last = total / max(seen, 1)
    model.to("cpu")
    return TrainResult(loss=last, num_examples=n)


@torch.no_grad()
def predict_scores(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Predicted probabilities of the positive class."""
    model.eval()
    logits = model(torch.from_numpy(np.array(x, dtype=np.float32, copy=True)))
    return torch.sigmoid(logits).numpy().astype(np.float64)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Log loss plus ROC AUC, PR AUC and top-decile lift on (x, y)."""
    model.eval()
    xt = torch.from_numpy(np.array(x, dtype=np.float32, copy=True))
    yt = torch.from_numpy(np.array(y, dtype=np.float32, copy=True))
    logits = model(xt)
    loss = float(nn.functional.binary_cross_entropy_with_logits(logits, yt))
    scores = torch.sigmoid(logits).numpy().astype(np.float64)
    return {"loss": loss, **binary_metrics(np.asarray(y), scores)}
