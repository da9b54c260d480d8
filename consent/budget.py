"""ε budgets per partner and purpose, kept in the partner's consent ledger.

A purpose's policy (``Purpose.privacy`` in the vocabulary) sets how much ε each partner may
spend on it per calendar period (UTC month, quarter or year). Every differentially private
release a partner makes (a DP-SGD round's update, a noised statistics round) is a signed
``dp_spend`` event (:class:`~fedcrm.consent.events.PrivacySpendEvent`) in its own ledger,
carrying the accountant's full state, so:

* the spend is covered by the Merkle log and checked by ``fedcrm consent verify`` like every
  other leaf (an edited spend event changes its leaf hash and breaks the signed root);
* the accountant survives restarts: :func:`accountant_state` returns the state of a run's
  newest spend, from which the partner rebuilds its accountant (never a fresh one per round);
* every read here is fail-closed: spends are read only from a history proven against the
  newest signed head (``integrity.read_history``: every leaf re-hashed, kinds from the
  hashed text), so a deleted, edited or re-kinded spend row raises
  :class:`~fedcrm.errors.LedgerIntegrityError` instead of silently freeing budget.

Composition across releases is basic (ε adds up): within a run the accountant composes its
own rounds tightly (RDP), and ``epsilon_spent`` charges each release only its increment over
the run's previous cumulative ε for the same mechanism. δ's add up likewise and are reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from fedcrm.consent.db import LogEntry
from fedcrm.consent.events import PrivacySpendEvent, event_adapter
from fedcrm.consent.integrity import read_history
from fedcrm.consent.ledger import Ledger, LedgerTxn
from fedcrm.consent.taxonomy import PurposePrivacy, Vocabulary, default_vocabulary
from fedcrm.errors import PrivacyBudgetExceeded

__all__ = [
    "BudgetStatus",
    "accountant_state",
    "budget_from_events",
    "budget_status",
    "check_planned_spend",
    "partner_of",
    "period_bounds",
    "purpose_privacy",
    "record_spend",
    "remaining_epsilon",
    "run_epsilon",
    "spends",
]

_E = LogEntry.__table__
KIND = "dp_spend"
#: Slack for float noise when comparing a spend with the remaining budget.
_EPS_TOLERANCE = 1e-9


@dataclass(frozen=True)
class BudgetStatus:
    """A partner's ε account for one purpose in the period containing ``at``."""

    partner: str
    purpose: str
    budget: float | None
    period: str | None
    period_start: datetime | None
    period_end: datetime | None
    spent: float
    delta_spent: float
    runs: tuple[str, ...]

    @property
    def remaining(self) -> float | None:
        """ε still available this period (None: the purpose has no budget)."""
        return None if self.budget is None else max(0.0, self.budget - self.spent)


def partner_of(ledger: Ledger) -> str:
    """The partner a ledger belongs to (its origin is ``fedcrm/<partner>``)."""
    return ledger.origin.removeprefix("fedcrm/")


def purpose_privacy(purpose: str, vocabulary: Vocabulary | None = None) -> PurposePrivacy | None:
    """The purpose's DP policy and budget; None when its policy sets none (unknown purposes raise)."""
    return (vocabulary or default_vocabulary()).purpose(purpose).privacy


def period_bounds(at: datetime, period: str) -> tuple[datetime, datetime]:
    """The calendar period ``[start, end)`` in UTC that contains ``at``."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"time {at.isoformat()} has no time zone; budget periods are in UTC")
    t = at.astimezone(UTC)
    if period == "year":
        return datetime(t.year, 1, 1, tzinfo=UTC), datetime(t.year + 1, 1, 1, tzinfo=UTC)
    months = {"month": 1, "quarter": 3}.get(period)
    if months is None:
        raise ValueError(f"unknown budget period {period!r} (month, quarter or year)")
    first = (t.month - 1) // months * months + 1
    nxt = first + months
    start = datetime(t.year, first, 1, tzinfo=UTC)
    end = datetime(t.year + 1, 1, 1, tzinfo=UTC) if nxt > 12 else datetime(t.year, nxt, 1, tzinfo=UTC)
    return start, end


# -- reading spends (fail-closed) ---------------------------------------------------------------


def _spends_on(conn: Connection, size: int) -> list[tuple[int, PrivacySpendEvent]]:
    """Spend events below ``size``; the caller has proven the history below ``size`` on ``conn``."""
    q = select(_E.c.idx, _E.c.public_json).where((_E.c.kind == KIND) & (_E.c.idx < size)).order_by(_E.c.idx)
    out = []
    for idx, text in conn.execute(q):
        data = {k: v for k, v in json.loads(text).items() if k != "index"}
        out.append((idx, event_adapter.validate_python(data)))
    return out


def spends(ledger: Ledger, purpose: str | None = None) -> list[tuple[int, PrivacySpendEvent]]:
    """Every spend in the ledger (optionally of one purpose), read from a history proven against its signed head.

    Raises :class:`~fedcrm.errors.LedgerIntegrityError` when the log does not verify.
    """
    with ledger._engine.connect() as conn:
        history_size = _proven_size(ledger, conn)
        found = _spends_on(conn, history_size)
    return [(i, e) for i, e in found if purpose is None or e.purpose == purpose]


def _proven_size(ledger: Ledger, conn: Connection) -> int:
    """Prove the log against its newest signed head (every leaf re-hashed, kinds checked); its size."""
    head = ledger._newest_signed_head(conn)
    read_history(conn, head.size, head.root_hash)
    return head.size


def _txn_spends(txn: LedgerTxn) -> list[tuple[int, PrivacySpendEvent]]:
    # Proves everything below the transaction's size against the signed root: the whole log, since the spends are read
    # from the stored rows below (``txn.verified`` would prove only new entries onto what this process proved before).
    txn.history()
    return _spends_on(txn._conn, txn.tree_size())


def budget_from_events(events: Iterable[tuple[int, PrivacySpendEvent]], partner: str, purpose: str, at: datetime,
            policy: PurposePrivacy | None) -> BudgetStatus:
    mine = [e for _, e in events if e.purpose == purpose]
    if policy is None:
        start = end = None
        counted = mine
    else:
        start, end = period_bounds(at, policy.period)
        counted = [e for e in mine if start <= e.at < end]
    return BudgetStatus(
        partner=partner, purpose=purpose,
        budget=None if policy is None else policy.epsilon_budget,
        period=None if policy is None else policy.period,
        period_start=start, period_end=end,
        spent=sum(e.epsilon_spent for e in counted),
        delta_spent=sum(e.delta for e in _last_per_run(counted)),
        runs=tuple(dict.fromkeys(e.run_id for e in counted)),
    )


def _last_per_run(events: Iterable[PrivacySpendEvent]) -> list[PrivacySpendEvent]:
    last: dict[tuple[str, str], PrivacySpendEvent] = {}
    for e in events:
        last[(e.run_id, e.mechanism)] = e
    return list(last.values())


def budget_status(ledger: Ledger, purpose: str, at: datetime, *, vocabulary: Vocabulary | None = None) -> BudgetStatus:
    """Budget, spent and remaining ε of ``purpose`` for this ledger's partner, in the period containing ``at``."""
    policy = purpose_privacy(purpose, vocabulary)
    return budget_from_events(spends(ledger, purpose), partner_of(ledger), purpose, at, policy)


def remaining_epsilon(ledger: Ledger, purpose: str, at: datetime, *, vocabulary: Vocabulary | None = None) -> float | None:
    """ε still available to this partner for ``purpose`` in the period containing ``at`` (None: no budget)."""
    return budget_status(ledger, purpose, at, vocabulary=vocabulary).remaining


def _refuse(status: BudgetStatus, requested: float, what: str) -> PrivacyBudgetExceeded:
    assert status.remaining is not None and status.period_start is not None and status.period_end is not None
    return PrivacyBudgetExceeded(
        f"partner {status.partner}: {what} of ε = {requested:.4g} for purpose '{status.purpose}' exceeds the remaining "
        f"budget ε = {status.remaining:.4g} (budget {status.budget:g} per {status.period}, {status.spent:.4g} spent "
        f"{status.period_start.date()} – {status.period_end.date()} by {len(status.runs)} run(s)); refused"
    )


def check_planned_spend(
    ledger: Ledger, *, purpose: str, epsilon: float, at: datetime | None = None, vocabulary: Vocabulary | None = None,
    what: str = "planned spend",
) -> BudgetStatus:
    """Refuse (raise :class:`PrivacyBudgetExceeded`) a planned spend of ``epsilon`` that does not fit the budget.

    The message names the partner, the purpose, the remaining and the requested ε. Returns the
    budget status when it fits (also when the purpose has no budget).
    """
    if not epsilon >= 0.0:
        raise ValueError(f"planned ε must be a number ≥ 0, not {epsilon!r}")
    status = budget_status(ledger, purpose, at or datetime.now(UTC), vocabulary=vocabulary)
    if status.remaining is not None and epsilon > status.remaining + _EPS_TOLERANCE:
        raise _refuse(status, epsilon, what)
    return status


def run_epsilon(events: Iterable[tuple[int, PrivacySpendEvent]], run_id: str, mechanism: str) -> PrivacySpendEvent | None:
    """The newest spend of one run and mechanism, or None."""
    last = None
    for _, e in events:
        if e.run_id == run_id and e.mechanism == mechanism:
            last = e
    return last


def accountant_state(ledger: Ledger, run_id: str, mechanism: str) -> dict[str, Any] | None:
    """The accountant state a run's newest spend recorded (proven against the signed head), or None."""
    last = run_epsilon(spends(ledger), run_id, mechanism)
    return None if last is None else dict(last.accountant_state)


def record_spend(
    ledger: Ledger,
    *,
    purpose: str,
    run_id: str,
    server_round: int,
    epsilon: float,
    delta: float,
    mechanism: str,
    accountant_state: dict[str, Any],
    accountant: str = "rdp",
    partner: str | None = None,
    at: datetime | None = None,
    vocabulary: Vocabulary | None = None,
    enforce: bool = True,
) -> PrivacySpendEvent:
    """Append a signed spend event: ``epsilon`` is the run's cumulative ε for ``mechanism`` after this release.

    In one ledger transaction: proves the history, charges ``epsilon`` minus the run's previous
    cumulative ε for the mechanism, refuses (``PrivacyBudgetExceeded``, nothing written) when
    ``enforce`` and the charge exceeds the remaining budget, and appends. ``accountant_state``
    must be JSON (an Opacus accountant's ``state_dict()`` with tuples as lists is).
    """
    when = at or datetime.now(UTC)
    policy = purpose_privacy(purpose, vocabulary)
    if policy is not None and delta > policy.max_delta:
        raise PrivacyBudgetExceeded(
            f"partner {partner or partner_of(ledger)}: δ = {delta:g} for purpose '{purpose}' exceeds the policy's "
            f"max_delta {policy.max_delta:g}; refused"
        )
    state = json.loads(json.dumps(accountant_state))  # JSON only: what the leaf hashes is what is read back
    with ledger.transaction() as txn:
        existing = _txn_spends(txn)
        who = partner or partner_of(ledger)
        previous = run_epsilon(existing, run_id, mechanism)
        charged = max(0.0, epsilon - (previous.epsilon if previous is not None else 0.0))
        if enforce:
            status = budget_from_events(existing, who, purpose, when, policy)
            if status.remaining is not None and charged > status.remaining + _EPS_TOLERANCE:
                raise _refuse(status, charged, f"round {server_round} of run {run_id}")
        event = PrivacySpendEvent(
            partner=who, purpose=purpose, run_id=run_id, server_round=server_round, mechanism=mechanism,
            epsilon=float(epsilon), epsilon_spent=float(charged), delta=float(delta), accountant=accountant,
            accountant_state=state, at=when,
        )
        txn.append([event])
    return event
