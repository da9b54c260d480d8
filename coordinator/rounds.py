"""The training rounds of a run: round 0 (or a resume), strategy, SecAgg+, checkpoints, dropouts.

Called by the ServerApp (:mod:`fedcrm.coordinator.server_app`), which owns the messages;
this module owns how rounds are driven:

- every exchange goes through :class:`~fedcrm.coordinator.workflows.StageGrid` (the run's
  ``stage_timeout``; who did not deliver, and why);
- strategies and the SecAgg+ workflow complete a round with at least ``min_partners``
  (default: all) and record every dropout as a ``dropout`` event (round, stage,
  partner → reason); the SecAgg+ parameters come from
  :func:`~fedcrm.coordinator.secagg.secagg_parameters`;
- after each round's federated evaluation a checkpoint is written
  (:mod:`fedcrm.coordinator.checkpoint`); a resumed run (``plan.resume_from_round = k``)
  redoes only the handshake, restores parameters, strategy state, RNG state, scaling and
  ``max_weight`` from checkpoint k and continues at round k + 1.
"""

from __future__ import annotations

from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import Context
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp.grid import Grid

from fedcrm.coordinator.checkpoint import (
    Checkpoint,
    current_random_state,
    load_checkpoint,
    restore_random_state,
    restore_strategy_state,
    save_checkpoint,
    strategy_state,
)
from fedcrm.coordinator.model_choice import ModelChoice
from fedcrm.coordinator.secagg import MinPartnersSecAggPlusWorkflow, secagg_parameters
from fedcrm.coordinator.strategies import make_strategy
from fedcrm.coordinator.workflows import RoundsWorkflow, StageGrid
from fedcrm.errors import RoundFailed


def run_rounds(fed: Any, grid: Grid, context: Context) -> list[np.ndarray]:
    """Round 0 (or the resume handshake), then the remaining training rounds; returns the final parameters.

    ``fed`` is the ServerApp's ``Federation`` (plan, config, recorder, node names, orders).
    """
    plan, cfg = fed.plan, fed.cfg
    stage_grid = StageGrid(grid, cfg.stage_timeout)
    start = plan.resume_from_round
    initial: list[np.ndarray] = fed.initial
    checkpoint: Checkpoint | None = None
    if start:
        checkpoint = load_checkpoint(plan.run_dir, start)
        fed.recorder.event("resume", from_round=start)
        fed.handshake(stage_grid)
        expected, now = set(checkpoint.node_names.values()), set(fed.node_names.values())
        if expected != now:
            raise RoundFailed(start + 1, "hello", sorted(expected ^ now),
                              "the partners differ from those of the checkpointed run")
        fed.scaling, fed.max_weight = checkpoint.scaling, checkpoint.max_weight
        initial = checkpoint.parameters
    else:
        fed.handshake_and_statistics(stage_grid)

    min_partners = cfg.min_partners_of(plan.num_partners)
    secagg = cfg.aggregation == "secagg"
    strategy = make_strategy(
        cfg.strategy,
        num_partners=plan.num_partners,
        node_names=fed.node_names,
        min_partners=min_partners,
        wait_s=cfg.stage_timeout,
        secagg=secagg,
        initial_parameters=ndarrays_to_parameters(initial),
        on_fit_config_fn=fed.fit_config,
        on_evaluate_config_fn=fed.evaluate_config,
        proximal_mu=cfg.proximal_mu,
        server_learning_rate=cfg.server_learning_rate,
    )
    if checkpoint is not None:
        restore_strategy_state(strategy, checkpoint.strategy_state)
        restore_random_state(checkpoint.random_state)

    latest: dict[int, list[np.ndarray]] = {}
    choice = model_choice(fed)
    best: dict[int, list[np.ndarray]] = {}  # the best round's parameters seen in this segment

    def on_fit(server_round: int, parameters: Any, results: list[Any]) -> None:
        latest[server_round] = parameters_to_ndarrays(parameters)
        fed.on_fit(server_round, parameters, results)

    def on_evaluate(server_round: int, loss: float, results: list[Any]) -> None:
        fed.on_evaluate(server_round, loss, results)
        parameters = latest.pop(server_round)
        choice.observe(server_round, loss)
        if choice.best_round == server_round:
            best.clear()
            best[server_round] = parameters
        write_checkpoint(fed, strategy, server_round, parameters)
        if choice.should_stop(server_round) and server_round < cfg.rounds:
            fed.recorder.event("early_stop", round=server_round, best_round=choice.best_round,
                               patience=cfg.early_stopping_patience, min_delta=cfg.early_stopping_min_delta)

    def on_dropout(server_round: int, stage: str, partners: dict[str, str]) -> None:
        fed.recorder.event("dropout", round=server_round, stage=stage, partners=partners)

    strategy.on_fit = on_fit  # type: ignore[attr-defined]
    strategy.on_evaluate = on_evaluate  # type: ignore[attr-defined]
    strategy.on_dropout = on_dropout  # type: ignore[attr-defined]
    strategy.missing_reasons = lambda: stage_grid.missing  # type: ignore[attr-defined]
    strategy.identify = lambda server_round, nodes: fed.identify(stage_grid, server_round, nodes)  # type: ignore[attr-defined]

    fit_workflow = None
    if secagg:
        num_shares, threshold = secagg_parameters(plan.num_partners, min_partners)
        fed.recorder.event("secagg_parameters", num_shares=num_shares, reconstruction_threshold=threshold,
                           min_partners=min_partners, partners=plan.num_partners)
        fit_workflow = MinPartnersSecAggPlusWorkflow(
            num_shares=num_shares,
            reconstruction_threshold=threshold,
            max_weight=fed.max_weight,
            clipping_range=cfg.clipping_range,
            quantization_range=cfg.quantization_range,
            modulus_range=cfg.modulus_range,
            timeout=cfg.stage_timeout,
            node_names=fed.node_names,
            min_partners=min_partners,
            on_stage=fed.on_stage,
            on_dropout=on_dropout,
        )
    served = strategy
    if cfg.dp.mode == "client":  # an option for many partners only; see coordinator/client_dp.py
        from fedcrm.coordinator.client_dp import wrap_client_dp

        served = wrap_client_dp(strategy, noise_multiplier=cfg.dp.noise_multiplier, clipping_norm=cfg.dp.clipping_norm,
                                num_partners=plan.num_partners)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.rounds - start), strategy=served)
    RoundsWorkflow(fit_workflow=fit_workflow, first_round=start + 1, stop=choice.should_stop)(stage_grid, legacy)
    final = compat.arrayrecord_to_parameters(legacy.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
    return select_final(fed, choice, best, parameters_to_ndarrays(final))


def model_choice(fed: Any) -> ModelChoice:
    """Early stopping and best-round state, replayed from the rounds already recorded (resume)."""
    from fedcrm.coordinator.registry import rounds_from_events

    cfg = fed.cfg
    done = {int(r["round"]): float(r["federated"]["loss"]) for r in rounds_from_events(fed.recorder.events())
            if "federated" in r}
    return ModelChoice.replay(done, patience=cfg.early_stopping_patience, min_delta=cfg.early_stopping_min_delta,
                              rule=cfg.final_model)


def select_final(fed: Any, choice: ModelChoice, best: dict[int, list[np.ndarray]],
                 last: list[np.ndarray]) -> list[np.ndarray]:
    """The parameters of the run's final model (best round's or last), recording which round it is."""
    from fedcrm.coordinator.registry import load_run_model

    chosen = choice.final_round()
    if chosen is None:
        return last
    if choice.rule == "last" or chosen == max(choice.losses):
        parameters = last
    elif chosen in best:
        parameters = best[chosen]
    else:  # the best round was before a resume: its model is in the run directory, checked against the manifest
        parameters = load_run_model(fed.plan.run_dir, f"round-{chosen}")[1]
    fed.final_meta = {"round": chosen, "rule": choice.rule, "best_round": choice.best_round}
    fed.recorder.event("model_selected", round=chosen, rule=choice.rule, best_round=choice.best_round,
                       loss=choice.losses[chosen])
    return parameters


def write_checkpoint(fed: Any, strategy: object, server_round: int, parameters: list[np.ndarray]) -> None:
    """Checkpoint the run after a completed round (under the recorder's write lock)."""
    recorder = fed.recorder
    with recorder.guarded():
        recorder.check_open()
        save_checkpoint(fed.plan.run_dir, Checkpoint(
            server_round=server_round,
            parameter_names=recorder.parameter_names,
            parameters=parameters,
            strategy_state=strategy_state(strategy),
            random_state=current_random_state(),
            scaling=dict(fed.scaling),
            max_weight=float(fed.max_weight),
            node_names=dict(fed.node_names),
        ))
    recorder.event("checkpoint", round=server_round)
