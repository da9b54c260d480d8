"""Coordinator pieces without Flower runs: statistics, strictness, run config, registry."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from fedcrm.coordinator.federated_stats import combine_statistics, partner_rows
from fedcrm.coordinator.registry import load_run_model, rounds_from_events, write_manifest
from fedcrm.coordinator.run_config import RunConfig, load_run_config
from fedcrm.coordinator.strategies import make_strategy, short_reason
from fedcrm.errors import ConfigError, ModelIntegrityError, RoundFailed
from fedcrm.models.io import save_model_arrays
from fedcrm.paths import DATASETS
from fedcrm.protocol import ROWS_KEY, load_task_schema, stat_key

TASK = DATASETS / "tasks" / "telco_churn.yaml"


def test_federated_scaling_equals_pooled_mean_and_std() -> None:
    task = load_task_schema(TASK)
    rng = np.random.default_rng(0)
    parts = [rng.normal(10, 3, 50), rng.normal(20, 5, 80), rng.normal(0, 1, 30)]
    cells = {}
    for i, values in enumerate(parts):
        c = {ROWS_KEY: float(len(values))}
        c.update({stat_key("tenure_months", "count"): float(len(values)), stat_key("tenure_months", "sum"): values.sum(),
                  stat_key("tenure_months", "sumsq"): float((values ** 2).sum())})
        cells[f"P{i}"] = c
    mean, std = combine_statistics(cells, task)["tenure_months"]
    pooled = np.concatenate(parts)
    assert mean == pytest.approx(pooled.mean()) and std == pytest.approx(pooled.std())
    # a feature every partner withheld stays unscaled rather than inventing statistics
    assert combine_statistics(cells, task)["monthly_charges"] == (0.0, 1.0)
    assert partner_rows(cells) == {"P0": 50, "P1": 80, "P2": 30}


def _proxy(node_id: int) -> SimpleNamespace:
    return SimpleNamespace(node_id=node_id)


def _fitres(n: int) -> FitRes:
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.ones(2, dtype=np.float32)]), n, {})


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm"])
def test_every_strategy_refuses_to_aggregate_over_fewer_partners(name: str) -> None:
    strategy = make_strategy(name, num_partners=3, node_names={1: "A", 2: "B", 3: "C"},
                             initial_parameters=ndarrays_to_parameters([np.zeros(2, dtype=np.float32)]),
                             on_fit_config_fn=lambda r: {}, on_evaluate_config_fn=lambda r: {})
    strategy._sampled[("fit", 1)] = {1, 2, 3}  # type: ignore[attr-defined]
    with pytest.raises(RoundFailed, match=r"round 1 failed at stage 'fit': partner\(s\) B"):
        strategy.aggregate_fit(1, [(_proxy(1), _fitres(10)), (_proxy(3), _fitres(10))], [])
    failed = FitRes(Status(Code.FIT_NOT_IMPLEMENTED, "boom"), ndarrays_to_parameters([]), 0, {})
    with pytest.raises(RoundFailed, match=r"partner\(s\) C — 2 of 3 delivered, min_partners is 3 — status .*boom"):
        strategy.aggregate_fit(1, [(_proxy(n), _fitres(10)) for n in (1, 2)], [(_proxy(3), failed)])
    params, _ = strategy.aggregate_fit(1, [(_proxy(n), _fitres(10)) for n in (1, 2, 3)], [])
    assert params is not None


def test_partner_error_is_dug_out_of_rays_wrapper() -> None:
    wrapped = ("Error(code=2, reason=\"<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::x\\\\n"
               "flwr.clientapp.client_app.ClientAppException: \\\\nException ClientAppException occurred. "
               "Message: partner B: evaluation in round 2 covers fewer customers than the minimum of 10\\'>\")")
    assert short_reason(wrapped) == "partner B: evaluation in round 2 covers fewer customers than the minimum of 10"


def test_run_config_refuses_unsafe_or_incomplete_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="allow_fewer_partners"):  # replaced by min_partners: a typo never passes
        load_run_config(None, {"task": TASK, "allow_fewer_partners": True})
    with pytest.raises(ConfigError, match="min_partners"):
        load_run_config(None, {"task": TASK, "min_partners": 1})
    # What each partner decides is no run setting: a config that still has it is refused, saying where it lives.
    with pytest.raises(ConfigError, match="'consent_as_of' is not a run setting: each partner evaluates consent at its own clock"):
        load_run_config(None, {"task": TASK, "rounds": 2, "consent_as_of": ["2026-01-01T00:00:00Z"] * 3})
    with pytest.raises(ConfigError, match="'purpose' is not a run setting.*fedcrm client approve"):
        load_run_config(None, {"task": TASK, "purpose": "aggregate_analytics"})
    with pytest.raises(ConfigError, match=r"'min_count' is not a run setting.*\[privacy\] min_count"):
        load_run_config(None, {"task": TASK, "min_count": 5})
    bad = tmp_path / "run.toml"
    bad.write_text("[run]\ntask = 'x.yaml'\nrounds = 'many'\n")
    with pytest.raises(ConfigError, match=r"run\.toml.*rounds"):
        load_run_config(bad, {})
    assert load_run_config(DATASETS / "telco" / "run.toml", {}).aggregation == "secagg"
    assert RunConfig(task=TASK).aggregation == "secagg", "secure aggregation must be the default"


def test_registry_refuses_a_model_that_does_not_match_the_manifest(tmp_path: Path) -> None:
    model = save_model_arrays(tmp_path / "model" / "final.safetensors", ["w"], [np.ones(3, dtype=np.float32)],
                              {"architecture": "logistic"})
    write_manifest(tmp_path)
    names, arrays, _ = load_run_model(tmp_path)
    assert names == ["w"] and arrays[0].tolist() == [1, 1, 1]
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match"):
        load_run_model(tmp_path)


def test_rounds_are_rebuilt_from_the_event_stream() -> None:
    events = [
        {"event": "round_start", "round": 1, "at": "t1"},
        {"event": "secagg_stage", "round": 1, "stage": "setup", "partners": ["A", "B"]},
        {"event": "fit", "round": 1, "partners": {"A": {}, "B": {}}},
        {"event": "evaluate", "round": 1, "loss": 0.5, "federated": {"roc_auc": 0.8}, "partners": {}},
    ]
    rounds = rounds_from_events(events)
    assert rounds == [{"round": 1, "consent_as_of": "t1", "secagg_stages": {"setup": ["A", "B"]},
                       "fit": {"A": {}, "B": {}}, "federated": {"loss": 0.5, "roc_auc": 0.8}, "evaluate": {}}]
    json.dumps(rounds)
