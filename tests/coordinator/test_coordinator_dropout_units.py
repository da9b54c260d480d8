"""Dropout tolerance, fault specs, checkpoints and run endings, without starting Flower or Ray."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from fedcrm.client.faults import message_stages
from fedcrm.coordinator.checkpoint import (
    Checkpoint,
    latest_round,
    load_checkpoint,
    prepare_resume,
    save_checkpoint,
)
from fedcrm.coordinator.registry import finalise_run_dir, list_runs, rounds_from_events, write_manifest
from fedcrm.coordinator.run_config import RunConfig
from fedcrm.coordinator.runner import check_partner_count
from fedcrm.coordinator.secagg import secagg_parameters
from fedcrm.coordinator.strategies import make_strategy
from fedcrm.errors import ConfigError, CoordinatorError, ModelIntegrityError, RoundFailed
from fedcrm.faults import ENV_VAR, check_fault_for_run, parse_fault
from fedcrm.paths import DATASETS

TASK = DATASETS / "tasks" / "telco_churn.yaml"


@pytest.mark.parametrize(("partners", "minimum", "expected"), [
    (3, 2, (3, 2)),   # the case: survives one dropout
    (3, 3, (3, 2)),   # strict (default): Flower needs threshold < shares
    (5, 3, (5, 3)),
    (4, 3, (4, 3)),
    (2, 2, (1.0, 1.0)),  # two partners: Flower's proportional form, 2 shares, threshold 2
])
def test_secagg_parameters_follow_partners_and_min_partners(partners: int, minimum: int, expected: tuple) -> None:
    assert secagg_parameters(partners, minimum) == expected


@pytest.mark.parametrize(("partners", "minimum", "message"), [
    (4, 2, "above half the partners"),
    (5, 2, "use min_partners >= 3"),
    (3, 1, "between 2 and"),
    (3, 4, "between 2 and"),
])
def test_secagg_refuses_combinations_it_cannot_survive_or_protect(partners: int, minimum: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        secagg_parameters(partners, minimum)


def test_run_refuses_min_partners_above_the_partner_count_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match="min_partners = 4 but the run has only 3 partners"):
        check_partner_count(RunConfig(task=TASK, min_partners=4), 3)
    with pytest.raises(ConfigError, match="aggregation = 'plain'"):
        check_partner_count(RunConfig(task=TASK, min_partners=2), 4)
    check_partner_count(RunConfig(task=TASK, min_partners=2, aggregation="plain"), 4)  # plain FedAvg: fine


def _proxy(node_id: int) -> SimpleNamespace:
    return SimpleNamespace(node_id=node_id)


def _fitres(n: int) -> FitRes:
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.ones(2, dtype=np.float32)]), n, {})


def test_a_round_with_min_partners_completes_and_records_who_was_missing_and_why() -> None:
    strategy = make_strategy("fedavg", num_partners=3, node_names={1: "A", 2: "B", 3: "C"}, min_partners=2,
                             initial_parameters=ndarrays_to_parameters([np.zeros(2, dtype=np.float32)]),
                             on_fit_config_fn=lambda r: {}, on_evaluate_config_fn=lambda r: {})
    dropouts: list[tuple[int, str, dict[str, str]]] = []
    strategy.on_dropout = lambda r, stage, partners: dropouts.append((r, stage, partners))  # type: ignore[attr-defined]
    strategy.missing_reasons = lambda: {2: "partner B: injected failure"}  # type: ignore[attr-defined]
    strategy._sampled[("fit", 2)] = {1, 2, 3}  # type: ignore[attr-defined]
    params, _ = strategy.aggregate_fit(2, [(_proxy(1), _fitres(10)), (_proxy(3), _fitres(30))], [RuntimeError("x")])
    assert params is not None
    assert dropouts == [(2, "fit", {"B": "partner B: injected failure"})]
    # one more missing is one too many: the run fails naming both
    strategy._sampled[("fit", 3)] = {1, 2, 3}  # type: ignore[attr-defined]
    strategy.missing_reasons = dict  # type: ignore[attr-defined]
    with pytest.raises(RoundFailed, match=r"round 3 failed at stage 'fit': partner\(s\) B, C — 1 of 3 delivered"):
        strategy.aggregate_fit(3, [(_proxy(1), _fitres(10))], [])


def test_a_partner_no_longer_connected_is_recorded_missing_and_too_few_fail_without_waiting_a_day() -> None:
    from flwr.server.client_manager import SimpleClientManager

    strategy = make_strategy("fedavg", num_partners=3, node_names={1: "A", 2: "B", 3: "C"}, min_partners=2,
                             wait_s=0.5, initial_parameters=ndarrays_to_parameters([np.zeros(2, dtype=np.float32)]),
                             on_fit_config_fn=lambda r: {}, on_evaluate_config_fn=lambda r: {})
    dropouts: list[tuple[int, str, dict[str, str]]] = []
    strategy.on_dropout = lambda r, stage, partners: dropouts.append((r, stage, partners))  # type: ignore[attr-defined]
    manager = SimpleClientManager()
    for node in (1, 3):
        manager.register(SimpleNamespace(node_id=node, cid=str(node)))  # type: ignore[arg-type]
    sampled = strategy.configure_fit(4, ndarrays_to_parameters([]), manager)
    assert sorted(proxy.node_id for proxy, _ in sampled) == [1, 3]
    assert dropouts == [(4, "fit", {"B": "not connected"})]
    manager.unregister(manager.all()["3"])
    with pytest.raises(RoundFailed, match=r"round 5 failed at stage 'fit': partner\(s\) B, C — only 1 partner"):
        strategy.configure_fit(5, ndarrays_to_parameters([]), manager)


@pytest.mark.parametrize("spec", ["B:fit:2", "B:fitt:2:raise", "B:fit:two:raise", "B:fit:2:explode", "B fit 2 raise",
                                  ":fit:1:raise"])
def test_a_malformed_fault_spec_is_refused_listing_the_accepted_forms(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="accepted: PARTNER:STAGE:ROUND:ACTION"):
        parse_fault(spec)
    monkeypatch.setenv(ENV_VAR, spec)
    with pytest.raises(ConfigError, match=ENV_VAR):
        check_fault_for_run("secagg")


def test_a_secagg_stage_under_plain_aggregation_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "C:share_keys:1:exit")
    with pytest.raises(ConfigError, match="exists only under SecAgg"):
        check_fault_for_run("plain")
    assert check_fault_for_run("secagg") == parse_fault("C:share_keys:1:exit")


def _message(message_type: str, group: str, records: dict[str, dict]) -> Message:
    """The parts of a Flower Message the fault hook reads (a real Message needs a running Flower app)."""
    content = RecordDict({name: ConfigRecord(values) for name, values in records.items()})
    return SimpleNamespace(content=content, metadata=SimpleNamespace(message_type=message_type,  # type: ignore[return-value]
                                                                     group_id=group))


def test_fit_fires_inside_secaggs_collect_masked_vectors_stage() -> None:
    """Under SecAgg+ the fit order rides inside collect_masked_vectors; `B:fit:1:raise` must fire there."""
    fault = parse_fault("B:fit:1:raise")
    collect = _message("train", "1", {"secaggplus_configs": {"stage": "collect_masked_vectors"},
                                      "fitins.config": {"fedcrm.stage": "fit"}})
    setup = _message("train", "1", {"secaggplus_configs": {"stage": "setup"}})
    assert message_stages(collect) == {"collect_masked_vectors", "fit"}
    assert fault.matches("B", message_stages(collect), collect.metadata.group_id)
    assert not fault.matches("B", message_stages(setup), "1")
    assert not fault.matches("A", message_stages(collect), "1")
    assert not fault.matches("B", message_stages(collect), "2")
    assert message_stages(_message("train", "2", {"fitins.config": {}})) == {"fit"}
    assert message_stages(_message("evaluate", "2", {"evaluateins.config": {}})) == {"evaluate"}
    assert message_stages(_message("get_properties", "0", {"getpropertiesins.config": {"fedcrm.stage": "stats"}})) \
        == {"stats"}
    from fedcrm.protocol import HelloOrder

    hello = _message("get_properties", "0", {"getpropertiesins.config": dict(HelloOrder(run_id="r").to_config())})
    assert message_stages(hello) == {"hello"} and parse_fault("A:hello:0:exit").matches("A", message_stages(hello), "0")


def _checkpoint(server_round: int) -> Checkpoint:
    return Checkpoint(server_round=server_round, parameter_names=["w", "b"],
                      parameters=[np.arange(6, dtype=np.float32).reshape(2, 3) + server_round, np.ones(3, np.float32)],
                      strategy_state={"m_t": [np.full(3, 0.5, np.float32)]}, random_state=random.getstate(),
                      scaling={"tenure_months": (10.0, 2.0)}, max_weight=2900.5, node_names={7: "A", 9: "B"})


def test_checkpoints_round_trip_only_when_the_manifest_covers_them(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    save_checkpoint(tmp_path, _checkpoint(2))
    assert latest_round(tmp_path) == 2
    with pytest.raises(ModelIntegrityError, match="no manifest.json"):
        load_checkpoint(tmp_path)
    write_manifest(tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert loaded.server_round == 2 and loaded.parameter_names == ["w", "b"]
    assert np.array_equal(loaded.parameters[0], _checkpoint(2).parameters[0])
    assert np.array_equal(loaded.strategy_state["m_t"][0], np.full(3, 0.5))
    assert loaded.scaling == {"tenure_months": (10.0, 2.0)} and loaded.node_names == {7: "A", 9: "B"}
    random.setstate(loaded.random_state)  # a valid RNG state
    arrays = tmp_path / "checkpoint" / "round-2.safetensors"
    data = bytearray(arrays.read_bytes())
    data[-1] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match the run's manifest"):
        load_checkpoint(tmp_path)
    assert load_checkpoint(tmp_path, 1).server_round == 1
    with pytest.raises(CoordinatorError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_a_resume_is_prepared_only_from_a_checkpoint_the_manifest_covers(tmp_path: Path) -> None:
    from pydantic import BaseModel

    class Plan(BaseModel):
        run_id: str = "r"
        resume_from_round: int = 0

    save_checkpoint(tmp_path, _checkpoint(1))
    models = tmp_path / "model"
    models.mkdir()
    for k in (1, 2):
        (models / f"round-{k}.safetensors").write_bytes(b"m")
        (models / f"round-{k}.json").write_text("{}")
    with pytest.raises(ModelIntegrityError):  # no manifest yet: nothing is touched
        prepare_resume(tmp_path, Plan())
    assert (models / "round-2.safetensors").exists()
    write_manifest(tmp_path)
    resumed, path = prepare_resume(tmp_path, Plan())
    assert resumed.resume_from_round == 1 and path == tmp_path / "plan-resume-1.json"
    assert Plan.model_validate_json(path.read_text()) == resumed
    assert sorted(p.name for p in models.iterdir()) == ["round-1.json", "round-1.safetensors"]


def test_registry_counts_completed_rounds_and_records_how_a_run_ended(tmp_path: Path) -> None:
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    plan = {"run_id": "r1", "num_partners": 3, "task_schema_json": json.dumps({"name": "t"}),
            "config": {"rounds": 3, "aggregation": "secagg", "strategy": "fedavg", "architecture": "mlp"}}
    (run_dir / "plan.json").write_text(json.dumps(plan))
    events = [
        {"event": "round_start", "round": 1, "at": "t1"},
        {"event": "evaluate", "round": 1, "loss": 0.5, "federated": {"roc_auc": 0.8}, "partners": {}},
        {"event": "round_start", "round": 2, "at": "t2"},
        {"event": "dropout", "round": 2, "stage": "collect_masked_vectors", "partners": {"B": "injected"}},
        {"event": "fit", "round": 2, "partners": {"A": {}, "C": {}}},
    ]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    rounds = finalise_run_dir(run_dir, succeeded=False, error="killed: signal", wall_s=3.0, outcome="killed")
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["missing"] == {
        "collect_masked_vectors": {"B": "injected"}}
    status = json.loads((run_dir / "status.json").read_text())
    assert status["outcome"] == "killed" and status["rounds_completed"] == 1 and status["after_round"] == 1
    [listed] = list_runs(tmp_path)
    assert listed["rounds"] == 1 and listed["outcome"] == "killed" and listed["after_round"] == 1
    # A resume from round 1 discards what the killed coordinator recorded of round 2
    resumed = events + [{"event": "resume", "from_round": 1}, {"event": "round_start", "round": 2, "at": "t3"}]
    assert rounds_from_events(resumed)[1] == {"round": 2, "consent_as_of": "t3", "secagg_stages": {}}


def test_a_ray_node_that_did_not_start_is_told_apart_from_a_failed_run(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from fedcrm.coordinator.engine import LOG_OFFSET_VAR, ray_failed_to_start

    log = tmp_path / "engine.log"
    log.write_text("Exception: The current node timed out during startup. This could happen because ...\n")
    assert ray_failed_to_start(log)
    monkeypatch.setenv(LOG_OFFSET_VAR, str(log.stat().st_size))  # the next attempt reads only its own part
    with log.open("a") as handle:
        handle.write("fedcrm: run failed: round 1 failed at stage 'fit': partner(s) B\n")
    assert not ray_failed_to_start(log)
    assert not ray_failed_to_start(tmp_path / "missing.log")


def test_coordinator_run_refuses_a_malformed_fault_spec_before_anything_starts(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from fedcrm.cli import app

    monkeypatch.setenv(ENV_VAR, "B:fit:1")
    started = time.monotonic()
    result = CliRunner().invoke(app, ["coordinator", "run", "--task", str(TASK), "--runs-dir", str(tmp_path / "runs"),
                                      "--partner", str(tmp_path / "a.toml"), "--partner", str(tmp_path / "b.toml")])
    assert result.exit_code == 1, result.output
    assert "FEDCRM_FAULT_INJECTION" in result.output and "PARTNER:STAGE:ROUND:ACTION" in result.output
    assert time.monotonic() - started < 30 and not (tmp_path / "runs").exists(), "nothing may start"
