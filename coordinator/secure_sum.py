"""A secure sum of named vectors over partners, through SecAgg+: the coordinator sees only the sum.

Every federated analytic that adds numbers up across partners (the statistics round,
k-means sums and counts, segment profiles, distributions) goes through :func:`secure_sum`:

- the order (any typed message of ``fedcrm.protocol`` carrying the cell names and the
  codec) travels as a Flower *train* message, so ``secaggplus_mod`` on the partner masks
  the reply; the partner's vector is encoded by :class:`fedcrm.secure_vector.SecureVectorCodec`
  (fixed point, balanced limbs, ``num_examples = 1``) so SecAgg+'s quantiser is exact;
- the SecAgg+ run is :class:`~fedcrm.coordinator.secagg.MinPartnersSecAggPlusWorkflow`
  with the run's ``min_partners``, ``stage_timeout`` and the shares/threshold of
  :func:`~fedcrm.coordinator.secagg.secagg_parameters`: it fails loudly naming missing
  partners and records every stage's participants;
- what comes back in the clear is each partner's *receipt* (name, consent time, ledger
  head): never a cell.

Error bound of a decoded sum over n partners: ``n · 2**-(fraction_bits+1)`` (counts exact);
see :mod:`fedcrm.secure_vector`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common import FitIns, Parameters, Scalar, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp.grid import Grid

from fedcrm.coordinator.secagg import MinPartnersSecAggPlusWorkflow, StageCallback, secagg_parameters
from fedcrm.coordinator.strategies import DropoutCallback, NodeNames
from fedcrm.errors import ProtocolError, SecureAggregationHalted
from fedcrm.secure_vector import SecureVectorCodec

_EMPTY = Parameters(tensors=[], tensor_type="numpy.ndarray")


@dataclass(frozen=True)
class SecureSumSettings:
    """SecAgg+ settings of a secure sum: the run's tolerance and timeouts, and the codec."""

    num_partners: int
    min_partners: int
    stage_timeout: float
    codec: SecureVectorCodec = SecureVectorCodec()

    def __post_init__(self) -> None:
        if self.num_partners > self.codec.max_partners():
            raise ValueError(f"{self.num_partners} partners exceed the {self.codec.max_partners()} a secure sum "
                             "can add up without wrapping the SecAgg+ modulus")


@dataclass(frozen=True)
class SecureSumResult:
    """The sum over the partners that contributed, and their receipts (never their cells)."""

    sums: dict[str, float]
    contributors: list[str]
    receipts: dict[str, dict[str, Scalar]]


class _SumStrategy(Strategy):
    """The one-round legacy strategy SecAgg+ needs: send the order to every node, keep the results."""

    def __init__(self, config: dict[str, Scalar], node_ids: Sequence[int]) -> None:
        self.config = config
        self.node_ids = set(node_ids)
        self.results: list[tuple[ClientProxy, Any]] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):  # noqa: ANN201
        proxies = [p for nid, p in client_manager.all().items() if int(nid) in self.node_ids]
        return [(p, FitIns(_EMPTY, dict(self.config))) for p in proxies]

    def aggregate_fit(self, server_round: int, results, failures):  # noqa: ANN001, ANN201
        self.results = list(results)
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):  # noqa: ANN201
        return []

    def aggregate_evaluate(self, server_round: int, results, failures):  # noqa: ANN001, ANN201
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters):  # noqa: ANN201
        return None


def secure_sum(
    grid: Grid,
    *,
    order: dict[str, Scalar],
    cells: Sequence[str],
    node_ids: Sequence[int],
    node_names: NodeNames,
    settings: SecureSumSettings,
    server_round: int,
    stage: str,
    on_stage: StageCallback | None = None,
    on_dropout: DropoutCallback | None = None,
) -> SecureSumResult:
    """Sum each partner's vector of ``cells`` (built for ``order``) through SecAgg+.

    ``grid`` should be the run's :class:`~fedcrm.coordinator.workflows.StageGrid` so that
    dropouts carry their reasons. Raises :class:`SecureAggregationHalted` naming the
    partners missing when fewer than ``min_partners`` contributed.
    """
    num_shares, threshold = secagg_parameters(settings.num_partners, settings.min_partners)
    codec = settings.codec
    run_id = grid.run.run_id
    # A context of its own: the SecAgg+ state of this sum never mixes with the training rounds' state.
    own = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
    manager = SimpleClientManager()
    for nid in node_ids:
        manager.register(GridClientProxy(node_id=nid, grid=grid, run_id=run_id))
    strategy = _SumStrategy(order, node_ids)
    legacy = LegacyContext(context=own, config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=manager)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(_EMPTY, keep_input=True)
    workflow = MinPartnersSecAggPlusWorkflow(
        num_shares=num_shares,
        reconstruction_threshold=threshold,
        max_weight=1.0,  # every partner sends num_examples = 1: the SecAgg+ weight is exactly 1
        clipping_range=codec.clipping_range,
        quantization_range=codec.quantization_range,
        modulus_range=codec.modulus_range,
        timeout=settings.stage_timeout,
        node_names=node_names,
        min_partners=settings.min_partners,
        on_stage=on_stage,
        on_dropout=on_dropout,
    )
    try:
        workflow(grid, legacy)
    except SecureAggregationHalted as exc:
        # Name the fedcrm stage the sum served ('stats', 'segments', …), and the SecAgg+ stage it stopped at.
        detail = str(exc).split(" — ", 1)[1] if " — " in str(exc) else ""
        raise SecureAggregationHalted(exc.server_round, stage, exc.partners,
                                      f"secure sum stopped at SecAgg+ stage '{exc.stage}'" + (f"; {detail}" if detail else "")
                                      ) from exc
    results = strategy.results
    names = [node_names.get(proxy.node_id, f"node {proxy.node_id}") for proxy, _ in results]
    if len(results) < settings.min_partners:
        raise SecureAggregationHalted(server_round, stage, [], f"{len(results)} partner(s) contributed, "
                                      f"min_partners is {settings.min_partners}")
    if any(res.num_examples != 1 for _, res in results):
        raise ProtocolError(f"{stage}: a partner sent a SecAgg+ weight other than 1; the sum would be scaled")
    arrays = parameters_to_ndarrays(results[0][1].parameters)
    if len(arrays) != 1:
        raise ProtocolError(f"{stage}: the secure sum came back as {len(arrays)} arrays, expected 1")
    sums = codec.decode(cells, np.asarray(arrays[0]), len(results))
    receipts = {name: dict(res.metrics) for name, (_, res) in zip(names, results, strict=True)}
    return SecureSumResult(sums=sums, contributors=sorted(names), receipts=receipts)


#: ``(order config, cells, server_round, stage) -> result``: how analytics drivers add vectors up
#: (:func:`secure_sum` bound to a federation, or an in-process sum in benchmarks and tests).
SumFunction = Callable[[dict[str, Scalar], Sequence[str], int, str], SecureSumResult]
