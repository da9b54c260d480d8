"""The partner's differential-privacy decisions: what it accepts, with which noise, and what it records.

The coordinator's fit order only *asks* for DP (mode, target ε, δ, clipping norm, planned
rounds); the partner decides, from its own policy and budget (``fedcrm.consent.budget``):

1. **Before any customer data is read** (:func:`decide`): a purpose whose policy requires DP
   refuses an order without record-level DP (client-level DP is noised by the coordinator,
   which the partner cannot check); a δ above the policy's ``max_delta`` is refused; in the
   run's first round the planned spend (the target ε) must fit the remaining budget, and in
   later rounds the ε this round would add (predicted from the run's accountant) must fit.
   A refusal is an ``order_refusal`` event in the ledger (reason ``privacy_policy`` or
   ``privacy_budget``) and an :class:`~fedcrm.errors.OrderRefused` (or
   :class:`~fedcrm.errors.PrivacyBudgetExceeded`) error back to the coordinator.
2. **Once the consented view is known** (:func:`round_settings`): δ (default ``min(max_delta,
   1 / (10 n))``, always below 1/n), the Poisson rate ``q`` and, in the run's first round, the
   noise multiplier that meets the target ε at δ over planned rounds × epochs; later rounds
   keep the run's first noise multiplier and δ from the accountant state in the ledger.
3. **After training** (:func:`record`): a signed ``dp_spend`` event with the accountant's
   state, so the next round (or a restarted partner) resumes the same accountant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from fedcrm.client.approvals import open_partner_ledger
from fedcrm.client.config import PartnerConfig
from fedcrm.consent import budget
from fedcrm.consent.events import OrderRefusalEvent, PrivacySpendEvent
from fedcrm.consent.taxonomy import PurposePrivacy, Vocabulary
from fedcrm.errors import OrderRefused, PrivacyBudgetExceeded
from fedcrm.models.train_config import TrainConfig
from fedcrm.protocol import DpReport, FitOrder, TaskSchema

__all__ = ["MECHANISM", "DpDecision", "DpRequest", "decide", "default_delta", "record", "round_settings"]

#: The mechanism name of record-level DP-SGD spends in the ledger.
MECHANISM = "dp-sgd"
DEFAULT_MAX_DELTA = 1e-5


@dataclass(frozen=True)
class DpRequest:
    """What a fit order asks for (the coordinator's wish, not the partner's decision)."""

    mode: Literal["off", "record", "client"] = "off"
    target_epsilon: float | None = None
    delta: float | None = None
    max_grad_norm: float | None = None
    planned_rounds: int | None = None

    @classmethod
    def from_order(cls, order: FitOrder) -> DpRequest:
        """The DP fields of a fit order."""
        return cls(order.dp_mode, order.dp_target_epsilon, order.dp_delta, order.dp_max_grad_norm,
                   order.dp_planned_rounds)


@dataclass(frozen=True)
class DpDecision:
    """The partner's acceptance of record-level DP for one round, before it reads any data."""

    purpose: str
    run_id: str
    server_round: int
    target_epsilon: float
    max_grad_norm: float
    planned_rounds: int
    requested_delta: float | None
    policy: PurposePrivacy | None
    previous: PrivacySpendEvent | None  # the run's newest spend (its accountant state), None in its first round
    remaining: float | None = None  # the budget left when the order was admitted (None: no budget)
    vocabulary: Vocabulary | None = field(default=None, repr=False)  # the partner's, for recording the spend

    @property
    def history(self) -> list[list[Any]]:
        """The run's accountant history so far."""
        return [] if self.previous is None else list(self.previous.accountant_state.get("history", []))


def default_delta(n: int, policy: PurposePrivacy | None) -> float:
    """The partner's δ: ``min(max_delta, 1 / (10 n))``, so always below 1/n."""
    cap = policy.max_delta if policy is not None else DEFAULT_MAX_DELTA
    return min(cap, 1.0 / (10.0 * max(n, 1)))


def _refuse(config: PartnerConfig, task: TaskSchema, run_id: str, server_round: int, schema_hash: str, at: datetime,
            reason: Literal["privacy_policy", "privacy_budget"], detail: str) -> None:
    """Record the refusal in the partner's ledger (signed), before raising."""
    with open_partner_ledger(config) as ledger:
        ledger.append([OrderRefusalEvent(
            partner=config.name, job_id=run_id, model_version=f"{run_id}:{server_round}", stage="fit",
            task_name=task.name, task_sha256=schema_hash, purpose=task.purpose, reason=reason, detail=detail, at=at,
        )])


def decide(
    config: PartnerConfig, task: TaskSchema, request: DpRequest, *, purpose: str, run_id: str, server_round: int,
    schema_hash: str, at: datetime, vocabulary: Vocabulary,
) -> DpDecision | None:
    """Accept or refuse the order's DP settings before any customer data is read; None: train without DP.

    Raises ``OrderRefused`` (policy) or ``PrivacyBudgetExceeded`` (budget), both recorded first.
    """
    policy = budget.purpose_privacy(purpose, vocabulary)
    what = f"partner {config.name} refuses the fit order of run {run_id} round {server_round}"

    def refuse(reason: Literal["privacy_policy", "privacy_budget"], detail: str, error: type[Exception]) -> None:
        _refuse(config, task, run_id, server_round, schema_hash, at, reason, detail)
        raise error(detail)

    if request.mode != "record":
        if policy is not None and policy.differential_privacy == "required":
            how = "no differential privacy" if request.mode == "off" else (
                "client-level DP, whose noise the coordinator adds where this partner cannot check it")
            refuse("privacy_policy", f"{what}: purpose '{purpose}' requires record-level differential privacy, the "
                   f"order asks for {how}; set [run.dp] mode = \"record\" and target_epsilon", OrderRefused)
        return None
    if request.target_epsilon is None or request.planned_rounds is None:
        refuse("privacy_policy", f"{what}: a record-level DP order must carry a target ε and the planned rounds",
               OrderRefused)
    assert request.target_epsilon is not None and request.planned_rounds is not None
    cap = policy.max_delta if policy is not None else DEFAULT_MAX_DELTA
    if request.delta is not None and request.delta > cap:
        refuse("privacy_policy", f"{what}: δ = {request.delta:g} exceeds this partner's max_delta {cap:g} for "
               f"purpose '{purpose}'", OrderRefused)
    with open_partner_ledger(config) as ledger:
        spent = budget.spends(ledger)
        previous = budget.run_epsilon(spent, run_id, MECHANISM)
        status = budget.budget_from_events(spent, config.name, purpose, at, policy)
    decision = DpDecision(purpose, run_id, server_round, request.target_epsilon, request.max_grad_norm or 1.0,
                          request.planned_rounds, request.delta, policy, previous, status.remaining, vocabulary)
    if status.remaining is None:
        return decision
    if previous is None:
        planned, label = request.target_epsilon, f"run {run_id}'s planned spend"
    else:
        planned, label = _predicted_increment(decision), f"round {server_round} of run {run_id}"
    if planned > status.remaining + 1e-9:
        detail = (f"{what}: {label} of ε = {planned:.4g} for purpose '{purpose}' exceeds the remaining budget "
                  f"ε = {status.remaining:.4g} (budget {status.budget:g} per {status.period}, {status.spent:.4g} spent)")
        refuse("privacy_budget", detail, PrivacyBudgetExceeded)
    return decision


def _predicted_increment(decision: DpDecision) -> float:
    """ε this round adds if it runs like the previous one (same noise, rate and steps)."""
    from fedcrm.models.dp_train import epsilon_of

    prev = decision.previous
    assert prev is not None
    history = decision.history
    sigma, q, _ = history[-1]
    per_round = int(round(prev.accountant_state.get("steps_per_round", 0))) or int(history[-1][2])
    after = epsilon_of({"history": [*history, [sigma, q, per_round]]}, prev.delta)
    return max(0.0, after - prev.epsilon)


def round_settings(decision: DpDecision, n: int, cfg: TrainConfig):  # noqa: ANN201 (models.dp_train imports torch)
    """The DP-SGD settings of this round for ``n`` consented training customers (exact budget check included).

    Raises ``PrivacyBudgetExceeded`` if the exact increment (this round's real sampling rate)
    no longer fits; nothing has been trained then.
    """
    from fedcrm.models.dp_train import DpTrainConfig, epsilon_of, noise_multiplier_for, sample_rate_for, steps_per_epoch

    q = sample_rate_for(n, cfg.batch_size)
    steps = cfg.epochs * steps_per_epoch(n, cfg.batch_size)
    if decision.previous is None:
        delta = decision.requested_delta if decision.requested_delta is not None else default_delta(n, decision.policy)
        if delta >= 1.0 / n:
            raise OrderRefused(f"δ = {delta:g} is not below 1/n = {1.0 / n:g} for this partner's {n} customers")
        sigma = noise_multiplier_for(decision.target_epsilon, delta, q, steps * decision.planned_rounds)
        state = None
    else:
        delta = decision.previous.delta
        sigma = float(decision.history[-1][0])
        state = {"mechanism": "rdp", "history": decision.history}
        if decision.remaining is not None:
            after = epsilon_of({"history": [*decision.history, [sigma, q, steps]]}, delta)
            increment = max(0.0, after - decision.previous.epsilon)
            if increment > decision.remaining + 1e-9:
                raise PrivacyBudgetExceeded(
                    f"round {decision.server_round} of run {decision.run_id} would add ε = {increment:.4g} for purpose "
                    f"'{decision.purpose}', more than the remaining ε = {decision.remaining:.4g}; nothing was trained")
    return DpTrainConfig(noise_multiplier=sigma, max_grad_norm=decision.max_grad_norm, delta=delta,
                         accountant_state=state)


def record(config: PartnerConfig, decision: DpDecision, result: Any, *, at: datetime, steps_per_round: int) -> DpReport:
    """Append the round's signed spend (refused, and nothing sent, if it no longer fits the budget)."""
    state = dict(result.accountant_state)
    state["steps_per_round"] = steps_per_round
    with open_partner_ledger(config) as ledger:
        event = budget.record_spend(
            ledger, purpose=decision.purpose, run_id=decision.run_id, server_round=decision.server_round,
            epsilon=result.epsilon, delta=result.delta, mechanism=MECHANISM, accountant_state=state,
            partner=config.name, at=at, vocabulary=decision.vocabulary,
        )
    return DpReport(mode="record", epsilon=event.epsilon, delta=event.delta, noise_multiplier=result.noise_multiplier,
                    sample_rate=result.sample_rate, steps=result.total_steps, max_grad_norm=decision.max_grad_norm,
                    epsilon_spent=event.epsilon_spent, target_epsilon=decision.target_epsilon)
