"""ε budgets in the consent ledger: policy, spend events, refusals, restarts and tampering."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from fedcrm.consent import budget
from fedcrm.consent.checkpoint import generate_signing_key
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.taxonomy import load_vocabulary
from fedcrm.errors import LedgerIntegrityError, PrivacyBudgetExceeded, VocabularyError

AT = datetime(2026, 6, 1, tzinfo=UTC)
STATE = {"history": [[1.1, 0.01, 300]]}


@pytest.fixture
def led(tmp_path: Path):
    key = tmp_path / "ledger.pem"
    generate_signing_key(key)
    ledger = Ledger.open(tmp_path / "consent.db", signing_key_path=key, origin="fedcrm/acme")
    yield ledger
    ledger.close()


def _spend(led: Ledger, eps: float, *, run: str = "run1", rnd: int = 1, at: datetime = AT, mechanism: str = "dp-sgd"):
    return budget.record_spend(led, purpose="churn_prediction", run_id=run, server_round=rnd, epsilon=eps, delta=1e-5,
                               mechanism=mechanism, accountant_state={**STATE, "round": rnd}, at=at)


def test_policy_sets_a_budget_per_period_and_spends_charge_increments(led: Ledger) -> None:
    assert budget.remaining_epsilon(led, "churn_prediction", AT) == pytest.approx(10.0)  # bundled policy
    assert budget.remaining_epsilon(led, "aggregate_analytics", AT) is None  # no budget in its policy
    _spend(led, 1.0, rnd=1)
    ev = _spend(led, 1.6, rnd=2)  # cumulative ε of the run: charges only the 0.6 increment
    assert ev.epsilon_spent == pytest.approx(0.6)
    _spend(led, 0.5, run="stats1", mechanism="gaussian-statistics")
    status = budget.budget_status(led, "churn_prediction", AT)
    assert status.partner == "acme" and status.spent == pytest.approx(2.1)
    assert status.runs == ("run1", "stats1") and status.remaining == pytest.approx(7.9)
    # Another year is another period; a quarter boundary is not (the bundled period is a year).
    assert budget.remaining_epsilon(led, "churn_prediction", datetime(2027, 1, 1, tzinfo=UTC)) == pytest.approx(10.0)
    assert budget.period_bounds(datetime(2026, 11, 5, tzinfo=UTC), "quarter") == (
        datetime(2026, 10, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


def test_over_budget_plan_and_spend_are_refused_naming_partner_purpose_and_epsilons(led: Ledger) -> None:
    _spend(led, 9.0)
    with pytest.raises(PrivacyBudgetExceeded) as exc:
        budget.check_planned_spend(led, purpose="churn_prediction", epsilon=3.0, at=AT)
    message = str(exc.value)
    assert "acme" in message and "churn_prediction" in message and "ε = 1" in message and "ε = 3" in message
    size = led.tree_size()
    with pytest.raises(PrivacyBudgetExceeded, match="round 2 of run run1"):
        _spend(led, 10.5, rnd=2)  # charge 1.5 > remaining 1.0
    assert led.tree_size() == size  # nothing written
    budget.check_planned_spend(led, purpose="churn_prediction", epsilon=1.0, at=AT)  # exactly what is left fits
    with pytest.raises(PrivacyBudgetExceeded, match="max_delta"):
        budget.record_spend(led, purpose="churn_prediction", run_id="r", server_round=1, epsilon=0.1, delta=1e-3,
                            mechanism="dp-sgd", accountant_state={}, at=AT)


def test_accountant_state_survives_a_restart(led: Ledger, tmp_path: Path) -> None:
    _spend(led, 1.0, rnd=1)
    _spend(led, 1.5, rnd=2)
    led.close()
    again = Ledger.open(tmp_path / "consent.db")  # read-only, a new process would do the same
    try:
        assert budget.accountant_state(again, "run1", "dp-sgd") == {**STATE, "round": 2}
        assert budget.accountant_state(again, "run2", "dp-sgd") is None
        assert again.verify().ok
    finally:
        again.close()


@pytest.mark.parametrize("attack", ["edit_spend", "rekind", "delete"])
def test_tampered_spend_breaks_verify_and_every_budget_read(led: Ledger, tmp_path: Path, attack: str) -> None:
    _spend(led, 4.0, rnd=1)
    _spend(led, 8.0, rnd=2)
    engine = create_engine(f"sqlite:///{tmp_path / 'consent.db'}")
    with engine.begin() as conn:
        if attack == "edit_spend":  # pretend less was spent
            row = conn.execute(text("SELECT idx, public_json FROM log_entries WHERE kind = 'dp_spend' ORDER BY idx DESC")).first()
            conn.execute(text("UPDATE log_entries SET public_json = :p WHERE idx = :i"),
                         {"p": row.public_json.replace('"epsilon_spent":4.0', '"epsilon_spent":0.5'), "i": row.idx})
        elif attack == "rekind":  # hide a spend from a reader that trusts the kind column
            conn.execute(text("UPDATE log_entries SET kind = 'usage' WHERE kind = 'dp_spend'"))
        else:
            conn.execute(text("DELETE FROM log_entries WHERE idx = 0"))
    engine.dispose()
    assert not led.verify().ok
    with pytest.raises(LedgerIntegrityError):
        budget.remaining_epsilon(led, "churn_prediction", AT)
    with pytest.raises(LedgerIntegrityError):
        _spend(led, 8.5, rnd=3)


def test_policy_typos_are_refused(tmp_path: Path) -> None:
    extra = tmp_path / "vocab.yaml"
    good = ("purposes:\n- key: churn_private\n  name: Private churn\n  legal_basis: legitimate_interest\n"
            "  retention_days: 30\n  data_categories: [user.financial]\n  privacy:\n"
            "    differential_privacy: required\n    epsilon_budget: 2.0\n    period: quarter\n")
    extra.write_text(good)
    policy = budget.purpose_privacy("churn_private", load_vocabulary(extra))
    assert policy is not None and policy.differential_privacy == "required" and policy.period == "quarter"
    for bad in (good.replace("epsilon_budget", "epsilon_budgt"), good.replace("quarter", "fortnight"),
                good.replace("2.0", "-1"), good.replace("required", "yes")):
        extra.write_text(bad)
        with pytest.raises(VocabularyError, match="vocab.yaml"):
            load_vocabulary(extra)


def test_consent_report_shows_spend_per_partner_and_purpose(led: Ledger, tmp_path: Path) -> None:
    from fedcrm.consent.report import build_report, render_html

    _spend(led, 1.0, rnd=1)
    _spend(led, 2.5, rnd=2)
    report = build_report(led, datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC))
    (row,) = report.privacy_spend
    assert (row.partner, row.purpose, row.releases, row.runs) == ("acme", "churn_prediction", 2, ("run1",))
    assert row.epsilon_spent == pytest.approx(2.5) and row.remaining_at_end == pytest.approx(7.5)
    assert 'id="privacy-spend"' in render_html(report) and report.verification.ok


def test_budget_and_report_commands_show_the_spend(led: Ledger, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedcrm.cli import app

    _spend(led, 2.5)
    db = str(tmp_path / "consent.db")
    runner = CliRunner(env={"COLUMNS": "200"})
    out = runner.invoke(app, ["consent", "budget", "--ledger", db, "--at", "2026-06-02T00:00:00+00:00"])
    assert out.exit_code == 0, out.output
    row = next(line for line in out.output.splitlines() if "churn_prediction" in line)
    assert "2.5" in row and "7.5" in row and "10" in row
    out = runner.invoke(app, ["consent", "report", "--ledger", db, "--out", str(tmp_path / "report"),
                                   "--start", "2026-05-01T00:00:00+00:00", "--end", "2026-07-01T00:00:00+00:00"])
    assert out.exit_code == 0, out.output
    assert "ε spent: acme × churn_prediction" in " ".join(out.output.split())
