"""Fault injection for resilience tests: make one partner fail at one stage of one round.

Enabled only through the environment variable ``FEDCRM_FAULT_INJECTION`` (never through a
partner or run config); the spec and its accepted forms are in :mod:`fedcrm.faults`, e.g.
``B:fit:2:raise`` or ``C:collect_masked_vectors:1:exit``. The tests use it to prove how a
round behaves whichever stage a partner drops out of.

Stage names of a message: under SecAgg+ every training message is a Flower ``train``
message carrying SecAgg+'s own stage (setup, share_keys, collect_masked_vectors, unmask);
the fit order itself rides inside ``collect_masked_vectors``, so that message answers to
both ``collect_masked_vectors`` and ``fit``. Under plain FedAvg a ``train`` message is
``fit``, an ``evaluate`` message is ``evaluate``, and a query carries fedcrm's own stage
(``hello``, or ``stats`` for the statistics round of a plain comparison run).

The statistics round of a secure run (the default) is itself a SecAgg+ sum
(:mod:`fedcrm.coordinator.secure_sum`): its statistics order rides inside that sum's
``collect_masked_vectors`` message, so ``stats`` fails a partner there (that message answers to
``collect_masked_vectors``, ``fit`` and ``stats``), and the sum's other messages answer to their
SecAgg+ stage only. The other secure sums (segments, k-means) carry stages of their own, which
no fault spec names. The round is the message's group id, which every Flower workflow sets to
the round (``0`` for the handshake and the statistics round).
"""

from __future__ import annotations

import os

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedcrm.faults import ENV_VAR, Fault, configured_fault, parse_fault

__all__ = ["ENV_VAR", "Fault", "InjectedFault", "configured_fault", "fire", "message_stages", "parse_fault",
           "fault_injection_mod"]

SECAGG_RECORD = "secaggplus_configs"


class InjectedFault(RuntimeError):
    """The failure a test asked for."""


def message_stages(msg: Message) -> set[str]:
    """Every stage name a message answers to (see the module docstring)."""
    content = msg.content
    message_type = str(msg.metadata.message_type)
    names: set[str] = set()
    secagg = content.config_records.get(SECAGG_RECORD)
    if secagg is not None and "stage" in secagg:
        stage = str(secagg["stage"])
        names.add(stage)
        if stage == "collect_masked_vectors":
            names.add("fit")
    elif message_type == "train":
        names.add("fit")
    elif message_type == "evaluate":
        names.add("evaluate")
    for name, record in content.config_records.items():
        if name == SECAGG_RECORD:
            continue
        for key, value in record.items():
            if key.rsplit(".", 1)[-1] == "stage" and str(value) in ("hello", "stats"):
                names.add(str(value))
    return names


def fire(fault: Fault, partner: str, stages: set[str] | str, server_round: int | str) -> None:
    """Raise, or end this process, if the fault matches."""
    if not fault.matches(partner, stages, server_round):
        return
    if fault.action == "exit":
        os._exit(17)  # the partner vanishes mid-round, as a crashed node would
    raise InjectedFault(f"partner {partner}: injected failure at stage '{fault.stage}' of round {server_round}")


def fault_injection_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod (test hook, environment variable only): fail at the stage the spec names."""
    fault = configured_fault()
    if fault is not None and msg.has_content():
        from fedcrm.client.config import load_partner_config
        from fedcrm.client.flower_app import partner_config_path

        partner = load_partner_config(partner_config_path(ctxt)).name
        fire(fault, partner, message_stages(msg), str(msg.metadata.group_id))
    return call_next(msg, ctxt)
