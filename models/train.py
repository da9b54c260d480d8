"""Local training and evaluation loops (used by partners, baselines and benchmarks alike).

Both loops read their rows through :class:`fedcrm.models.batches.Rows` one block at a
time, so a partner with millions of customers trains from rows spilled to disk
(:class:`~fedcrm.models.batches.SpillRows`) in bounded memory; ``train_local`` and
``evaluate`` keep their array signatures and wrap the arrays without copying.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedcrm.models.batches import BLOCK_ROWS, ArrayRows, Rows, epoch_order
from fedcrm.models.metrics import binary_metrics
from fedcrm.models.train_config import TrainConfig, TrainResult

__all__ = ["TrainConfig", "TrainResult", "evaluate", "evaluate_rows", "predict_scores", "train_local", "train_rows"]


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> TrainResult:
    """Fit ``model`` on (x, y) in place; returns the mean loss of the last epoch."""
    return train_rows(model, ArrayRows(x, y), cfg)


def train_rows(model: nn.Module, rows: Rows, cfg: TrainConfig, *, block_rows: int = BLOCK_ROWS) -> TrainResult:
    """Fit ``model`` on ``rows`` in place, one block in memory at a time (see ``batches.epoch_order``)."""
    device = torch.device(cfg.device)
    model.to(device).train()
    global_params = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else None
    optimizer = _optimizer(model, cfg)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(cfg.seed)
    n = rows.n_rows
    last = float("nan")
    for _ in range(cfg.epochs):
        total, seen = 0.0, 0
        block: tuple[int, int] | None = None
        xb = yb = None
        for lo, hi, idx in epoch_order(n, cfg.batch_size, generator, block_rows):
            if block != (lo, hi):
                bx, by = rows.read(lo, hi)
                xb, yb = torch.from_numpy(bx).to(device), torch.from_numpy(by).to(device)
                block = (lo, hi)
            assert xb is not None and yb is not None
            sel = torch.from_numpy(idx).to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(xb[sel]), yb[sel])
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
    logits = model(torch.from_numpy(np.asarray(x, dtype=np.float32)))
    return torch.sigmoid(logits).numpy().astype(np.float64)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Log loss plus ROC AUC, PR AUC and top-decile lift on (x, y)."""
    return evaluate_rows(model, ArrayRows(x, y))


@torch.no_grad()
def evaluate_rows(model: nn.Module, rows: Rows, *, block_rows: int = BLOCK_ROWS) -> dict[str, float]:
    """:func:`evaluate` over ``rows``, one block in memory at a time (scores and labels are kept: 12 B a row)."""
    model.eval()
    n = rows.n_rows
    scores = np.empty(n, dtype=np.float64)
    labels = np.empty(n, dtype=np.float32)
    loss_sum = 0.0
    for lo in range(0, n, block_rows):
        bx, by = rows.read(lo, min(n, lo + block_rows))
        logits = model(torch.from_numpy(bx))
        yt = torch.from_numpy(by)
        loss_sum += float(nn.functional.binary_cross_entropy_with_logits(logits.double(), yt.double(), reduction="sum"))
        scores[lo : lo + len(by)] = torch.sigmoid(logits).numpy()
        labels[lo : lo + len(by)] = by
    loss = loss_sum / n if n else float("nan")
    return {"loss": loss, **binary_metrics(labels, scores)}
