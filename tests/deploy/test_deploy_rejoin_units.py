"""A restarted partner's new SuperNode is asked who it is; Flower's ServerApp start-up window; fast, no processes.

The real-process versions are in tests/coordinator/test_coordinator_deployment_dropout.py.
"""

from __future__ import annotations

import importlib

import pytest
from flwr.common import ndarrays_to_parameters
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from fedcrm.coordinator.strategies import make_strategy
from fedcrm.coordinator.superlink_main import TOKEN_MODULES, patch_task_heartbeat, task_heartbeat_s


class Proxy(ClientProxy):
    """A node the client manager knows; never called (only sampled)."""

    def __init__(self, node_id: int) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id

    def get_properties(self, *a, **k):  # noqa: ANN002, ANN003, ANN201
        raise NotImplementedError

    get_parameters = fit = evaluate = reconnect = get_properties


def _strategy(node_names: dict[int, str], min_partners: int = 2):  # noqa: ANN202
    import numpy as np

    return make_strategy("fedavg", num_partners=3, node_names=node_names, min_partners=min_partners, wait_s=1,
                         initial_parameters=ndarrays_to_parameters([np.zeros(2)]),
                         on_fit_config_fn=lambda r: {}, on_evaluate_config_fn=lambda r: {})


def _manager(*node_ids: int) -> SimpleClientManager:
    manager = SimpleClientManager()
    for n in node_ids:
        manager.register(Proxy(n))
    return manager


def test_a_restarted_partner_is_asked_who_it_is_and_takes_part_under_its_name() -> None:
    names = {1: "A", 2: "B", 3: "C"}
    strategy = _strategy(names)
    asked: list[tuple[int, list[int]]] = []

    def identify(server_round: int, nodes: list[int]) -> None:
        asked.append((server_round, nodes))
        names[7] = "B"  # node 7 answered the hello as partner B; node 9 did not answer as a partner

    strategy.identify = identify
    # B's old node 2 is still listed (its heartbeats have not expired yet); 7 is its new SuperNode.
    instructions = strategy.configure_fit(2, ndarrays_to_parameters([]), _manager(1, 2, 3, 7, 9))
    assert asked == [(2, [7, 9])]
    assert sorted(p.node_id for p, _ in instructions) == [1, 3, 7]
    assert names == {1: "A", 3: "C", 7: "B"}, "B's old node is retired; no partner has two nodes"
    # Next stage: nobody is asked again, the stranger and the retired node stay out.
    instructions = strategy.configure_evaluate(2, ndarrays_to_parameters([]), _manager(1, 2, 3, 7, 9))
    assert asked == [(2, [7, 9])]
    assert sorted(p.node_id for p, _ in instructions) == [1, 3, 7]


def test_known_nodes_are_never_asked_again() -> None:
    strategy = _strategy({1: "A", 2: "B", 3: "C"})
    strategy.identify = lambda r, nodes: pytest.fail(f"asked {nodes}")
    instructions = strategy.configure_fit(1, ndarrays_to_parameters([]), _manager(1, 2, 3))
    assert sorted(p.node_id for p, _ in instructions) == [1, 2, 3]


def test_the_serverapp_start_up_window_is_raised_in_the_superlink_only(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = [importlib.import_module(m) for m in TOKEN_MODULES]
    for module in modules:
        monkeypatch.setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", module.HEARTBEAT_DEFAULT_INTERVAL)
    monkeypatch.delenv("FEDCRM_TASK_HEARTBEAT_S", raising=False)
    patch_task_heartbeat(task_heartbeat_s())
    assert [m.HEARTBEAT_DEFAULT_INTERVAL for m in modules] == [120, 120]
    from flwr.common import constant

    assert constant.HEARTBEAT_DEFAULT_INTERVAL == 30, "SuperNodes and the ServerApp keep Flower's own interval"
    monkeypatch.setenv("FEDCRM_TASK_HEARTBEAT_S", "10")
    with pytest.raises(SystemExit, match="30 to 1800"):
        task_heartbeat_s()
    monkeypatch.setenv("FEDCRM_TASK_HEARTBEAT_S", "soon")
    with pytest.raises(SystemExit, match="whole seconds"):
        task_heartbeat_s()
