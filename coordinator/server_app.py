"""The coordinator's Flower ServerApp: the only coordinator module that sends messages.

Round 0 is a handshake (which node is which partner) and the federated statistics
round (counts, sums, sums of squares → scaling; partner sizes → SecAgg+ ``max_weight``).
Then ``rounds`` rounds of training and federated evaluation on Flower's legacy path,
through the strict SecAgg+ workflow by default. Every round's config carries the task
schema hash, the consent-as-of time and the model version ``<run_id>:<round>``.
"""

from __future__ import annotations

import json
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
from fedcrm.coordinator.strategies import NodeNames, short_reason
from fedcrm.errors import RoundFailed
from fedcrm.logging import get_logger
from fedcrm.models.nets import build_model
from fedcrm.models.params import get_arrays, get_names
from fedcrm.protocol import Key, Metric, TaskSchema

log = get_logger(__name__)

PLAN_KEY = "fedcrm-plan"
NODE_WAIT_S = 120.0


class Federation:
    """One run's coordinator state: plan, task, partners, recorder."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.cfg = plan.config
        self.task = TaskSchema.model_validate_json(plan.task_schema_json)
        self.purpose = self.cfg.purpose or self.task.purpose
        model = build_model(self.cfg.architecture, self.task.width, seed=self.cfg.seed)
        self.initial = get_arrays(model)
        self.recorder = RunRecorder(
            plan.run_dir,
            get_names(model),
            {"architecture": self.cfg.architecture, "n_features": self.task.width, "task": self.task.name,
             "task_schema_sha256": self.task.sha256(), "feature_names": self.task.encoded_names()},
        )
        self.node_names: NodeNames = {}
        self.scaling: dict[str, tuple[float, float]] = {}
        self.max_weight = 1.0
        self._round_at: dict[int, str] = {}

    # -- per-round configuration ----------------------------------------------------------
    def consent_as_of(self, server_round: int) -> str:
        """The consent-as-of time of a round: fixed by the run config, or the UTC clock at round start."""
        if server_round not in self._round_at:
            if self.cfg.consent_as_of:
                at = self.cfg.consent_as_of[server_round]
            else:
                at = datetime.now(UTC)
            self._round_at[server_round] = at.astimezone(UTC).isoformat()
        return self._round_at[server_round]

    def base_config(self, server_round: int, stage: str) -> dict[str, Scalar]:
        """Keys every message of a round carries."""
        return {
            Key.STAGE: stage,
            Key.RUN_ID: self.plan.run_id,
            Key.ROUND: server_round,
            Key.MODEL_VERSION: f"{self.plan.run_id}:{server_round}",
            Key.CONSENT_AS_OF: self.consent_as_of(server_round),
            Key.SCHEMA_HASH: self.task.sha256(),
            Key.PURPOSE: self.purpose,
            Key.MIN_COUNT: self.cfg.min_count,
            "fedcrm.task-schema": self.plan.task_schema_json,
        }

    def fit_config(self, server_round: int) -> dict[str, Scalar]:
        """Config of a training round."""
        self.recorder.event("round_start", round=server_round, at=self.consent_as_of(server_round))
        cfg = self.base_config(server_round, "fit")
        cfg.update({
            Key.SCALING: json.dumps(self.scaling),
            Key.LOCAL_EPOCHS: self.cfg.local_epochs,
            Key.LEARNING_RATE: self.cfg.learning_rate,
            Key.BATCH_SIZE: self.cfg.batch_size,
            Key.PROXIMAL_MU: self.cfg.proximal_mu if self.cfg.strategy == "fedprox" else 0.0,
            Key.SEED: self.cfg.seed,
            Key.PROJECT_PARAMS: self.cfg.project_params,
            "fedcrm.optimizer": self.cfg.optimizer,
            "fedcrm.architecture": self.cfg.architecture,
        })
        if self.cfg.aggregation == "secagg":
            cfg[Key.MAX_WEIGHT] = self.max_weight
            cfg[Key.CLIPPING_RANGE] = self.cfg.clipping_range
        return cfg

    def evaluate_config(self, server_round: int) -> dict[str, Scalar]:
        """Config of a federated-evaluation round."""
        cfg = self.base_config(server_round, "evaluate")
        cfg.update({Key.SCALING: json.dumps(self.scaling), "fedcrm.architecture": self.cfg.architecture})
        return cfg

    # -- callbacks from the strategy and the SecAgg+ workflow ------------------------------
    def on_fit(self, server_round: int, parameters: Any, results: list[Any]) -> None:
        arrays = parameters_to_ndarrays(parameters)
        self.recorder.model(f"round-{server_round}", arrays, model_version=f"{self.plan.run_id}:{server_round}")
        partners = {}
        for proxy, res in results:
            name = self.node_names.get(proxy.node_id, str(proxy.node_id))
            partners[name] = {"num_examples": res.num_examples, "loss": res.metrics.get(Metric.LOSS)}
            if "ledger_checkpoint" in res.metrics:
                self.recorder.head(name, server_round, "fit", str(res.metrics["ledger_checkpoint"]))
        self.recorder.event("fit", round=server_round, partners=partners)

    def on_evaluate(self, server_round: int, loss: float, results: list[Any]) -> None:
        partners: dict[str, dict[str, Any]] = {}
        weighted: dict[str, list[tuple[float, int]]] = {}
        for proxy, res in results:
            name = self.node_names.get(proxy.node_id, str(proxy.node_id))
            entry = {"num_examples": res.num_examples, "loss": res.loss}
            for metric in (Metric.ROC_AUC, Metric.PR_AUC, Metric.TOP_DECILE_LIFT):
                if metric in res.metrics:
                    entry[str(metric)] = float(res.metrics[metric])
                    weighted.setdefault(str(metric), []).append((float(res.metrics[metric]), res.num_examples))
            partners[name] = entry
            if "ledger_checkpoint" in res.metrics:
                self.recorder.head(name, server_round, "evaluate", str(res.metrics["ledger_checkpoint"]))
        federated = {m: sum(v * n for v, n in vals) / sum(n for _, n in vals) for m, vals in weighted.items()}
        self.recorder.event("evaluate", round=server_round, loss=loss, federated=federated, partners=partners)

    def on_stage(self, server_round: int, stage: str, partners: list[str]) -> None:
        self.recorder.event("secagg_stage", round=server_round, stage=stage, partners=partners)

    # -- round 0 ---------------------------------------------------------------------------
    def query(self, grid: Grid, node_ids: list[int], config: dict[str, Scalar], stage: str) -> dict[int, dict[str, Scalar]]:
        """Send a legacy get_properties message to every node; fail naming anyone who did not answer."""
        content = compat.getpropertiesins_to_recorddict(GetPropertiesIns(config=config))
        messages = [
            Message(content=content, dst_node_id=n, message_type=MessageTypeLegacy.GET_PROPERTIES, group_id="0")
            for n in node_ids
        ]
        replies = list(grid.send_and_receive(messages, timeout=NODE_WAIT_S))
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
        hello = self.query(grid, node_ids, {Key.STAGE: "hello"}, "hello")
        self.node_names.update({n: str(a[Metric.PARTNER]) for n, a in hello.items()})
        self.recorder.event("partners", partners=sorted(self.node_names.values()))
        return node_ids

    def statistics(self, grid: Grid, node_ids: list[int]) -> None:
        """The federated statistics round: scaling, and partner sizes for SecAgg+ max_weight."""
        answers = self.query(grid, node_ids, self.base_config(0, "stats"), "stats")
        cells = {}
        for node, answer in answers.items():
            name = self.node_names[node]
            if "ledger_checkpoint" in answer:
                self.recorder.head(name, 0, "stats", str(answer.pop("ledger_checkpoint")))
            answer.pop(Metric.PARTNER, None)
            cells[name] = {k: float(v) for k, v in answer.items()}  # type: ignore[arg-type]
        self.scaling = combine_statistics(cells, self.task)
        rows = partner_rows(cells)
        self.max_weight = float(max(rows.values())) * self.cfg.max_weight_headroom
        self.recorder.event("statistics", partner_rows=rows, scaling=self.scaling, max_weight=self.max_weight)

    # -- the run ---------------------------------------------------------------------------
    def run(self, grid: Grid, context: Context) -> None:
        """Round 0, then the training rounds; then the final model."""
        self.recorder.event("run_start", run_id=self.plan.run_id, aggregation=self.cfg.aggregation)
        # Round 0 (or a resume's handshake), strategy, SecAgg+, dropouts, checkpoints: coordinator/rounds.py
        final = run_rounds(self, grid, context)
        self.recorder.model("final", final, model_version=f"{self.plan.run_id}:final")
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
    Federation(plan).run(responsive(grid), context)
