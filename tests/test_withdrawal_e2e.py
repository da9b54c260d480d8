"""Withdrawal is honoured in a real federated run, at the partner's own clock, as a compliance officer would check it.

A customer of partner A withdraws *during* a 4-round run, right after A's consent gate let
round 2's training through (the test watches A's ledger for that usage record and records
the withdrawal then, by A's clock; no coordinator chooses any consent time). The ledger's
usage records show the customer in the subject sets of the statistics round and rounds 1–2
only; subject counts drop by one from round 3; `fedcrm consent subject` says "excluded from
<run>:3" and lists the versions that still carry the contribution; the log verifies, and
also against the heads the coordinator recorded during the run.

A second run, for a task schema one partner never approved, fails at round 0 naming the
partner, the task and its purpose, and the refusal is in that partner's ledger.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.client.config import load_partner_config
from fedcrm.client.partner_session import is_validation_subject
from fedcrm.client.pseudonymise import load_key, pseudonymise
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.records import make_consent
from fedcrm.consent.taxonomy import default_vocabulary
from fedcrm.protocol import load_task_schema
from tests.federation import TELCO_TASK, copy_partners, run

pytestmark = pytest.mark.slow

PURPOSE = "churn_prediction"


class WithdrawWhenRoundTrained(threading.Thread):
    """Record a withdrawal in A's ledger as soon as A's gate has let a given round's training through."""

    def __init__(self, config_path: Path, subject: str, job_id: str, model_version: str) -> None:
        super().__init__(daemon=True)
        self.config = load_partner_config(config_path)
        self.subject, self.job_id, self.model_version = subject, job_id, model_version
        self.done = threading.Event()
        self.stop = threading.Event()
        self.withdrawn_at: datetime | None = None
        self.error: BaseException | None = None

    def _trained(self, reader: Ledger) -> bool:
        return any(s.event.job_id == self.job_id and s.event.model_version == self.model_version
                   and s.event.stage == "fit" for s in reader.events_of_kind("usage"))

    def run(self) -> None:
        # Both connections are opened up front, so the withdrawal lands milliseconds after the usage record.
        reader = Ledger.open(self.config.ledger_url)
        writer = Ledger.open(self.config.ledger_url, signing_key_path=self.config.ledger_key_path)
        try:
            while not self.stop.is_set() and not self._trained(reader):
                time.sleep(0.05)
            if self.stop.is_set():
                return
            now = datetime.now(UTC)
            events = [make_consent(subject=self.subject, purpose=PURPOSE, category=category, action="withdraw",
                                   effective_at=now, recorded_at=now, source="call-centre", notice_version="2026-01")
                      for category in default_vocabulary().purpose(PURPOSE).data_categories]
            writer.append(events)
            self.withdrawn_at = now
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            reader.close()
            writer.close()
            self.done.set()


def test_a_customer_withdrawn_during_the_run_is_absent_from_the_next_rounds(tmp_path: Path) -> None:
    partners = copy_partners(tmp_path)
    a = partners[0]
    config = load_partner_config(a)
    raw = pd.read_csv(a.parent / "customers.csv", dtype=str)
    # A customer in A's training part (not the local hold-out): its subject set is in every fit record.
    key = load_key(config.key_path)
    customer = next(c for c in raw["customerID"] if not is_validation_subject(pseudonymise(c, key), 0.2))
    subject = pseudonymise(customer, key)

    watcher = WithdrawWhenRoundTrained(a, subject, "withdrawal", "withdrawal:2")
    watcher.start()
    try:
        result = run(tmp_path, partners, rounds=4, run_id="withdrawal")
    finally:
        watcher.stop.set()
        watcher.join(timeout=30)
    assert watcher.error is None, watcher.error
    assert result.succeeded, result.error
    assert watcher.withdrawn_at is not None, "round 2's training of partner A was never seen in its ledger"

    ledger = Ledger.open(config.ledger_url)
    order = {(s.event.kind, getattr(s.event, "model_version", None), getattr(s.event, "stage", None)): s.index
             for s in ledger.events() if s.event.kind in ("usage", "consent")}
    withdrawal_index = max(i for (kind, _, _), i in order.items() if kind == "consent")
    assert order[("usage", "withdrawal:2", "fit")] < withdrawal_index < order[("usage", "withdrawal:3", "fit")], (
        "the withdrawal did not land between rounds 2 and 3 of A's training")
    uses = {(s.event.model_version, s.event.stage): s.event for s in ledger.events_of_kind("usage")
            if s.event.job_id == "withdrawal"}
    included = {(e.model_version, e.stage) for _, e in ledger.uses_including(subject) if e.job_id == "withdrawal"}
    assert ("withdrawal:0", "stats") in included
    assert {("withdrawal:1", "fit"), ("withdrawal:2", "fit")} <= included
    assert not {k for k in included if k[0] in ("withdrawal:3", "withdrawal:4")}
    assert uses[("withdrawal:3", "fit")].n_subjects == uses[("withdrawal:2", "fit")].n_subjects - 1
    # Each gate ran at A's own clock: rounds 3-4 after the withdrawal, rounds 1-2 before it.
    assert uses[("withdrawal:2", "fit")].at < watcher.withdrawn_at <= uses[("withdrawal:3", "fit")].at
    rounds = {r["round"]: r for r in result.rounds}
    reported = datetime.fromisoformat(rounds[3]["fit"]["A"]["consent_as_of"])
    assert reported == uses[("withdrawal:3", "fit")].at, "the coordinator records the consent time A used"

    runner = CliRunner()
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


def test_a_run_for_a_task_a_partner_did_not_approve_fails_naming_partner_task_and_purpose(tmp_path: Path) -> None:
    approved = copy_partners(tmp_path, names=("A", "B"))
    (unapproved,) = copy_partners(tmp_path, names=("C",), task=None)
    result = run(tmp_path, [*approved, unapproved], rounds=1, run_id="unapproved")
    assert not result.succeeded
    task = load_task_schema(TELCO_TASK)
    assert "round 0 failed at stage 'stats': partner(s) C" in (result.error or ""), result.error
    assert f"task 'telco_churn' version {task.version}" in (result.error or "")
    assert "for purpose 'churn_prediction' is not approved by this partner" in (result.error or "")
    with Ledger.open(load_partner_config(unapproved).ledger_url) as ledger:
        refusals = [s.event for s in ledger.events_of_kind("order_refusal")]
        assert [(r.job_id, r.reason, r.task_sha256) for r in refusals] == [("unapproved", "task_not_approved",
                                                                            task.sha256())]
        assert not ledger.events_of_kind("usage"), "partner C's data was used for a task it never approved"
        assert ledger.verify().ok
