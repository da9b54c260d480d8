"""The columnar gate decides exactly what the per-subject reference (``policy.evaluate``) decides.

A randomised ledger (grants and withdrawals under several bases, purposes, parent and child
categories, expiries, effective times before and after the as-of time, an erased subject,
subjects with several rows and subjects no event names) is gated for several purposes,
column sets and as-of times; the view's subjects, rows, fingerprint and usage record must
equal what one ``evaluate`` call per subject and category gives.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fedcrm.consent import gate as gate_module
from fedcrm.consent.events import ConsentEvent, subject_fingerprint
from fedcrm.consent.gate import SUBJECT, UsageContext, gate
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.policy import evaluate

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SCHEMA = {
    "tenure": "user.behavior.service_subscription",
    "monthly_charges": "user.financial.billing",
    "household": "user.demographic.household",
    "orders_90d": "user.behavior.purchase_history",
}
#: (purpose, requested columns): legitimate interest (opt-out) and consent (opt-in), one or several categories.
JOBS = [
    ("churn_prediction", ["tenure"]),
    ("churn_prediction", ["tenure", "monthly_charges", "household"]),
    ("purchase_propensity", ["orders_90d"]),
]
CATEGORIES = ["user", "user.behavior", "user.behavior.service_subscription", "user.behavior.purchase_history",
              "user.financial", "user.financial.billing", "user.demographic", "user.demographic.household"]


def pseudo(i: int) -> str:
    return f"5eed0000:{i:064x}"


def random_ledger(rng: np.random.Generator, n_subjects: int, n_events: int) -> list[ConsentEvent]:
    events = []
    for k in range(n_events):
        day = int(rng.integers(0, 30))
        when = T0 + timedelta(days=day, minutes=int(rng.integers(0, 3)))
        expires = None if rng.random() < 0.6 else when + timedelta(days=int(rng.integers(0, 20)))
        events.append(ConsentEvent(
            receipt_id=f"r{k}", subject=pseudo(int(rng.integers(0, n_subjects + 5))),  # some name no customer
            purpose=str(rng.choice(["churn_prediction", "purchase_propensity"])),
            category=str(rng.choice(CATEGORIES)), action=str(rng.choice(["grant", "withdraw"], p=[0.6, 0.4])),
            legal_basis=str(rng.choice(["consent", "legitimate_interest", "contract"])),
            effective_at=when, recorded_at=when, source="test", notice_version="v1", expires_at=expires,
        ))
    return events


def reference(ledger: Ledger, subjects: list[str], purpose: str, columns: list[str], at: datetime,
              erased: set[str]) -> set[str]:
    """One ``evaluate`` per subject and category: the rules as written, no arrays."""
    size = ledger.tree_size()
    pairs = ledger.consent_events(upto_size=size)
    return {
        s for s in set(subjects) - erased
        if all(evaluate(pairs, subject=s, purpose=purpose, category=SCHEMA[c], at=at, tree_size=size).allowed
               for c in columns)
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_columnar_gate_equals_the_per_subject_reference(ledger: Ledger, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    events = random_ledger(rng, n, 240)
    for lo in range(0, len(events), 60):  # several appends: several signed heads
        ledger.append(events[lo : lo + 60])
    erased = pseudo(int(rng.integers(0, n)))
    ledger.erase_subject(erased, request_id="art17")
    rows = [pseudo(i) for i in range(n)] + [pseudo(int(i)) for i in rng.integers(0, n, size=15)]  # duplicates
    rng.shuffle(rows)
    frame = pd.DataFrame({SUBJECT: pd.Series(rows, dtype="string[pyarrow]"),
                          **{c: np.arange(len(rows), dtype=float) for c in SCHEMA}})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    gate_module.clear_subject_memo()
    for day in (0, 9, 17, 31):
        for purpose, columns in JOBS:
            at = T0 + timedelta(days=day, hours=12)
            use = UsageContext(job_id=f"j{seed}", partner="p", model_version=f"j{seed}:{day}", stage="fit")
            view = gate(frame, SCHEMA, purpose, at, columns, ledger=ledger, use=use)
            expected = reference(ledger, rows, purpose, columns, at, {erased})
            assert view.subjects == expected, (purpose, columns, day)
            assert view.n_subjects == len(expected) and view.n_excluded == n - len(expected)
            assert view.fingerprint == subject_fingerprint(expected)
            kept = [i for i, s in enumerate(rows) if s in expected]
            assert view.rows.tolist() == kept
            assert view.frame[SUBJECT].tolist() == [rows[i] for i in kept]
            assert view.frame[columns[0]].tolist() == [float(i) for i in kept]
            usage = ledger.events(ledger.tree_size() - 1)[0].event
            assert (usage.n_subjects, usage.subject_fingerprint) == (len(expected), view.fingerprint)
            mapped = gate(table, SCHEMA, purpose, at, columns, ledger=ledger, use=use)  # an Arrow table: rows lazily
            assert mapped.subjects == expected and mapped.rows.tolist() == kept and len(mapped) == len(kept)
            assert mapped.fingerprint == view.fingerprint
            pd.testing.assert_frame_equal(mapped.frame, view.frame)
            some = np.flatnonzero(rng.random(len(kept)) < 0.5)
            pd.testing.assert_frame_equal(mapped.take(some), view.frame.take(some))
            pd.testing.assert_frame_equal(view.take(some), view.frame.take(some))
    assert erased in set(rows)


def test_subject_memo_never_carries_a_decision_into_the_next_gate(ledger: Ledger) -> None:
    """The memo keyed by the column's bytes holds only distinct values and order: a new withdrawal still counts."""
    frame = pd.DataFrame({SUBJECT: pd.Series([pseudo(i) for i in range(5)], dtype="string[pyarrow]"),
                          "tenure": np.arange(5.0)})
    use = UsageContext(job_id="j", partner="p", model_version="j:1", stage="fit")
    at = T0 + timedelta(days=2)
    first = gate(frame, SCHEMA, "churn_prediction", at, ["tenure"], ledger=ledger, use=use)
    ledger.append([ConsentEvent(receipt_id="w", subject=pseudo(3), purpose="churn_prediction", category="user",
                                action="withdraw", legal_basis="legitimate_interest", effective_at=T0, recorded_at=T0,
                                source="test", notice_version="v1")])
    second = gate(frame, SCHEMA, "churn_prediction", at, ["tenure"], ledger=ledger, use=use)
    assert first.n_subjects == 5 and second.subjects == {pseudo(i) for i in (0, 1, 2, 4)}
    ledger.erase_subject(pseudo(1), request_id="art17")
    third = gate(frame, SCHEMA, "churn_prediction", at, ["tenure"], ledger=ledger, use=use)
    assert third.subjects == {pseudo(i) for i in (0, 2, 4)} and third.rows.tolist() == [0, 2, 4]
