"""Withdrawal is honoured in a real federated run, as a compliance officer would check it.

A customer of partner A withdraws with effect between rounds 2 and 3 of a 4-round run
(the run config fixes each round's consent-as-of time). The ledger's usage records show
the customer in the subject sets of the statistics round and rounds 1–2 only; subject
counts drop by one from round 3; `fedcrm consent subject` says "excluded from <run>:3"
and lists the versions that still carry the contribution; the log verifies, and also
against the heads the coordinator recorded during the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.client.config import load_partner_config
from fedcrm.client.pseudonymise import load_key, pseudonymise
from fedcrm.consent.ledger import Ledger
from tests.federation import copy_partners, run

pytestmark = pytest.mark.slow

TIMES = ["2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z",
         "2026-03-04T00:00:00Z", "2026-03-05T00:00:00Z"]


def test_withdrawn_customer_is_absent_from_the_next_rounds(tmp_path: Path) -> None:
    partners = copy_partners(tmp_path)
    a = partners[0]
    config = load_partner_config(a)
    raw = pd.read_csv(a.parent / "customers.csv", dtype=str)
    # A customer in A's training part (not the local hold-out): its subject set is in every fit record.
    from fedcrm.client.partner_session import is_validation_subject

    key = load_key(config.key_path)
    customer = next(c for c in raw["customerID"] if not is_validation_subject(pseudonymise(c, key), 0.2))
    subject = pseudonymise(customer, key)
    runner = CliRunner()
    withdrawn = runner.invoke(app, [
        "consent", "withdraw", "--partner-dir", str(a.parent), "--customer-id", customer,
        "--partner-key", str(config.key_path), "--purpose", "churn_prediction",
        "--effective-at", "2026-03-03T12:00:00Z", "--source", "call-centre",
        "--notice-version", "2026-01"])
    assert withdrawn.exit_code == 0, withdrawn.output

    result = run(tmp_path, partners, rounds=4, consent_as_of=TIMES, run_id="withdrawal")
    assert result.succeeded, result.error

    ledger = Ledger.open(config.ledger_url)
    uses = {}
    for stored in ledger.events():
        event = stored.event
        if event is not None and event.kind == "usage" and event.job_id == "withdrawal":
            uses[(event.model_version, event.stage)] = event
    included = {(e.model_version, e.stage) for _, e in ledger.uses_including(subject) if e.job_id == "withdrawal"}
    assert ("withdrawal:0", "stats") in included
    assert {("withdrawal:1", "fit"), ("withdrawal:2", "fit")} <= included
    assert not {k for k in included if k[0] in ("withdrawal:3", "withdrawal:4")}
    assert uses[("withdrawal:3", "fit")].n_subjects == uses[("withdrawal:2", "fit")].n_subjects - 1

    answer = runner.invoke(app, ["consent", "subject", "--partner-dir", str(a.parent), "--customer-id", customer,
                                 "--partner-key", str(config.key_path), "--json", str(tmp_path / "dsar.json")])
    assert answer.exit_code == 0, answer.output
    assert "excluded from withdrawal:3" in " ".join(answer.output.split())
    dsar = json.loads((tmp_path / "dsar.json").read_text())
    text = json.dumps(dsar)
    for version in ("withdrawal:1", "withdrawal:2", "withdrawal:3", "withdrawal:4", "withdrawal:final"):
        assert version in text, version

    report = ledger.verify()
    assert report.ok, report.message
    # The coordinator recorded A's signed head every round: the log is consistent with each.
    heads = [json.loads(line)["checkpoint"] for line in (result.run_dir / "heads" / "A.jsonl").read_text().splitlines()]
    assert len(heads) >= 9  # stats + (fit, evaluate) × 4
    for head in (heads[0], heads[-1]):
        assert ledger.verify(trusted=head).ok
    ledger.close()
    # The auditor's path: take the head the coordinator received, verify the partner's log against it.
    head_file = tmp_path / "A.head"
    _ok = runner.invoke(app, ["coordinator", "head", "--run", str(result.run_dir), "--partner", "A", "--round", "2",
                              "--out", str(head_file)])
    assert _ok.exit_code == 0, _ok.output
    verified = runner.invoke(app, ["consent", "verify", "--ledger", config.ledger_url, "--trusted-head", str(head_file)])
    assert verified.exit_code == 0, verified.output

