"""The gate's kept, extended read (``consent/verified.py``) decides exactly as a whole read does.

A long-lived partner process proves the log once and then hashes only the entries appended
since. Each test runs a sequence of ledger changes and, after each, gates twice: in this
process (kept state extended) and as a new process would (nothing kept). Both must let
through the same subjects; the whole-log reads are counted to show which path ran.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from fedcrm.consent import gate as gate_module
from fedcrm.consent import verified
from fedcrm.consent.checkpoint import generate_signing_key
from fedcrm.consent.events import ConsentEvent
from fedcrm.consent.gate import UsageContext, clear_subject_memo, gate
from fedcrm.consent.ledger import Ledger
from fedcrm.errors import LedgerIntegrityError
from tests.consent.conftest import T0, pseudonym
from tests.raw_sql import raw_sql

CHURN = ("churn_prediction", "user.behavior.service_subscription", "legitimate_interest")  # opt-out
PROPENSITY = ("purchase_propensity", "user.behavior.purchase_history", "consent")  # opt-in
N = 40


def receipt(n: int, action: str, spec: tuple[str, str, str], *, minutes: int = 0, expires_days: int | None = None,
            key_id: str = "0a1b2c3d") -> ConsentEvent:
    at = T0 + timedelta(minutes=minutes)
    return ConsentEvent(
        receipt_id=f"r-{n}-{action}-{spec[0]}-{minutes}", subject=pseudonym(n, key_id), purpose=spec[0],
        category=spec[1], action=action, legal_basis=spec[2], effective_at=at, recorded_at=at, source="web-form",
        notice_version="2025-01", expires_at=None if expires_days is None else at + timedelta(days=expires_days),
    )


def gated(ledger: Ledger, spec: tuple[str, str, str], at: datetime, subjects: list[str]) -> frozenset[str]:
    frame = pd.DataFrame({"subject": subjects, "x": range(len(subjects))})
    view = gate(frame, {"x": spec[1]}, spec[0], at, ["x"], ledger=ledger,
                use=UsageContext(job_id="job", partner="p", model_version="job:1", stage="fit"))
    return view.subjects


def both(ledger: Ledger, spec: tuple[str, str, str], at: datetime, subjects: list[str]) -> frozenset[str]:
    """Gate in this process, then as a new process; they must agree. Returns the subjects let through."""
    kept = gated(ledger, spec, at, subjects)
    state, memo = verified._KEPT.copy(), gate_module._MEMO.copy()
    clear_subject_memo()
    fresh = gated(ledger, spec, at, subjects)
    assert kept == fresh
    clear_subject_memo()
    verified._KEPT.update(state)  # carry on as the long-lived process (its kept state and memo, not the fresh ones)
    gate_module._MEMO.update(memo)
    return kept


def full_reads() -> int:
    return max((s.full_reads for s in verified._KEPT.values()), default=0)


@pytest.fixture(autouse=True)
def _nothing_kept() -> None:
    clear_subject_memo()


def test_withdrawals_grants_and_expiry_take_effect_round_after_round(ledger: Ledger) -> None:
    subjects = [pseudonym(n) for n in range(N)]
    ledger.append([receipt(n, "grant", PROPENSITY, expires_days=30 if n % 5 == 0 else None) for n in range(0, N, 2)])
    at = T0 + timedelta(days=1)
    assert gated(ledger, PROPENSITY, at, subjects) == {pseudonym(n) for n in range(0, N, 2)}
    assert full_reads() == 1
    # A withdrawal logged between two rounds keeps the customer out of the next one.
    ledger.append([receipt(4, "withdraw", PROPENSITY, minutes=10), receipt(3, "grant", PROPENSITY, minutes=10)])
    expected = {pseudonym(n) for n in range(0, N, 2)} - {pseudonym(4)} | {pseudonym(3)}
    assert both(ledger, PROPENSITY, at, subjects) == expected
    # Same receipts, a later consent-as-of: the 30-day grants expire (a time crossing a receipt's threshold).
    later = T0 + timedelta(days=31)
    assert both(ledger, PROPENSITY, later, subjects) == {s for s in expected if int(s.split(":")[1], 16) % 5 != 0
                                                         or s == pseudonym(3)}
    # Back before expiry: the earlier mask again (the memo is keyed by the thresholds crossed, not by the time).
    assert both(ledger, PROPENSITY, at + timedelta(hours=5), subjects) == expected
    # An opt-out purpose in the same log, and its own withdrawal.
    ledger.append([receipt(7, "withdraw", CHURN, minutes=20)])
    assert both(ledger, CHURN, at, subjects) == frozenset(subjects) - {pseudonym(7)}
    # A receipt effective only after the consent-as-of does not count yet; it does once the time passes it.
    ledger.append([receipt(9, "withdraw", CHURN, minutes=60 * 24 * 3)])
    assert pseudonym(9) in both(ledger, CHURN, at, subjects)
    assert pseudonym(9) not in both(ledger, CHURN, T0 + timedelta(days=4), subjects)
    assert full_reads() == 1  # every round since the first read only the entries appended after it


def test_erasure_and_key_rotation_make_the_next_read_whole(ledger: Ledger) -> None:
    subjects = [pseudonym(n) for n in range(N)]
    ledger.append([receipt(n, "grant", PROPENSITY) for n in range(N)])
    at = T0 + timedelta(days=1)
    assert gated(ledger, PROPENSITY, at, subjects) == frozenset(subjects)
    kept = verified._KEPT.copy()
    ledger.erase_subject(pseudonym(5))
    assert not verified._KEPT  # an erasure here drops the kept state (it held the erased pseudonym)
    verified._KEPT.update(kept)  # as if another process erased: this one learns it from the erasure entry
    assert both(ledger, PROPENSITY, at, subjects) == frozenset(subjects) - {pseudonym(5)}
    assert full_reads() == 2
    new_key = {pseudonym(n): pseudonym(n, "99887766") for n in range(N) if n != 5}
    ledger.record_key_rotation(new_key, "0a1b2c3d", "99887766")
    rotated = [new_key[s] for s in subjects if s in new_key]
    assert both(ledger, PROPENSITY, at, rotated) == frozenset(rotated)  # receipts under the old key still count
    assert full_reads() == 3
    ledger.append([receipt(6, "withdraw", PROPENSITY, minutes=30, key_id="99887766")])
    assert both(ledger, PROPENSITY, at, rotated) == frozenset(rotated) - {pseudonym(6, "99887766")}
    assert full_reads() == 3


def test_a_bad_new_entry_is_refused_and_a_rewritten_prefix_goes_to_a_whole_read(ledger: Ledger, ledger_url: str) -> None:
    subjects = [pseudonym(n) for n in range(N)]
    ledger.append([receipt(n, "grant", PROPENSITY) for n in range(N)])
    at = T0 + timedelta(days=1)
    gated(ledger, PROPENSITY, at, subjects)
    ledger.append([receipt(8, "withdraw", PROPENSITY, minutes=5)])
    newest = ledger.tree_size() - 1
    with raw_sql(ledger_url) as sql:  # the new withdrawal turned into a grant behind the ledger's back
        text = sql("SELECT public_json FROM log_entries WHERE idx = :i", i=newest)[0][0]
        sql("UPDATE log_entries SET public_json = :p WHERE idx = :i", p=text.replace('"withdraw"', '"grant"'), i=newest)
    with pytest.raises(LedgerIntegrityError, match=f"does not verify at index {newest}"):
        gated(ledger, PROPENSITY, at, subjects)


def test_a_database_replaced_under_the_same_url_is_read_whole(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    generate_signing_key(key)
    path = tmp_path / "consent.db"
    subjects = [pseudonym(n) for n in range(N)]
    at = T0 + timedelta(days=1)
    with Ledger.open(path, signing_key_path=key, origin="test/p") as ledger:
        ledger.append([receipt(n, "grant", PROPENSITY) for n in range(N)])
        assert gated(ledger, PROPENSITY, at, subjects) == frozenset(subjects)
    path.unlink()
    for extra in ("-wal", "-shm"):
        Path(str(path) + extra).unlink(missing_ok=True)
    with Ledger.open(path, signing_key_path=key, origin="test/p") as ledger:  # a new ledger, more entries than before
        ledger.append([receipt(n, "grant", PROPENSITY) for n in range(0, N, 2)] * 2 + [receipt(1, "grant", CHURN)])
        assert gated(ledger, PROPENSITY, at, subjects) == {pseudonym(n) for n in range(0, N, 2)}
        assert full_reads() == 2


def test_kept_state_holds_columns_not_records(ledger: Ledger) -> None:
    ledger.append([receipt(n, "grant", PROPENSITY) for n in range(N)])
    gated(ledger, PROPENSITY, T0 + timedelta(days=1), [pseudonym(n) for n in range(N)])
    (state,) = verified._KEPT.values()
    assert state.size == ledger.tree_size() - 1  # proven below the gate's own usage entry
    assert state.version[1] == N
    events = state.purpose_events("purchase_propensity")
    assert len(events) == N and events.subject.to_pylist()[0] == pseudonym(0)
    assert events is state.purpose_events("purchase_propensity")  # built once per version
    assert len(state.purpose_events("churn_prediction")) == 0


def test_the_stored_frontier_is_proven_before_extension(ledger: Ledger) -> None:
    """A state kept at a size is only ever extended to the signed root: a same-size read with another root reads whole."""
    ledger.append([receipt(n, "grant", PROPENSITY) for n in range(4)])
    with ledger.transaction() as txn:
        first = txn.verified()
    with ledger.transaction() as txn:
        assert txn.verified() is first  # nothing appended: the kept state itself
    forged = verified.VerifiedConsents(size=first.size, frontier=first.frontier.copy(), graph=first.graph,
                                       rotated=False, suppressed=frozenset())
    forged.frontier.push(b"\0" * 32)
    forged.size = forged.frontier.size
    verified._KEPT[next(iter(verified._KEPT))] = forged  # a kept tree that is not the log's
    ledger.append([receipt(9, "grant", PROPENSITY)])
    with ledger.transaction() as txn:
        again = txn.verified()
    assert again is not forged and again.full_reads == 2 and again.version[1] == 5
