"""Right to erasure removes a subject's personal data while the log still verifies."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from fedcrm.consent.db import normalise_url
from fedcrm.consent.events import ERASED, subject_fingerprint, suppression_hash
from fedcrm.consent.ledger import Ledger


def _values(url: str, sql: str) -> list:
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).scalars())
    finally:
        engine.dispose()


@pytest.fixture
def history(ledger: Ledger, make) -> Ledger:
    """Subjects 1-3 consent; 2 withdraws; a usage record over 1 and 2; then subject 2's key rotates."""
    ledger.append([make.consent(1), make.consent(2), make.consent(3), make.consent(2, "withdraw", minutes=3)])
    subjects = [make.pseudonym(1), make.pseudonym(2)]
    with ledger.transaction() as txn:
        txn.append([make.usage(subjects)])
        txn.store_subject_set(subject_fingerprint(subjects), subjects)
    new2 = make.pseudonym(2, key_id="99887766")
    ledger.record_key_rotation({make.pseudonym(2): new2}, "0a1b2c3d", "99887766")
    ledger.append([make.consent(2, key_id="99887766", minutes=9)])
    return ledger


def test_erasure_removes_payloads_subject_sets_and_mappings_and_the_log_still_verifies(
    history: Ledger, ledger_url: str, make
) -> None:
    old2, new2 = make.pseudonym(2), make.pseudonym(2, key_id="99887766")
    before = history.latest_checkpoint()
    assert [i for i, _ in history.uses_including(new2)] == [4]

    result = history.erase_subject(new2, request_id="dsr-17")
    assert (result.payloads, result.subject_sets, result.rotation_rows, result.pseudonyms) == (3, 1, 1, 2)
    logged = history.events(result.index)[0].event  # the erasure is itself an entry of the log
    assert logged.kind == "erasure" and logged.erased_indices == (1, 3, 6) and logged.request_id == "dsr-17"
    assert logged.suppressed == tuple(sorted(suppression_hash(p) for p in (old2, new2)))

    stored = _values(ledger_url, "SELECT value FROM personal_payloads")
    assert old2 not in stored and new2 not in stored and make.pseudonym(1) in stored
    assert _values(ledger_url, "SELECT subject FROM subject_sets") == [make.pseudonym(1)]
    assert _values(ledger_url, "SELECT old_pseudonym FROM key_rotations") == []
    leaves = " ".join(_values(ledger_url, "SELECT public_json FROM log_entries"))
    assert old2 not in leaves and new2 not in leaves  # never there in clear

    report = history.verify(trusted=before)
    assert report.ok and report.checked_size == before.size + 1, report.message
    assert old2 not in history.public_leaves(0, history.tree_size())[-1] and new2 not in logged.model_dump_json()
    erased = [s for s in history.events() if s.erased]
    assert [s.index for s in erased] == [1, 3, 6] and all(s.event.subject == ERASED for s in erased)
    assert history.uses_including(new2) == [] and history.events_for_subject(old2) == []
    assert [i for i, _ in history.uses_including(make.pseudonym(1))] == [4]
    gate_view = history.consent_events(upto_size=history.tree_size())
    assert [e.subject for _, e in gate_view] == [make.pseudonym(1), make.pseudonym(3)]


def test_erasing_an_unknown_subject_removes_nothing_but_is_logged(history: Ledger, make) -> None:
    result = history.erase_subject(make.pseudonym(12345))
    assert (result.payloads, result.subject_sets, result.rotation_rows) == (0, 0, 0)
    assert not any(s.erased for s in history.events())
    assert history.events(result.index)[0].event.suppressed == (suppression_hash(make.pseudonym(12345)),)
    assert history.verify().ok
