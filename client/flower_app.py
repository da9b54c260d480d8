"""The partner's Flower ClientApp: the only partner module that speaks Flower.

Secure aggregation works only on Flower's legacy path (``NumPyClient`` behind
``secaggplus_mod``; see docs/architecture.md), so that is the path used. Two apps are
exported: ``app`` (SecAgg+, the default) and ``plain_app`` (plain FedAvg, only when a
run config asks for it, for comparison). Both journal what leaves the partner.

Where the partner config comes from:
- deployment: the SuperNode's node config ``partner-config=/path/partner.toml``;
- simulation: the run config ``partner-config-<partition-id>`` (Flower's simulation
  node config holds only the partition id).
The coordinator passes the path through unread.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.serde import recorddict_to_proto

from fedcrm.client.egress import journal_message
from fedcrm.client.faults import configured_fault, fault_injection_mod
from fedcrm.client.partner_session import PartnerSession, RoundOrder, check_schema
from fedcrm.errors import ConfigError, TaskSchemaMismatch
from fedcrm.models.train import TrainConfig
from fedcrm.protocol import Key, Metric

STATE_RECORD = "fedcrm.partner"


def partner_config_path(context: Context) -> Path:
    """The partner config path handed to this node (deployment or simulation)."""
    if "partner-config" in context.node_config:
        return Path(str(context.node_config["partner-config"]))
    partition = context.node_config.get("partition-id")
    key = f"partner-config-{partition}"
    if partition is not None and key in context.run_config:
        return Path(str(context.run_config[key]))
    raise ConfigError(
        "no partner config for this node: start the SuperNode with --node-config \"partner-config='/path/partner.toml'\""
    )


def _order(config: dict[str, object]) -> RoundOrder:
    return RoundOrder(
        run_id=str(config[Key.RUN_ID]),
        server_round=int(config[Key.ROUND]),  # type: ignore[arg-type]
        stage=str(config[Key.STAGE]),
        at=datetime.fromisoformat(str(config[Key.CONSENT_AS_OF])),
        schema_hash=str(config[Key.SCHEMA_HASH]),
    )


def _train_config(config: dict[str, object]) -> TrainConfig:
    project = bool(config.get(Key.PROJECT_PARAMS, True))
    bound = float(config[Key.CLIPPING_RANGE]) if project and Key.CLIPPING_RANGE in config else None  # type: ignore[arg-type]
    return TrainConfig(
        epochs=int(config.get(Key.LOCAL_EPOCHS, 2)),  # type: ignore[arg-type]
        learning_rate=float(config.get(Key.LEARNING_RATE, 0.01)),  # type: ignore[arg-type]
        batch_size=int(config.get(Key.BATCH_SIZE, 64)),  # type: ignore[arg-type]
        optimizer=str(config.get("fedcrm.optimizer", "adam")),  # type: ignore[arg-type]
        proximal_mu=float(config.get(Key.PROXIMAL_MU, 0.0)),  # type: ignore[arg-type]
        param_bound=bound,
        seed=int(config.get(Key.SEED, 0)) + int(config[Key.ROUND]),  # type: ignore[arg-type]
    )


class PartnerClient(NumPyClient):
    """Flower's view of one partner; all work is delegated to :class:`PartnerSession`."""

    def __init__(self, context: Context) -> None:
        self.ctx = context
        self.session = PartnerSession(partner_config_path(context))

    def _task(self, config: dict[str, object]):  # noqa: ANN202
        """Task schema of this run, pinned at the first message that carried it."""
        task = check_schema(str(config["fedcrm.task-schema"]), str(config[Key.SCHEMA_HASH]), self.session.name)
        state = self.ctx.state.config_records.get(STATE_RECORD)
        if state is None:
            self.ctx.state.config_records[STATE_RECORD] = ConfigRecord({"schema-hash": task.sha256()})
        elif state["schema-hash"] != task.sha256():
            raise TaskSchemaMismatch(
                f"partner {self.session.name}: task schema changed during the run "
                f"({str(state['schema-hash'])[:12]}… → {task.sha256()[:12]}…)"
            )
        return task

    def get_properties(self, config):  # type: ignore[no-untyped-def]
        """Handshake (partner name) and the federated statistics round."""
        if config.get(Key.STAGE) == "hello":
            return {Metric.PARTNER: self.session.name}
        task = self._task(config)
        cells, head = self.session.statistics(task, _order(config))
        return {**cells, Metric.PARTNER: self.session.name, "ledger_checkpoint": head}

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        """Local training from the global weights."""
        task = self._task(config)
        clipping = float(config[Key.CLIPPING_RANGE]) if Key.CLIPPING_RANGE in config else None
        arrays, n, metrics = self.session.fit(
            task,
            _order(config),
            [np.asarray(a) for a in parameters],
            json.loads(str(config[Key.SCALING])),
            _train_config(config),
            architecture=str(config["fedcrm.architecture"]),
            max_weight=float(config.get(Key.MAX_WEIGHT, 1.0)),
            clipping_range=clipping,
        )
        return arrays, n, metrics

    def evaluate(self, parameters, config):  # type: ignore[no-untyped-def]
        """Federated evaluation on the partner's local hold-out."""
        task = self._task(config)
        return self.session.evaluate(
            task,
            _order(config),
            [np.asarray(a) for a in parameters],
            json.loads(str(config[Key.SCALING])),
            architecture=str(config["fedcrm.architecture"]),
        )


def client_fn(context: Context):  # noqa: ANN201
    """Build the partner's client for one message."""
    return PartnerClient(context).to_client()


def egress_journal_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Outermost mod: journal every reply exactly as it leaves the partner."""
    reply = call_next(msg, ctxt)
    try:
        config_path = partner_config_path(ctxt)
    except ConfigError:
        return reply
    if reply.has_content():
        content = reply.content
        wire = recorddict_to_proto(content).SerializeToString()
        summary = {
            "configs": {name: sorted(rec.keys()) for name, rec in content.config_records.items()},
            "metrics": {name: sorted(rec.keys()) for name, rec in content.metric_records.items()},
            "arrays": {name: {k: list(a.shape) for k, a in rec.items()} for name, rec in content.array_records.items()},
        }
    else:
        wire, summary = str(reply.error.reason).encode(), {"error": int(reply.error.code)}
    journal_message(
        config_path,
        message_type=str(msg.metadata.message_type),
        group_id=str(msg.metadata.group_id),
        wire=wire,
        summary=summary,
    )
    return reply


_MODS = [egress_journal_mod, fault_injection_mod] if configured_fault() is not None else [egress_journal_mod]

# SecAgg+ (default): the journal sits outside secaggplus_mod, so it records the masked vectors.
app = ClientApp(client_fn=client_fn, mods=[*_MODS, secaggplus_mod])

# Plain FedAvg, for comparison runs only (the run config must ask for it explicitly).
plain_app = ClientApp(client_fn=client_fn, mods=list(_MODS))
