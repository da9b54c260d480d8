"""Early stopping on federated validation loss and the best-round final model (pure logic)."""

from __future__ import annotations

import pytest

from fedcrm.coordinator.model_choice import ModelChoice
from fedcrm.coordinator.run_config import RunConfig
from tests.coordinator.registry_runs import TASK


def _feed(choice: ModelChoice, losses: list[float]) -> int:
    """Rounds run until the choice stops (the last round run)."""
    for k, loss in enumerate(losses, start=1):
        choice.observe(k, loss)
        if choice.should_stop(k):
            return k
    return len(losses)


def test_patience_stops_after_that_many_rounds_without_improvement() -> None:
    losses = [0.60, 0.50, 0.45, 0.47, 0.46, 0.44, 0.49, 0.50, 0.51]
    choice = ModelChoice(patience=2)
    assert _feed(choice, losses) == 5  # best at 3; rounds 4 and 5 did not improve
    assert choice.best_round == 3 and choice.final_round() == 3
    more = ModelChoice(patience=3)
    assert _feed(more, losses) == 9 and more.best_round == 6  # round 6 improved within patience 3


def test_min_delta_makes_tiny_improvements_not_count() -> None:
    choice = ModelChoice(patience=2, min_delta=0.01)
    assert _feed(choice, [0.50, 0.495, 0.492, 0.40]) == 3
    assert choice.best_round == 1


def test_without_patience_every_round_runs_and_the_final_model_is_the_best_or_the_last() -> None:
    losses = [0.5, 0.4, 0.45, 0.47]
    best = ModelChoice()
    assert _feed(best, losses) == 4 and best.final_round() == 2
    last = ModelChoice(rule="last")
    _feed(last, losses)
    assert last.final_round() == 4 and last.best_round == 2
    assert ModelChoice().final_round() is None


def test_a_tie_keeps_the_earlier_round_and_a_replay_equals_the_live_choice() -> None:
    losses = {1: 0.5, 2: 0.4, 3: 0.4, 4: 0.41}
    live = ModelChoice(patience=2)
    stopped = _feed(live, list(losses.values()))
    replayed = ModelChoice.replay({k: v for k, v in losses.items() if k <= 3}, patience=2, min_delta=0.0, rule="best")
    assert replayed.best_round == live.best_round == 2
    replayed.observe(4, losses[4])
    assert stopped == 4 and replayed.should_stop(4)


def test_the_run_config_names_the_settings_and_refuses_nonsense() -> None:
    cfg = RunConfig(task=TASK, early_stopping_patience=2, final_model="last")
    assert cfg.early_stopping_patience == 2 and cfg.final_model == "last"
    assert RunConfig(task=TASK).final_model == "best"
    with pytest.raises(ValueError, match="early_stopping_patience"):
        RunConfig(task=TASK, early_stopping_patience=0)
    with pytest.raises(ValueError, match="final_model"):
        RunConfig(task=TASK, final_model="newest")
