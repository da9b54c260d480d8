"""Flower workflows that never wait forever, remember why a partner is missing, and can start at any round.

Flower's legacy workflows call ``grid.send_and_receive(...)`` with ``timeout=None`` (wait
forever) and keep a failed reply's error but not which node sent it. :class:`StageGrid`
wraps the run's Grid: every exchange gets the run's per-stage timeout, and after each
exchange :attr:`StageGrid.missing` says, per node that did not deliver, why (its own
error, or no reply within the timeout). The strategies and the SecAgg+ workflow read it
to record each dropout with its reason.

:class:`RoundsWorkflow` is Flower's ``DefaultWorkflow`` loop with a first round other
than 1, so a resumed run continues with its real round numbers: round numbers are what
partners derive their training seeds from, what SecAgg+ puts in its group ids and what
the registry records.
"""

from __future__ import annotations

import time
import timeit
from collections.abc import Callable, Iterable
from logging import INFO
from typing import Any

from flwr.app import ConfigRecord, Context, Message
from flwr.server import LegacyContext
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.default_workflows import (
    default_centralized_evaluation_workflow,
    default_init_params_workflow,
)
from flwr.serverapp.grid import Grid
from flwr.supercore import log

from fedcrm.coordinator.strategies import short_reason


class StageGrid:
    """A Grid proxy: a timeout on every exchange, and who did not deliver in the last one, and why."""

    def __init__(self, grid: Grid, timeout_s: float) -> None:
        self._grid = grid
        self.timeout_s = timeout_s
        self.missing: dict[int, str] = {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's exchange, bounded by the stage timeout; fills :attr:`missing`."""
        messages = list(messages)
        wait = self.timeout_s if timeout is None else min(timeout, self.timeout_s)
        destinations = {m.metadata.dst_node_id for m in messages}
        started = time.monotonic()
        replies = list(self._grid.send_and_receive(messages, timeout=wait))
        elapsed = time.monotonic() - started
        missing: dict[int, str] = {}
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                missing[node] = short_reason(str(reply.error.reason)) or f"error code {reply.error.code}"
        # Flower may end an exchange before the timeout (a node it knows is gone): say which happened.
        silent = (f"no reply within the stage timeout of {wait:.0f} s" if elapsed >= wait - 0.5
                  else f"no reply (the exchange ended after {elapsed:.0f} s, before the stage timeout of {wait:.0f} s)")
        for node in destinations - answered:
            missing[node] = silent
        self.missing = missing
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class RoundsWorkflow(DefaultWorkflow):
    """Flower's default round loop (fit, centralised and federated evaluation), from ``first_round``."""

    def __init__(self, *args: Any, first_round: int = 1, stop: Callable[[int], bool] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_round = first_round
        self.stop = stop  # early stopping: asked after each round's federated evaluation

    def __call__(self, grid: Grid, context: Context) -> None:
        """Run rounds ``first_round`` … ``first_round + num_rounds - 1``."""
        if not isinstance(context, LegacyContext):
            raise TypeError(f"Expect a LegacyContext, but got {type(context).__name__}.")
        thread, f_stop, c_done = start_update_client_manager_thread(grid, context.client_manager)
        try:
            c_done.wait()
            default_init_params_workflow(grid, context)
            cfg = ConfigRecord()
            cfg[WorkflowKey.START_TIME] = timeit.default_timer()
            context.state.config_records[MAIN_CONFIGS_RECORD] = cfg
            for current_round in range(self.first_round, self.first_round + context.config.num_rounds):
                log(INFO, "[ROUND %s]", current_round)
                cfg[WorkflowKey.CURRENT_ROUND] = current_round
                self.fit_workflow(grid, context)
                default_centralized_evaluation_workflow(grid, context)
                self.evaluate_workflow(grid, context)
                if self.stop is not None and self.stop(current_round):
                    log(INFO, "[EARLY STOP] after round %s", current_round)
                    break
        finally:
            f_stop.set()
            thread.join()
