"""SecAgg+ with explicit dropout tolerance that fails loudly and proves it ran.

Flower's ``SecAggPlusWorkflow`` tolerates dropouts and, when it cannot finish, logs
"Secure aggregation halted", keeps the old global model and lets the run end with exit
code 0. Here a round completes only if at least the run's ``min_partners`` completed the
stages that put their update into the aggregate; every partner that dropped out is
recorded with the stage and the reason; a halt or too few partners fails the round
naming them. Each stage's participants are recorded, so the run directory proves secure
aggregation ran for every contributing partner in every round.

Parameters (:func:`secagg_parameters`), for ``n`` partners and ``m = min_partners``:

- up to :data:`COMPLETE_GRAPH_MAX` (21) partners, ``num_shares`` = every partner: each
  partner splits its mask seed and its key into one share per partner (SecAgg+'s
  neighbour graph is complete);
- ``reconstruction_threshold`` t = m, except that Flower requires t < num_shares, so a
  strict run (m = n) uses t = n - 1. A stage goes on while at least t partners are live
  (each live partner holds one share of everyone's secrets), so a round survives
  n - m dropouts; fewer than t colluding partners learn nothing of anyone's secrets;
- above 21 partners, ``num_shares`` k = 21: each partner shares its secrets with itself
  and its 20 neighbours on the ring Flower shuffles afresh every round (SecAgg+'s sparse
  graph, Bell et al. 2020), and t = m/n of k rounded up, at most k - 1, always above k/2
  (a strict run: t = 20). Shamir sharing and reconstruction are pure Python in Flower:
  with the complete graph a round costs O(n^3) (measured in-process at 50 partners: 90 s
  CPU for SecAgg+ alone, 65 s in the partners' ``share_keys``); with k fixed it is linear
  in n (17 s at 50; benchmarks/scale_partners.py). The price: a partner's secrets are
  protected against fewer than t colluders *among its neighbours* instead of among all
  partners, and each partner must keep t of its neighbours live to survive dropouts
  (min_partners still bounds the contributors of every stage);
- refused: m < 2, and m ≤ n/2. With t at or below half the partners a coordinator that
  lies about who dropped out could collect t shares of a partner's mask seed *and* t of
  its key, and unmask that partner's individual update (SecAgg's t > n/2 bound against
  an active server). With 3 partners only shares = 3, t = 2 is valid: it survives one
  dropout. Two partners cannot survive any (shares = threshold = 2).

Flower's workflow cannot survive a dropout before the key shares are out: a partner
lost at ``setup`` or ``share_keys`` stays in the "sampled" set, so at ``unmask`` the
others are asked for key shares they never received (a ``KeyError`` on every partner)
and the server would strip pairwise masks nobody added. Such a partner contributed
nothing to any mask, so after those two stages the protocol's sampled set and neighbour
graph are narrowed to the partners still live.
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

from fedcrm.coordinator.strategies import DropoutCallback, NodeNames, failure_reasons
from fedcrm.errors import SecureAggregationHalted

STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")

StageCallback = Callable[[int, str, list[str]], None]
#: Up to this many partners every partner holds a share of everyone's secrets; above it, of its
#: COMPLETE_GRAPH_MAX - 1 neighbours' (odd, as Flower's SecAgg+ ring wants).
COMPLETE_GRAPH_MAX = 21


def secagg_parameters(num_partners: int, min_partners: int) -> tuple[int | float, int | float]:
    """SecAgg+ ``(num_shares, reconstruction_threshold)`` for ``num_partners`` and ``min_partners``.

    Raises ValueError naming the fix for a combination SecAgg+ cannot survive or protect.
    """
    n, m = num_partners, min_partners
    if n < 2:
        raise ValueError(f"SecAgg+ needs at least 2 partners, got {n}")
    if not 2 <= m <= n:
        raise ValueError(f"min_partners must be between 2 and the number of partners ({n}), got {m}")
    if 2 * m <= n:
        raise ValueError(
            f"min_partners = {m} with {n} partners: SecAgg+ needs a reconstruction threshold above half the "
            f"partners (at or below half, a coordinator lying about dropouts could unmask one partner's update); "
            f"use min_partners >= {n // 2 + 1}, or aggregation = 'plain' (no secure aggregation)")
    if n == 2:
        return 1.0, 1.0  # Flower's only form for two partners: 2 shares, threshold 2 (no dropout survivable)
    if n <= COMPLETE_GRAPH_MAX:
        return n, min(m, n - 1)
    k = COMPLETE_GRAPH_MAX
    return k, max(k // 2 + 1, min(-(-k * m // n), k - 1))


class MinPartnersSecAggPlusWorkflow(SecAggPlusWorkflow):
    """SecAgg+ in which at least ``min_partners`` must put their update into every round's aggregate."""

    def __init__(self, *args: object, node_names: NodeNames, min_partners: int,
                 on_stage: StageCallback | None = None, on_dropout: DropoutCallback | None = None, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.node_names = node_names
        self.min_partners = min_partners
        self.on_stage = on_stage
        self.on_dropout = on_dropout

    def _names(self, node_ids: set[int]) -> list[str]:
        return [self.node_names.get(n, f"node {n}") for n in sorted(node_ids)]

    def __call__(self, grid: Grid, context: Context) -> None:
        """Run the four SecAgg+ stages; record every dropout; raise on a halt or too few partners."""
        if not isinstance(context, LegacyContext):
            raise TypeError(f"Expect a LegacyContext, but got {type(context).__name__}.")
        server_round = cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
        state = WorkflowState()
        steps = (self.setup_stage, self.share_keys_stage, self.collect_masked_vectors_stage, self.unmask_stage)
        lost: dict[int, str] = {}
        for stage, step in zip(STAGES, steps, strict=True):
            before = set(state.active_node_ids)
            completed = step(grid, context, state)
            if stage == "setup":
                before = set(state.sampled_node_ids)
            active = set(state.active_node_ids)
            if not before:
                raise SecureAggregationHalted(server_round, stage, [], "no partner was sampled")
            reasons = getattr(grid, "missing", {})
            dropped = {n: reasons.get(n, failure_reasons(state.failures) or "dropped out") for n in before - active}
            lost.update(dropped)
            if dropped and self.on_dropout is not None:
                self.on_dropout(server_round, stage, {self.node_names.get(n, f"node {n}"): r for n, r in dropped.items()})
            if stage in ("setup", "share_keys"):
                _narrow_to(state, active)
            contributors = active if stage != "unmask" else {proxy.node_id for proxy, _ in state.legacy_results}
            if not completed or len(contributors) < self.min_partners:
                detail = "; ".join(dict.fromkeys(lost.values())) or "secure aggregation could not complete"
                if completed:
                    detail = f"{len(contributors)} partner(s) left, min_partners is {self.min_partners} — {detail}"
                raise SecureAggregationHalted(server_round, stage, self._names(set(lost)), detail)
            if self.on_stage is not None:
                self.on_stage(server_round, stage, self._names(active))


def _narrow_to(state: WorkflowState, live: set[int]) -> None:
    """Forget partners lost before their key shares were out: they are in nobody's masks."""
    state.sampled_node_ids = set(live)
    state.nid_to_neighbours = {n: set(nb) & live for n, nb in state.nid_to_neighbours.items() if n in live}
    state.failures = []
