"""Whether this partner takes an order: the partner decides, the coordinator only asks.

Before any customer data is read, every statistics, fit and evaluate order must be for a
task schema this partner approved (by hash; see :mod:`fedcrm.client.approvals`), for a
purpose its policy still allows, and must not ask for a consent time other than the
partner's own clock. A refused order becomes an ``order_refusal`` event in the partner's
consent ledger (signed like every entry) and an ``OrderRefused`` error naming the task and
purpose, which Flower returns to the coordinator as the partner's reply.

What is admitted is the partner's decision: the purpose the gate uses (from the approval
record, never from the coordinator) and the consent-as-of time (the partner's clock).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from fedcrm.client.approvals import approvals, open_partner_ledger, policy_problems, task_label
from fedcrm.client.config import PartnerConfig
from fedcrm.consent.events import OrderRefusalEvent
from fedcrm.errors import OrderRefused
from fedcrm.protocol import TaskOrder

__all__ = ["MAX_CONSENT_SKEW", "Admission", "admit"]

#: How far an order's ``consent_as_of`` may be from the partner's clock and still count as "now"
#: (message latency and ordinary clock drift between machines kept by NTP).
MAX_CONSENT_SKEW = timedelta(seconds=60)

Reason = Literal["task_not_approved", "purpose_not_allowed", "consent_time"]


@dataclass(frozen=True)
class Admission:
    """The partner's decision for one order: the purpose its gate uses and the consent-as-of time."""

    purpose: str
    at: datetime


def admit(config: PartnerConfig, order: TaskOrder, *, now: datetime | None = None) -> Admission:
    """Admit ``order`` or record the refusal in the partner's ledger and raise ``OrderRefused``."""
    at = now or datetime.now(UTC)
    task = order.task_schema
    what = f"partner {config.name} refuses the {order.NAME} of run {order.run_id} round {order.server_round}"
    with open_partner_ledger(config) as ledger:
        approval = approvals(ledger).get(order.task_schema_sha256)
        refusal: tuple[Reason, str] | None = None
        if approval is None:
            refusal = ("task_not_approved",
                       f"{what}: task {task_label(task)} for purpose '{task.purpose}' is not approved by this partner "
                       f"(approve it with `fedcrm client approve --config {config.config_path or 'PARTNER'} "
                       f"--task TASK.yaml` after review)")
        elif problems := policy_problems(config, task):
            refusal = ("purpose_not_allowed",
                       f"{what}: the partner's policy no longer allows task {task_label(task)} for purpose "
                       f"'{approval.purpose}': " + "; ".join(problems))
        elif order.consent_as_of is not None and abs(order.consent_as_of - at) > MAX_CONSENT_SKEW:
            refusal = ("consent_time",
                       f"{what}: task {task_label(task)} for purpose '{approval.purpose}' asks for consent as of "
                       f"{order.consent_as_of.astimezone(UTC).isoformat()}, but this partner evaluates consent "
                       f"at its own clock ({at.isoformat()}); a coordinator may not move it")
        if refusal is not None:
            reason, detail = refusal
            ledger.append([OrderRefusalEvent(
                partner=config.name, job_id=order.run_id, model_version=order.model_version, stage=order.stage,
                task_name=task.name, task_sha256=order.task_schema_sha256, purpose=task.purpose, reason=reason,
                detail=detail, requested_consent_as_of=order.consent_as_of, at=at,
            )])
            raise OrderRefused(detail)
    assert approval is not None
    return Admission(purpose=approval.purpose, at=at)
