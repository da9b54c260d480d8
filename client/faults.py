"""Fault injection for resilience tests: make one partner fail at one stage of one round.

Enabled only through the environment variable ``FEDCRM_FAULT_INJECTION`` (never through a
partner or run config), e.g. ``B:fit:2:raise`` or ``C:collect_masked_vectors:1:exit``:
partner, stage (hello, stats, fit, evaluate, or a SecAgg+ stage: setup, share_keys,
collect_masked_vectors, unmask), round (``*`` for any) and action (``raise`` an error, or
``exit`` the partner's process so it goes missing). The tests use it to prove that a
round fails, naming the partner and the round, whichever stage a partner drops out of.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV_VAR = "FEDCRM_FAULT_INJECTION"


class InjectedFault(RuntimeError):
    """The failure a test asked for."""


@dataclass(frozen=True)
class Fault:
    """One injected fault."""

    partner: str
    stage: str
    server_round: str
    action: str

    def matches(self, partner: str, stage: str, server_round: int | str) -> bool:
        """Whether this fault fires for a partner, stage and round."""
        return (self.partner == partner and self.stage == stage
                and self.server_round in ("*", str(server_round)))


def configured_fault() -> Fault | None:
    """The fault named in the environment, if any."""
    spec = os.environ.get(ENV_VAR, "").strip()
    if not spec:
        return None
    partner, stage, server_round, action = spec.split(":")
    if action not in ("raise", "exit"):
        raise ValueError(f"{ENV_VAR}: action must be 'raise' or 'exit', got {action!r}")
    return Fault(partner, stage, server_round, action)


def fire(fault: Fault, partner: str, stage: str, server_round: int | str) -> None:
    """Raise, or end this process, if the fault matches."""
    if not fault.matches(partner, stage, server_round):
        return
    if fault.action == "exit":
        os._exit(17)  # the partner vanishes mid-round, as a crashed node would
    raise InjectedFault(f"partner {partner}: injected failure at stage '{stage}' of round {server_round}")
