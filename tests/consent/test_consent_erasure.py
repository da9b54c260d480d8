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
    assert _values(ledger_url, "SELECT members FROM subject_set_chunks") == [make.pseudonym(1).encode()]
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


def test_objection_made_before_erasure_stays_in_force_at_the_gate(ledger: Ledger, make) -> None:
    from datetime import timedelta

    import pandas as pd

    from fedcrm.consent.gate import UsageContext, gate

    subjects = [make.pseudonym(n) for n in range(1, 5)]
    ledger.append([make.consent(2, "withdraw", minutes=1)])  # churn_prediction is opt-out: 2 objects

    def used() -> frozenset[str]:
        frame = pd.DataFrame({"subject": subjects, "tenure": range(4)})
        return gate(frame, {"tenure": "user.behavior.service_subscription"}, "churn_prediction",
                    make.t0 + timedelta(days=1), ["tenure"], ledger=ledger,
                    use=UsageContext(job_id="j", partner="p", model_version="j:1", stage="fit")).subjects

    assert used() == frozenset(subjects) - {subjects[1]}
    ledger.erase_subject(subjects[1])  # the withdrawal receipt loses its subject ...
    assert ledger.consent_events(upto_size=ledger.tree_size()) == []
    assert subjects[1] not in used()  # ... and the erasure's suppression keeps them out anyway
    ledger.append([make.consent(2, minutes=9)])  # even a later grant under that key
    assert subjects[1] not in used() and len(used()) == 3
    assert ledger.verify().ok


def test_erasure_refuses_a_log_that_does_not_verify(history: Ledger, ledger_url: str, make) -> None:
    from fedcrm.errors import LedgerIntegrityError

    engine = create_engine(normalise_url(ledger_url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE log_entries SET kind = 'usage' WHERE idx = 3"))
    engine.dispose()
    size = history.tree_size()
    with pytest.raises(LedgerIntegrityError, match="erasure refused.*first bad index 3"):
        history.erase_subject(make.pseudonym(1))
    assert history.tree_size() == size and make.pseudonym(1) in _values(ledger_url, "SELECT value FROM personal_payloads")


def test_consent_erase_command_and_api(history: Ledger, ledger_url: str, signing_key, tmp_path, make) -> None:
    import typer
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from fedcrm.consent.api import create_app
    from fedcrm.consent.cli_log import register
    from fedcrm.consent.tokens import create_token

    cli = typer.Typer()
    register(cli)
    result = CliRunner().invoke(cli, ["erase", "--ledger", ledger_url, "--signing-key", str(signing_key),
                                      "--subject", make.pseudonym(1), "--request-id", "dsr-1"])
    assert result.exit_code == 0, result.output
    assert "erasure dsr-1 logged" in result.output and make.pseudonym(1) not in _values(ledger_url, "SELECT value FROM personal_payloads")

    tokens = tmp_path / "tokens.json"
    writer = create_token(tokens, "partner-writer", "w")
    auditor = create_token(tokens, "auditor", "a")
    with TestClient(create_app(history, tokens)) as client:
        path = f"/subjects/{make.pseudonym(3)}/erasure"
        assert client.post(path, json={"request_id": "dsr-3"}, headers={"Authorization": f"Bearer {auditor}"}).status_code == 403
        answer = client.post(path, json={"request_id": "dsr-3"}, headers={"Authorization": f"Bearer {writer}"})
        assert answer.status_code == 201, answer.text
        assert answer.json()["payloads"] == 1 and answer.json()["tree_size"] == history.tree_size()
        assert client.post(path, json={"request_id": ""}, headers={"Authorization": f"Bearer {writer}"}).status_code == 422
    assert [s.event.request_id for s in history.events_of_kind("erasure")] == ["dsr-1", "dsr-3"]
    assert history.verify().ok
