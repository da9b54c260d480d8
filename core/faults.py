"""The fault-injection spec: one partner fails at one stage of one round (resilience tests only).

Read only from the environment variable ``FEDCRM_FAULT_INJECTION`` (never from a partner
or run config). The spec is ``PARTNER:STAGE:ROUND:ACTION``, e.g. ``B:fit:2:raise``:

- PARTNER: the partner's name (its ``name`` in partner.toml);
- STAGE: ``hello``, ``stats``, ``fit``, ``evaluate``, or one of SecAgg+'s stages ``setup``,
  ``share_keys``, ``collect_masked_vectors``, ``unmask``. Under SecAgg+ a fit order arrives
  inside the ``collect_masked_vectors`` stage, so ``fit`` fires there;
- ROUND: the round number (0 is the handshake/statistics round) or ``*`` for every round;
- ACTION: ``raise`` (the partner answers with an error) or ``exit`` (its process vanishes).

The parser lives in the root package so that the coordinator can refuse a malformed spec
before it starts Flower (a spec parsed only inside each partner's ClientApp would fail
minutes later and name nobody). Partners fire it in :mod:`fedcrm.client.faults`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from fedcrm.errors import ConfigError

ENV_VAR = "FEDCRM_FAULT_INJECTION"
FEDCRM_STAGES = ("hello", "stats", "fit", "evaluate")
SECAGG_STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")
ACTIONS = ("raise", "exit")
ACCEPTED_FORMS = (
    f"PARTNER:STAGE:ROUND:ACTION with STAGE one of {', '.join(FEDCRM_STAGES + SECAGG_STAGES)}; "
    f"ROUND a number or '*'; ACTION one of {', '.join(ACTIONS)} (e.g. B:fit:2:raise, C:share_keys:*:exit)"
)


@dataclass(frozen=True)
class Fault:
    """One injected fault."""

    partner: str
    stage: str
    server_round: str
    action: str

    def matches(self, partner: str, stages: set[str] | str, server_round: int | str) -> bool:
        """Whether this fault fires for a partner, any of a message's stage names, and a round."""
        names = {stages} if isinstance(stages, str) else stages
        return (self.partner == partner and self.stage in names
                and self.server_round in ("*", str(server_round)))


def parse_fault(spec: str) -> Fault:
    """Parse a fault spec; a malformed one raises :class:`ConfigError` listing the accepted forms."""
    parts = spec.strip().split(":")
    if len(parts) != 4:
        raise ConfigError(f"{ENV_VAR}={spec!r}: expected 4 fields separated by ':'; accepted: {ACCEPTED_FORMS}")
    partner, stage, server_round, action = (p.strip() for p in parts)
    problems = []
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", partner):
        problems.append(f"partner {partner!r} is not a partner name")
    if stage not in FEDCRM_STAGES + SECAGG_STAGES:
        problems.append(f"unknown stage {stage!r}")
    if server_round != "*" and not server_round.isdigit():
        problems.append(f"round {server_round!r} is neither a number nor '*'")
    if action not in ACTIONS:
        problems.append(f"unknown action {action!r}")
    if problems:
        raise ConfigError(f"{ENV_VAR}={spec!r}: {'; '.join(problems)}; accepted: {ACCEPTED_FORMS}")
    return Fault(partner, stage, server_round if server_round == "*" else str(int(server_round)), action)


def configured_fault() -> Fault | None:
    """The fault named in the environment, if any (raises ConfigError if it is malformed)."""
    spec = os.environ.get(ENV_VAR, "").strip()
    return parse_fault(spec) if spec else None


def check_fault_for_run(aggregation: str) -> Fault | None:
    """Refuse, before a run starts, a malformed spec or one naming a stage the run will never reach."""
    fault = configured_fault()
    if fault is not None and aggregation != "secagg" and fault.stage in SECAGG_STAGES:
        raise ConfigError(f"{ENV_VAR}: stage {fault.stage!r} exists only under SecAgg+, but this run uses "
                          f"aggregation {aggregation!r}; accepted: {ACCEPTED_FORMS}")
    return fault
