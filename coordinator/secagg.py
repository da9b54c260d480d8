"""SecAgg+ that fails loudly and proves it ran.

Flower's ``SecAggPlusWorkflow`` tolerates dropouts and, when it cannot finish, logs
"Secure aggregation halted", keeps the old global model and lets the run end with exit
code 0. Here every stage must complete for every sampled partner, or the round fails
naming the partner(s) and the stage; and each stage's participants are recorded so the
run directory proves secure aggregation ran for every node in every round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from flwr.app import Context
from flwr.server import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp.grid import Grid

from fedcrm.coordinator.strategies import NodeNames, failure_reasons
from fedcrm.errors import SecureAggregationHalted

STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")

StageCallback = Callable[[int, str, list[str]], None]


class StrictSecAggPlusWorkflow(SecAggPlusWorkflow):
    """SecAgg+ in which every sampled partner must complete every stage."""

    def __init__(self, *args: object, node_names: NodeNames, on_stage: StageCallback | None = None, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.node_names = node_names
        self.on_stage = on_stage

    def _names(self, node_ids: set[int]) -> list[str]:
        return [self.node_names.get(n, f"node {n}") for n in sorted(node_ids)]

    def __call__(self, grid: Grid, context: Context) -> None:
        """Run the four SecAgg+ stages; raise on any dropout, failure or halt."""
        if not isinstance(context, LegacyContext):
            raise TypeError(f"Expect a LegacyContext, but got {type(context).__name__}.")
        server_round = cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
        state = WorkflowState()
        steps = (self.setup_stage, self.share_keys_stage, self.collect_masked_vectors_stage, self.unmask_stage)
        for stage, step in zip(STAGES, steps, strict=True):
            # Snapshot before the stage: the unmask stage consumes the failures list.
            completed = step(grid, context, state)
            expected = set(state.sampled_node_ids)
            active = set(state.active_node_ids)
            missing = expected - active
            if not expected:
                raise SecureAggregationHalted(server_round, stage, [], "no partner was sampled")
            if missing or not completed or state.failures:
                raise SecureAggregationHalted(
                    server_round,
                    stage,
                    self._names(missing),
                    failure_reasons(state.failures) or "secure aggregation could not complete",
                )
            if self.on_stage is not None:
                self.on_stage(server_round, stage, self._names(active))
