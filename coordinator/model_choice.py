"""Which round's model a run keeps, and when it stops: early stopping on federated validation loss.

The federated validation loss of round k is the example-weighted mean of the partners'
losses on their local hold-outs for the model aggregated in round k. The best round is
the one with the lowest loss (the earlier one on a tie); a round *improves* only if its
loss is below the best so far by more than ``min_delta``. With ``patience`` P the run stops
after the first round that is P rounds past the best without improving. The run's
``final`` model is the best round's unless the run config says ``final_model = "last"``.

Pure (no Flower): the ServerApp's rounds feed it (``coordinator/rounds.py``); a resumed run
rebuilds it from the losses its events recorded, so stopping and the choice are the same
as if the run had not been interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelChoice:
    """Tracks federated validation losses per round; decides stopping and the final round."""

    patience: int | None = None
    min_delta: float = 0.0
    rule: str = "best"  # best | last
    losses: dict[int, float] = field(default_factory=dict)
    best_round: int | None = None

    def observe(self, server_round: int, loss: float) -> None:
        """Record round ``server_round``'s federated validation loss."""
        self.losses[server_round] = float(loss)
        if self.best_round is None or loss < self.losses[self.best_round] - self.min_delta:
            self.best_round = server_round

    def should_stop(self, server_round: int) -> bool:
        """True once ``patience`` rounds have passed since the best one without improvement."""
        return (self.patience is not None and self.best_round is not None
                and server_round - self.best_round >= self.patience)

    def final_round(self) -> int | None:
        """The round whose model becomes the run's ``final`` model."""
        if not self.losses:
            return None
        return self.best_round if self.rule == "best" else max(self.losses)

    @classmethod
    def replay(cls, losses: dict[int, float], *, patience: int | None, min_delta: float, rule: str) -> ModelChoice:
        """A choice rebuilt from earlier rounds' losses (resume)."""
        choice = cls(patience=patience, min_delta=min_delta, rule=rule)
        for k in sorted(losses):
            choice.observe(k, losses[k])
        return choice


def model_selection(events: list[dict[str, Any]], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Which round the final model is, by which rule, the best round, and where early stopping stopped."""
    chosen = next((e for e in reversed(events) if e["event"] == "model_selected"), None)
    stopped = next((e for e in reversed(events) if e["event"] == "early_stop"), None)
    done = [int(r["round"]) for r in rounds if "federated" in r]
    losses = {int(r["round"]): r["federated"]["loss"] for r in rounds if "federated" in r}
    best = min(losses, key=lambda k: (losses[k], k)) if losses else None
    if chosen is not None:
        return {"final_round": int(chosen["round"]), "final_rule": str(chosen["rule"]),
                "best_round": int(chosen.get("best_round", best or 0)) or best,
                "stopped_early_after": int(stopped["round"]) if stopped else None}
    # Runs recorded before model selection existed: their final model is the last round's.
    return {"final_round": max(done, default=None), "final_rule": "last", "best_round": best,
            "stopped_early_after": int(stopped["round"]) if stopped else None}
