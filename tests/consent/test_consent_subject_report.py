"""Withdrawal honoured across training rounds; the subject access answer and the audit report."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from fedcrm.consent.gate import UsageContext, gate
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.records import make_consent
from fedcrm.consent.report import build_report, render_html, write_report
from fedcrm.consent.subject import PAST_INFLUENCE, split_version, subject_report
from fedcrm.errors import PurposeNotAllowed

T0 = datetime(2025, 6, 1, tzinfo=UTC)
RUN = "run-20250601-a"
SCHEMA = {"tenure": "user.behavior.service_subscription", "monthly_charges": "user.financial.billing",
          "churn": "user.behavior.service_subscription", "gender": "user.demographic.gender"}
COLS = ["tenure", "monthly_charges", "churn"]


def pseudo(n: int) -> str:
    return f"feedbeef:{n:064x}"


ALICE = pseudo(7)


def customers(n: int = 12) -> pd.DataFrame:
    return pd.DataFrame({"subject": [pseudo(i) for i in range(n)], "tenure": range(n),
                         "monthly_charges": [50.0] * n, "churn": [i % 2 == 0 for i in range(n)],
                         "gender": ["F"] * n})


def round_at(r: int) -> datetime:
    return T0 + timedelta(hours=r)


def run_round(ledger: Ledger, r: int, stage: str, frame: pd.DataFrame) -> frozenset[str]:
    use = UsageContext(job_id=RUN, partner="telco-a", model_version=f"{RUN}:{r}", stage=stage)
    return gate(frame, SCHEMA, "churn_prediction", round_at(r), COLS, ledger=ledger, use=use).subjects


def four_rounds_with_a_withdrawal_after_round_two(ledger: Ledger) -> dict[int, frozenset[str]]:
    """Stats (round 0), then fit+evaluate rounds 1–4; Alice withdraws effective between rounds 2 and 3."""
    frame = customers()
    sets = {0: run_round(ledger, 0, "stats", frame)}
    for r in (1, 2, 3, 4):
        if r == 3:
            when = round_at(2) + timedelta(minutes=30)
            ledger.append([make_consent(subject=ALICE, purpose="churn_prediction", category="user.behavior",
                                        action="withdraw", effective_at=when, recorded_at=when,
                                        source="call-centre", notice_version="2025-05", receipt_id="w-alice")])
        sets[r] = run_round(ledger, r, "fit", frame)
        run_round(ledger, r, "evaluate", frame)
    return sets


def test_withdrawn_customer_is_absent_from_rounds_after_the_withdrawal(ledger: Ledger) -> None:
    sets = four_rounds_with_a_withdrawal_after_round_two(ledger)
    assert all(ALICE in sets[r] for r in (0, 1, 2))
    assert all(ALICE not in sets[r] for r in (3, 4))
    assert all(len(sets[r]) == 11 for r in (3, 4))


def test_subject_request_lists_history_uses_exclusion_and_past_influence(ledger: Ledger) -> None:
    four_rounds_with_a_withdrawal_after_round_two(ledger)
    report = subject_report(ledger, ALICE)

    assert report.pseudonyms == (ALICE,)
    assert [(c.action, c.receipt_id, c.source) for c in report.consents] == [("withdraw", "w-alice", "call-centre")]
    assert [(u.model_version, u.stage) for u in report.uses] == [
        (f"{RUN}:0", "stats"), (f"{RUN}:1", "fit"), (f"{RUN}:1", "evaluate"), (f"{RUN}:2", "fit"), (f"{RUN}:2", "evaluate"),
    ]
    (job,) = report.jobs
    assert job.job_id == RUN and job.training
    assert job.included_in == (f"{RUN}:0", f"{RUN}:1", f"{RUN}:2")
    assert job.statistics_from == (f"{RUN}:0",)
    assert job.trained_on == (f"{RUN}:1", f"{RUN}:2")
    assert job.excluded_from == (f"{RUN}:3",)
    assert f"excluded from {RUN}:3" in job.lines
    assert job.derived == (f"{RUN}:3", f"{RUN}:4", f"{RUN}:final")
    assert "does not remove" in report.statement


def test_a_customer_never_withdrawn_has_no_exclusion_line(ledger: Ledger) -> None:
    four_rounds_with_a_withdrawal_after_round_two(ledger)
    (job,) = subject_report(ledger, pseudo(3)).jobs
    assert job.excluded_from == () and job.trained_on == tuple(f"{RUN}:{r}" for r in (1, 2, 3, 4))
    assert job.derived == (f"{RUN}:final",)


def test_unknown_subject_gets_an_empty_but_valid_answer(ledger: Ledger) -> None:
    four_rounds_with_a_withdrawal_after_round_two(ledger)
    report = subject_report(ledger, pseudo(999))
    assert report.consents == () and report.uses == () and report.jobs == ()


def test_split_version() -> None:
    assert split_version("run-1:3") == ("run-1", 3)
    assert split_version("run-1:final") == ("run-1", "final")
    assert split_version("") == ("", None)


def test_audit_report_counts_uses_refusals_and_verifies(ledger: Ledger, tmp_path: Path) -> None:
    four_rounds_with_a_withdrawal_after_round_two(ledger)
    with pytest.raises(PurposeNotAllowed):
        gate(customers(), SCHEMA, "churn_prediction", round_at(5), ["gender"], ledger=ledger,
             use=UsageContext(job_id="adhoc", partner="telco-a", model_version="", stage="analytics"))

    report = build_report(ledger, T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert report.verification.ok and report.verification.checked_size == ledger.tree_size()
    assert [(c.purpose, c.grants, c.withdrawals, c.subjects) for c in report.consents] == [("churn_prediction", 0, 1, 1)]
    (churn,) = report.uses_per_purpose
    assert (churn.uses, churn.jobs, churn.stages) == (9, (RUN,), {"stats": 1, "fit": 4, "evaluate": 4})
    assert [(f.column, f.category, f.job_id) for f in report.refusals] == [("gender", "user.demographic.gender", "adhoc")]
    (run,) = report.training_runs
    assert run.versions[-1] == f"{RUN}:final"
    assert run.subjects_per_round == {f"{RUN}:{r}": n for r, n in ((1, 12), (2, 12), (3, 11), (4, 11))}

    json_path, html_path = write_report(report, tmp_path / "out")
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["verification"]["ok"] is True and data["statement"] == PAST_INFLUENCE
    html = html_path.read_text(encoding="utf-8")
    assert "The log verifies" in html and "does not remove" in html and "user.demographic.gender" in html
    # Pseudonyms never appear in the period report.
    assert ALICE not in json_path.read_text(encoding="utf-8") and ALICE not in html

    outside = build_report(ledger, T0 + timedelta(days=10), T0 + timedelta(days=11))
    assert outside.uses == () and outside.consents == () and outside.refusals == ()


def test_audit_report_says_when_the_log_does_not_verify(ledger_url: str, ledger: Ledger) -> None:
    four_rounds_with_a_withdrawal_after_round_two(ledger)
    engine = create_engine(ledger_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        row = conn.execute(text("SELECT public_json FROM log_entries WHERE idx = 4")).scalar_one()
        conn.execute(text("UPDATE log_entries SET public_json = :j WHERE idx = 4"),
                     {"j": row.replace('"n_subjects":12', '"n_subjects":13')})
    engine.dispose()
    report = build_report(ledger, T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert not report.verification.ok and report.verification.first_bad_index == 4
    assert "does NOT verify" in render_html(report)


def test_report_period_must_be_aware_and_non_empty(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="tz-aware"):
        build_report(ledger, datetime(2025, 1, 1), T0)
    with pytest.raises(ValueError, match="empty"):
        build_report(ledger, T0, T0)


def test_cli_subject_by_raw_customer_id_and_report(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedcrm.client.pseudonymise import create_key, load_key, pseudonymise
    from fedcrm.consent.checkpoint import generate_signing_key
    from fedcrm.consent.cli import app

    d = tmp_path / "partner"
    generate_signing_key(d / "ledger.key")
    create_key(d / "partner.key")
    key = load_key(d / "partner.key")
    runner = CliRunner()
    result = runner.invoke(app, ["withdraw", "--partner-dir", str(d), "--origin", "fedcrm/p", "--customer-id", "C-42",
                                 "--partner-key", str(d / "partner.key"), "--purpose", "churn_prediction",
                                 "--category", "user", "--notice-version", "2025-05",
                                 "--effective-at", "2025-06-01T02:30:00Z"])
    assert result.exit_code == 0, result.output
    with Ledger.open(d / "consent.db", signing_key_path=d / "ledger.key") as led:
        frame = customers().assign(subject=[pseudonymise(f"C-{i}", key) for i in range(12)])
        frame.loc[5, "subject"] = pseudonymise("C-42", key)
        for r in (1, 2, 3):
            gate(frame, SCHEMA, "churn_prediction", round_at(r), COLS, ledger=led,
                 use=UsageContext(job_id=RUN, partner="p", model_version=f"{RUN}:{r}", stage="fit"))

    out = tmp_path / "answer.json"
    result = runner.invoke(app, ["subject", "--partner-dir", str(d), "--customer-id", "C-42",
                                 "--partner-key", str(d / "partner.key"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert f"excluded from {RUN}:3" in result.output
    answer = json.loads(out.read_text(encoding="utf-8"))
    assert answer["subject"] == pseudonymise("C-42", key) and "C-42" not in out.read_text(encoding="utf-8")

    result = runner.invoke(app, ["report", "--partner-dir", str(d), "--out", str(tmp_path / "rep"),
                                 "--start", "2025-05-01T00:00:00Z", "--end", "2025-07-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "rep" / "consent-audit.json").read_text())["verification"]["ok"] is True
    assert (tmp_path / "rep" / "consent-audit.html").exists()

    result = runner.invoke(app, ["subject", "--partner-dir", str(d), "--customer-id", "C-42"])
    assert result.exit_code == 2 and "--partner-key" in result.output
