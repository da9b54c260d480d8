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

from contextvars import ContextVar
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.app.message_type import MessageType
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import NDArrays, Scalar
from flwr.common.serde import recorddict_to_proto

from fedcrm.client.admission import admit
from fedcrm.client.dp import DpRequest
from fedcrm.client.egress import journal_message
from fedcrm.client.faults import configured_fault, fault_injection_mod
from fedcrm.client.federated.overlap import answer_overlap
from fedcrm.client.federated.secure_orders import answer_secure_order
from fedcrm.client.partner_session import PartnerSession, RoundOrder
from fedcrm.errors import ConfigError, OrderRefused, TaskSchemaMismatch
from fedcrm.models.train import TrainConfig
from fedcrm.protocol import (
    SECURE_SUM_STAGES,
    EvaluateOrder,
    FitOrder,
    HelloOrder,
    HelloReply,
    TaskOrder,
    read_analytics_query,
    read_properties_order,
    read_secure_sum_order,
    wire_key,
)

#: Partner-local node state (never sent): the task schema hash this run is pinned to.
STATE_RECORD = "partner-state"

#: Partner-local node state (never sent): PSI keys of overlap sessions between their request and count steps.
PSI_KEYS_RECORD = "partner-psi-keys"

#: True only while a train message is inside ``secaggplus_mod`` (set by :func:`masked_reply_mod`).
_MASKED: ContextVar[bool] = ContextVar("fedcrm_masked_reply", default=False)


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


def train_config(order: FitOrder) -> TrainConfig:
    """Local training settings of a fit order (the seed differs per round)."""
    return TrainConfig(
        epochs=order.local_epochs,
        learning_rate=order.learning_rate,
        batch_size=order.batch_size,
        optimizer=order.optimizer,
        proximal_mu=order.proximal_mu,
        param_bound=order.clipping_range if order.project_params else None,
        seed=order.seed + order.server_round,
    )


class PartnerClient(NumPyClient):
    """Flower's view of one partner; all work is delegated to :class:`PartnerSession`.

    Every order is decoded by its model in ``fedcrm.protocol`` (protocol version first), then
    admitted by the partner (:func:`fedcrm.client.admission.admit`): approved task, allowed
    purpose, the partner's own clock. Only then does the session touch customer data.
    """

    def __init__(self, context: Context) -> None:
        self.ctx = context
        self.session = PartnerSession(partner_config_path(context))

    def _pin_task(self, order: TaskOrder) -> None:
        """Pin the run's task schema at the first order that carried it; refuse a change mid-run."""
        digest = order.task_schema_sha256
        state = self.ctx.state.config_records.get(STATE_RECORD)
        if state is None:
            self.ctx.state.config_records[STATE_RECORD] = ConfigRecord({"schema-hash": digest})
        elif state["schema-hash"] != digest:
            raise TaskSchemaMismatch(
                f"partner {self.session.name}: task schema changed during the run "
                f"({str(state['schema-hash'])[:12]}… → {digest[:12]}…)"
            )

    def _admit(self, order: TaskOrder) -> RoundOrder:
        """The partner's decision on an order: purpose from its approval, consent time from its clock."""
        admission = admit(self.session.config, order)
        self._pin_task(order)
        return RoundOrder(run_id=order.run_id, server_round=order.server_round, stage=order.stage,
                          at=admission.at, schema_hash=order.task_schema_sha256, purpose=admission.purpose)

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Handshake (partner name), the statistics round of a plain run, and customer-overlap PSI steps."""
        if config.get(wire_key("stage")) == "overlap":
            overlap = read_analytics_query(config)
            record = self.ctx.state.config_records.get(PSI_KEYS_RECORD)
            keys = {k: bytes(v) for k, v in record.items()} if record is not None else {}  # type: ignore[arg-type]
            reply = answer_overlap(self.session.config, overlap, keys)
            self.ctx.state.config_records[PSI_KEYS_RECORD] = ConfigRecord(keys)  # type: ignore[arg-type]
            return dict(reply.to_config())
        order = read_properties_order(config)
        if isinstance(order, HelloOrder):
            return dict(HelloReply(partner=self.session.name).to_config())
        reply = self.session.statistics(order.task_schema, self._admit(order), dp_noise=order.dp_noise)
        return dict(reply.to_config())

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Local training from the global weights, or a secure-sum order (statistics, segments, profiles)."""
        if config.get(wire_key("stage")) in SECURE_SUM_STAGES:
            secure = read_secure_sum_order(config)
            if not _MASKED.get():
                # Without secaggplus_mod the vector would leave in the clear: refuse before touching data.
                raise OrderRefused(f"partner {self.session.name} refuses the {secure.NAME} of run {secure.run_id}: "
                                   "its vector leaves only masked by SecAgg+, and this app does not mask")
            vector, receipt = answer_secure_order(self.session, secure, self._admit(secure))
            return [vector], 1, dict(receipt.to_config())
        # Flower's client-level DP wrapper adds its clipping norm (read by client_dp_clipping_mod) to the config.
        clipping = config.get(KEY_CLIPPING_NORM)
        order = FitOrder.from_config({k: v for k, v in config.items() if k != KEY_CLIPPING_NORM})
        if clipping is not None and order.dp_mode != "client":
            raise OrderRefused(f"partner {self.session.name}: the fit order of run {order.run_id} carries a client-level "
                               f"DP clipping norm but asks for dp mode '{order.dp_mode}'")
        arrays, n, metrics = self.session.fit(
            order.task_schema,
            self._admit(order),
            [np.asarray(a) for a in parameters],
            order.scaling,
            train_config(order),
            architecture=order.architecture,
            max_weight=order.max_weight or 1.0,
            clipping_range=order.clipping_range,
            dp=DpRequest.from_order(order),
        )
        return arrays, n, dict(metrics.to_config())

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        """Federated evaluation on the partner's local hold-out."""
        order = EvaluateOrder.from_config(config)
        loss, n, metrics = self.session.evaluate(
            order.task_schema,
            self._admit(order),
            [np.asarray(a) for a in parameters],
            order.scaling,
            architecture=order.architecture,
        )
        return loss, n, dict(metrics.to_config())


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


def masked_reply_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Innermost mod, behind ``secaggplus_mod``: marks the call whose reply SecAgg+ will mask."""
    token = _MASKED.set(True)
    try:
        return call_next(msg, ctxt)
    finally:
        _MASKED.reset(token)


def client_dp_clipping_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod`` on train messages that carry a clipping norm (``[run.dp] mode = "client"``).

    It sits inside ``secaggplus_mod``, so the update is clipped before it is masked. Other
    messages (and runs without client-level DP) pass through untouched.
    """
    if msg.metadata.message_type == MessageType.TRAIN and msg.has_content():
        config = compat.recorddict_to_fitins(msg.content, keep_input=True).config
        if KEY_CLIPPING_NORM in config:
            return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


_MODS = [egress_journal_mod, fault_injection_mod] if configured_fault() is not None else [egress_journal_mod]

# SecAgg+ (default): the journal sits outside secaggplus_mod, so it records the masked vectors.
app = ClientApp(client_fn=client_fn, mods=[*_MODS, secaggplus_mod, client_dp_clipping_mod, masked_reply_mod])

# Plain FedAvg, for comparison runs only (the run config must ask for it explicitly).
plain_app = ClientApp(client_fn=client_fn, mods=[*_MODS, client_dp_clipping_mod])
