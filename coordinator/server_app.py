"""The coordinator's Flower ServerApp: the only coordinator module that sends messages.

Round 0 is a handshake (which node is which partner) and the federated statistics
round (counts, sums, sums of squares → scaling; partner sizes → SecAgg+ ``max_weight``).
Then ``rounds`` rounds of training and federated evaluation on Flower's legacy path,
through the strict SecAgg+ workflow by default. Every order is a typed message from
``fedcrm.protocol`` carrying the protocol version, run, round and the task schema with its
hash; every reply is decoded by its model. The coordinator asks, the partner decides: it
sends no consent time, purpose or minimum count (each partner uses its own clock, the
purpose of its approval of the task, and its own privacy settings).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import flwr.compat.common.recorddict_compat as compat
from flwr.app import Context, Message
from flwr.common import GetPropertiesIns, Scalar, parameters_to_ndarrays
from flwr.common.constant import MessageTypeLegacy
from flwr.server import ServerApp
from flwr.serverapp.grid import Grid

from fedcrm.coordinator.federated_stats import combine_statistics, partner_rows
from fedcrm.coordinator.grid_polling import responsive
from fedcrm.coordinator.recorder import RunRecorder
from fedcrm.coordinator.run_config import RunPlan
from fedcrm.coordinator.rounds import run_rounds
from fedcrm.coordinator.secure_sum import SecureSumSettings, secure_sum
from fedcrm.coordinator.strategies import NodeNames, short_reason
from fedcrm.errors import FedcrmError, RoundFailed
from fedcrm.logging import get_logger
from fedcrm.models.nets import build_model
from fedcrm.models.params import get_arrays, get_names
from fedcrm.protocol import (
    ROWS_KEY,
    EvaluateMetrics,
    EvaluateOrder,
    FitMetrics,
    FitOrder,
    HelloOrder,
    HelloReply,
    SecureStatisticsOrder,
    SecureSumReceipt,
    StatisticsOrder,
    StatisticsReply,
    TaskSchema,
    statistics_cells,
)
from fedcrm.secure_vector import SecureVectorCodec

log = get_logger(__name__)

PLAN_KEY = "fedcrm-plan"
NODE_WAIT_S = 120.0


class Federation:
    """One run's coordinator state: plan, task, partners, recorder."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.cfg = plan.config
        self.task = TaskSchema.model_validate_json(plan.task_schema_json)
        model = build_model(self.cfg.architecture, self.task.width, seed=self.cfg.seed)
        self.initial = get_arrays(model)
        self.recorder = RunRecorder(
            plan.run_dir,
            get_names(model),
            {"architecture": self.cfg.architecture, "n_features": self.task.width, "task": self.task.name,
             "task_schema_sha256": self.task.sha256(), "feature_names": self.task.encoded_names()},
        )
        self.node_names: NodeNames = {}
        self.run_partners: set[str] = set()  # names learnt at the handshake
        self.scaling: dict[str, tuple[float, float]] = {}
        self.max_weight = 1.0

    # -- the orders -----------------------------------------------------------------------
    def _task_fields(self, server_round: int) -> dict[str, Any]:
        """What every task order carries: run, round, the task schema and its hash."""
        return {"run_id": self.plan.run_id, "server_round": server_round, "task_schema": self.task,
                "task_schema_sha256": self.task.sha256()}

    def fit_order(self, server_round: int) -> FitOrder:
        """The order of a training round."""
        secagg = self.cfg.aggregation == "secagg"
        return FitOrder(
            **self._task_fields(server_round),
            architecture=self.cfg.architecture,
            scaling=self.scaling,
            local_epochs=self.cfg.local_epochs,
            learning_rate=self.cfg.learning_rate,
            batch_size=self.cfg.batch_size,
            optimizer=self.cfg.optimizer,
            proximal_mu=self.cfg.proximal_mu if self.cfg.strategy == "fedprox" else 0.0,
            seed=self.cfg.seed,
            project_params=self.cfg.project_params,
            max_weight=self.max_weight if secagg else None,
            clipping_range=self.cfg.clipping_range if secagg else None,
            **self._dp_fields(),
        )

    def _dp_fields(self) -> dict[str, Any]:
        """What a fit order asks of the partners' differential privacy (they decide)."""
        dp = self.cfg.dp
        if dp.mode != "record":
            return {"dp_mode": dp.mode}
        return {"dp_mode": "record", "dp_target_epsilon": dp.target_epsilon, "dp_delta": dp.delta,
                "dp_max_grad_norm": dp.max_grad_norm, "dp_planned_rounds": self.cfg.rounds}

    def fit_config(self, server_round: int) -> dict[str, Scalar]:
        """Flower config of a training round (the strategy's ``on_fit_config_fn``)."""
        # When the coordinator started the round, by its clock; partners report the consent time they used.
        self.recorder.event("round_start", round=server_round, at=datetime.now(UTC).isoformat())
        return dict(self.fit_order(server_round).to_config())

    def evaluate_config(self, server_round: int) -> dict[str, Scalar]:
        """Flower config of a federated-evaluation round (the strategy's ``on_evaluate_config_fn``)."""
        order = EvaluateOrder(**self._task_fields(server_round), architecture=self.cfg.architecture,
                              scaling=self.scaling)
        return dict(order.to_config())

    # -- callbacks from the strategy and the SecAgg+ workflow ------------------------------
    def on_fit(self, server_round: int, parameters: Any, results: list[Any]) -> None:
        arrays = parameters_to_ndarrays(parameters)
        self.recorder.model(f"round-{server_round}", arrays, model_version=f"{self.plan.run_id}:{server_round}")
        partners = {}
        for proxy, res in results:
            name = self.node_names.get(proxy.node_id, str(proxy.node_id))
            metrics = FitMetrics.from_config(res.metrics)
            partners[name] = {"num_examples": res.num_examples, "loss": metrics.loss,
                              "consent_as_of": metrics.consent_as_of.isoformat()}
            if metrics.dp is not None:
                partners[name]["dp"] = metrics.dp.model_dump()
            self.recorder.head(name, server_round, "fit", metrics.ledger_checkpoint)
        self.recorder.event("fit", round=server_round, partners=partners)

    def on_evaluate(self, server_round: int, loss: float, results: list[Any]) -> None:
        partners: dict[str, dict[str, Any]] = {}
        weighted: dict[str, list[tuple[float, int]]] = {}
        for proxy, res in results:
            name = self.node_names.get(proxy.node_id, str(proxy.node_id))
            metrics = EvaluateMetrics.from_config(res.metrics)
            entry: dict[str, Any] = {"num_examples": res.num_examples, "loss": res.loss,
                                     "consent_as_of": metrics.consent_as_of.isoformat()}
            for metric, value in metrics.ranking().items():
                entry[metric] = value
                weighted.setdefault(metric, []).append((value, res.num_examples))
            partners[name] = entry
            self.recorder.head(name, server_round, "evaluate", metrics.ledger_checkpoint)
        federated = {m: sum(v * n for v, n in vals) / sum(n for _, n in vals) for m, vals in weighted.items()}
        self.recorder.event("evaluate", round=server_round, loss=loss, federated=federated, partners=partners)

    def on_stage(self, server_round: int, stage: str, partners: list[str]) -> None:
        self.recorder.event("secagg_stage", round=server_round, stage=stage, partners=partners)

    # -- round 0 ---------------------------------------------------------------------------
    def query(
        self, grid: Grid, node_ids: list[int], config: dict[str, Any], stage: str, timeout: float
    ) -> dict[int, dict[str, Scalar]]:
        """Send a legacy get_properties message to every node; fail naming anyone who did not answer."""
        content = compat.getpropertiesins_to_recorddict(GetPropertiesIns(config=dict(config)))
        messages = [
            Message(content=content, dst_node_id=n, message_type=MessageTypeLegacy.GET_PROPERTIES, group_id="0")
            for n in node_ids
        ]
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        answers: dict[int, dict[str, Scalar]] = {}
        errors: list[str] = []
        for reply in replies:
            if reply.has_error():
                errors.append(short_reason(str(reply.error.reason)))
                continue
            answers[reply.metadata.src_node_id] = dict(compat.recorddict_to_getpropertiesres(reply.content).properties)
        missing = set(node_ids) - set(answers)
        if missing or errors:
            names = [self.node_names.get(n, f"node {n}") for n in sorted(missing)]
            raise RoundFailed(0, stage, names, "; ".join(errors))
        return answers

    def handshake_and_statistics(self, grid: Grid) -> None:
        """Learn which node is which partner, then run the statistics round."""
        self.statistics(grid, self.handshake(grid))

    def handshake(self, grid: Grid) -> list[int]:
        """Wait for every partner and learn which node is which (also the first step of a resume)."""
        node_ids = wait_for_nodes(grid, self.plan.num_partners, self.cfg.connect_timeout)
        # The first message also starts each partner's ClientApp (imports, warm-up): it may take as long as
        # connecting or as a stage, whichever is longer.
        wait = max(self.cfg.connect_timeout, self.cfg.stage_timeout)
        hello = self.query(grid, node_ids, HelloOrder(run_id=self.plan.run_id).to_config(), "hello", wait)
        self.node_names.update({n: HelloReply.from_config(a).partner for n, a in hello.items()})
        self.run_partners = set(self.node_names.values())
        self.recorder.event("partners", partners=sorted(self.node_names.values()))
        return node_ids

    def identify(self, grid: Grid, server_round: int, node_ids: list[int]) -> None:
        """Ask nodes the run has not seen who they are (a restarted partner's SuperNode has a new node id).

        A node answering as one of this run's partners is known by that name from now on
        (a ``rejoin`` event); any other answer, or none within the stage timeout, leaves it
        unknown, and the strategy never samples it.
        """
        content = compat.getpropertiesins_to_recorddict(
            GetPropertiesIns(config=dict(HelloOrder(run_id=self.plan.run_id).to_config())))
        messages = [Message(content=content, dst_node_id=n, message_type=MessageTypeLegacy.GET_PROPERTIES,
                            group_id=str(server_round)) for n in node_ids]
        for reply in grid.send_and_receive(messages, timeout=self.cfg.stage_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                continue
            try:
                name = HelloReply.from_config(dict(compat.recorddict_to_getpropertiesres(reply.content).properties)).partner
            except FedcrmError:  # a protocol mismatch: not one of this run's partners
                continue
            if name in self.run_partners:
                self.node_names[node] = name
                self.recorder.event("rejoin", round=server_round, partner=name, node=node)

    def secure_settings(self) -> SecureSumSettings:
        """SecAgg+ settings of the run's secure sums: its partners, min_partners and stage timeout."""
        codec = SecureVectorCodec(quantization_range=self.cfg.quantization_range, modulus_range=self.cfg.modulus_range)
        return SecureSumSettings(num_partners=self.plan.num_partners,
                                 min_partners=self.cfg.min_partners_of(self.plan.num_partners),
                                 stage_timeout=self.cfg.stage_timeout, codec=codec)

    def secure_statistics(self, grid: Grid, node_ids: list[int]) -> None:
        """The statistics round through SecAgg+: the coordinator sees only sums over partners.

        ``max_weight`` becomes the consortium's customer count × headroom (no partner's own size
        is known, and none can exceed the total).
        """
        settings = self.secure_settings()
        cells = statistics_cells(self.task)
        codec = settings.codec
        order = SecureStatisticsOrder(**self._task_fields(0), cells=cells, dp_noise=self.cfg.dp.statistics,
                                      fraction_bits=codec.fraction_bits,
                                      limbs=codec.limbs, quantization_range=codec.quantization_range,
                                      modulus_range=codec.modulus_range)
        result = secure_sum(grid, order=dict(order.to_config()), cells=cells, node_ids=node_ids,
                            node_names=self.node_names, settings=settings, server_round=0, stage="stats",
                            on_stage=lambda r, stage, partners: self.recorder.event(
                                "secure_sum_stage", sum="stats", round=r, stage=stage, partners=partners))
        receipts = {name: SecureSumReceipt.from_config(r) for name, r in result.receipts.items()}
        for name, receipt in receipts.items():
            self.recorder.head(name, 0, "stats", receipt.ledger_checkpoint)
        self.scaling = combine_statistics({"consortium": result.sums}, self.task)
        total = int(round(result.sums[ROWS_KEY]))
        self.max_weight = float(total) * self.cfg.max_weight_headroom
        self.recorder.event("statistics", secure=True, partners=len(result.contributors), total_rows=total,
                            scaling=self.scaling, max_weight=self.max_weight, dp_noise_asked=order.dp_noise,
                            dp_epsilon={n: r.dp_epsilon for n, r in receipts.items() if r.dp_epsilon is not None},
                            error_bound=codec.error_bound(len(result.contributors)))

    def statistics(self, grid: Grid, node_ids: list[int]) -> None:
        """The federated statistics round: scaling, and partner sizes for SecAgg+ max_weight.

        Under secure aggregation (the default) it runs through SecAgg+ (:meth:`secure_statistics`);
        only a plain comparison run asks each partner for its cells in the clear.
        """
        if self.cfg.aggregation == "secagg":
            self.secure_statistics(grid, node_ids)
            return
        answers = self.query(grid, node_ids, StatisticsOrder(**self._task_fields(0), dp_noise=self.cfg.dp.statistics).to_config(), "stats",
                             self.cfg.stage_timeout)
        cells, spent = {}, {}
        for node, answer in answers.items():
            name = self.node_names[node]
            reply = StatisticsReply.from_config(answer)
            self.recorder.head(name, 0, "stats", reply.ledger_checkpoint)
            cells[name] = dict(reply.cells)
            if reply.dp_epsilon is not None:
                spent[name] = reply.dp_epsilon
        self.scaling = combine_statistics(cells, self.task)
        rows = partner_rows(cells)
        self.max_weight = float(max(rows.values())) * self.cfg.max_weight_headroom
        self.recorder.event("statistics", secure=False, partners=len(rows), partner_rows=rows, scaling=self.scaling,
                            max_weight=self.max_weight, dp_noise_asked=self.cfg.dp.statistics, dp_epsilon=spent)

    # -- the run ---------------------------------------------------------------------------
    def run(self, grid: Grid, context: Context) -> None:
        """Round 0, then the training rounds; then the final model."""
        self.recorder.event("run_start", run_id=self.plan.run_id, aggregation=self.cfg.aggregation)
        # Round 0 (or a resume's handshake), strategy, SecAgg+, dropouts, checkpoints: coordinator/rounds.py
        final = run_rounds(self, grid, context)
        # The best round's model unless the run config says final_model = "last" (coordinator/model_choice.py).
        self.recorder.model("final", final, model_version=f"{self.plan.run_id}:final",
                            **getattr(self, "final_meta", {}))
        self.recorder.event("run_end", run_id=self.plan.run_id)


def wait_for_nodes(grid: Grid, n: int, timeout: float = NODE_WAIT_S) -> list[int]:
    """Block until ``n`` partner nodes are connected."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes[:n]
        if time.monotonic() > deadline:
            raise RoundFailed(0, "connect", [], f"only {len(nodes)} of {n} partners connected within {timeout:.0f} s")
        time.sleep(0.2)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls: read the plan named in the run config and run it."""
    plan = RunPlan.load(str(context.run_config[PLAN_KEY]))
    # Flower's deployment grid sleeps a fixed 3 s between pulls for replies: see coordinator/grid_polling.py.
    if plan.analytics is not None:  # a federated analytics run: secure sums and PSI counts, no training
        from fedcrm.coordinator.analytics_run import run_analytics

        run_analytics(Federation(plan), responsive(grid))
        return
    Federation(plan).run(responsive(grid), context)
