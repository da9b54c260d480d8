"""The partner decides: a forged consent time or an unapproved task is refused, and the refusal is in its ledger.

The partner's Flower client is driven in-process with orders a coordinator could forge
(built with the wire contract's own models, then changed), so these checks take seconds;
tests/test_withdrawal_e2e.py shows the same for a withdrawal during a real federated run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.client.config import load_partner_config
from fedcrm.client.flower_app import PartnerClient
from fedcrm.client.partner_session import is_validation_subject
from fedcrm.client.pseudonymise import load_key, pseudonymise
from fedcrm.consent.ledger import Ledger
from fedcrm.errors import OrderRefused, ProtocolVersionMismatch
from fedcrm.protocol import (
    ROWS_KEY,
    EvaluateOrder,
    FitOrder,
    HelloOrder,
    StatisticsOrder,
    StatisticsReply,
    load_task_schema,
    wire_key,
)
from tests.federation import TELCO_TASK, copy_partners

TASK = load_task_schema(TELCO_TASK)


@pytest.fixture(scope="module")
def partner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Partner B, initialised and approving the Telco churn task (as tests/federation.py does)."""
    (config,) = copy_partners(tmp_path_factory.mktemp("decisions"), names=("B",))
    return config


def _client(config: Path) -> PartnerClient:
    context = Context(run_id=1, node_id=1, node_config={"partner-config": str(config)}, state=RecordDict(),
                      run_config={})
    return PartnerClient(context)


def _stats(run_id: str, task=TASK, **fields: object) -> dict:  # noqa: ANN001
    return StatisticsOrder(run_id=run_id, server_round=0, task_schema=task, task_schema_sha256=task.sha256(),
                           **fields).to_config()


def _events(config: Path, kind: str, job_id: str) -> list:
    with Ledger.open(load_partner_config(config).ledger_url) as ledger:
        return [s.event for s in ledger.events_of_kind(kind) if s.event.job_id == job_id]


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def _withdraw_a_training_customer(config: Path) -> str:
    """Withdraw one customer of the partner's training part, effective now; returns its pseudonym."""
    import pandas as pd

    cfg = load_partner_config(config)
    key = load_key(cfg.key_path)
    raw = pd.read_csv(config.parent / "customers.csv", dtype=str)
    customer = next(c for c in raw["customerID"]
                    if not is_validation_subject(pseudonymise(c, key), cfg.privacy.validation_fraction))
    _cli("consent", "withdraw", "--partner-dir", str(config.parent), "--customer-id", customer,
         "--partner-key", str(cfg.key_path), "--purpose", "churn_prediction", "--source", "call-centre",
         "--notice-version", "2026-01")
    return pseudonymise(customer, key)


def test_an_earlier_consent_time_cannot_bring_back_a_withdrawn_customer(partner: Path) -> None:
    client = _client(partner)
    before = StatisticsReply.from_config(client.get_properties(_stats("before-withdrawal")))
    subject = _withdraw_a_training_customer(partner)
    a_month_ago = datetime.now(UTC) - timedelta(days=30)

    # A coordinator that asks for consent as of a month ago is refused, at every stage.
    with pytest.raises(OrderRefused, match=r"partner B refuses the statistics order of run forged round 0: task "
                                           r"'telco_churn' version 1\.0\.0 .* for purpose 'churn_prediction' asks "
                                           r"for consent as of .* evaluates consent at its own clock"):
        client.get_properties(_stats("forged", consent_as_of=a_month_ago))
    common = {"run_id": "forged", "server_round": 1, "task_schema": TASK, "task_schema_sha256": TASK.sha256(),
              "architecture": "mlp", "scaling": {}, "consent_as_of": a_month_ago}
    fit = FitOrder(**common, local_epochs=1, learning_rate=0.1, batch_size=0, optimizer="sgd", seed=0)
    with pytest.raises(OrderRefused, match="fit order of run forged round 1"):
        client.fit([], fit.to_config())
    with pytest.raises(OrderRefused, match="evaluate order of run forged round 1"):
        client.evaluate([], EvaluateOrder(**common).to_config())

    refusals = _events(partner, "order_refusal", "forged")
    assert [(r.stage, r.reason) for r in refusals] == [("stats", "consent_time"), ("fit", "consent_time"),
                                                       ("evaluate", "consent_time")]
    assert all(r.requested_consent_as_of == a_month_ago and r.purpose == "churn_prediction" for r in refusals)
    assert all(r.task_sha256 == TASK.sha256() and r.partner == "B" for r in refusals)
    assert _events(partner, "usage", "forged") == [], "a refused order must not reach the consent gate"

    # The honest order gates at the partner's clock: the withdrawn customer is out.
    after = StatisticsReply.from_config(client.get_properties(_stats("after-withdrawal")))
    assert abs(after.consent_as_of - datetime.now(UTC)) < timedelta(minutes=1)
    (use_before,), (use_after,) = _events(partner, "usage", "before-withdrawal"), _events(partner, "usage",
                                                                                           "after-withdrawal")
    assert use_after.n_subjects == use_before.n_subjects - 1
    assert after.cells[ROWS_KEY] == before.cells[ROWS_KEY] - 1, "the withdrawn customer still counted in the statistics"
    with Ledger.open(load_partner_config(partner).ledger_url) as ledger:
        jobs = {u.job_id for _, u in ledger.uses_including(subject)}
    assert "before-withdrawal" in jobs and "after-withdrawal" not in jobs
    # A time within the allowed skew of the partner's clock is "now", and accepted.
    StatisticsReply.from_config(client.get_properties(_stats("near-now", consent_as_of=datetime.now(UTC))))


def test_an_unapproved_or_revoked_task_is_refused_and_recorded(partner: Path) -> None:
    client = _client(partner)
    changed = TASK.model_copy(update={"version": "9.9.9"})
    with pytest.raises(OrderRefused, match=r"task 'telco_churn' version 9\.9\.9 \(sha256 [0-9a-f]{12}…\) for purpose "
                                           r"'churn_prediction' is not approved by this partner"):
        client.get_properties(_stats("unapproved", task=changed))
    (refusal,) = _events(partner, "order_refusal", "unapproved")
    assert (refusal.reason, refusal.task_sha256, refusal.task_name) == ("task_not_approved", changed.sha256(),
                                                                         "telco_churn")

    listed = _cli("client", "approvals", "--config", str(partner), "--json")
    assert TASK.sha256() in listed and changed.sha256() not in listed
    _cli("client", "revoke", "--config", str(partner), "--sha256", TASK.sha256()[:10], "--note", "contract ended")
    assert "approved no task" in _cli("client", "approvals", "--config", str(partner))
    with pytest.raises(OrderRefused, match="is not approved by this partner"):
        _client(partner).get_properties(_stats("after-revoke"))
    assert [r.reason for r in _events(partner, "order_refusal", "after-revoke")] == ["task_not_approved"]

    assert "approved task 'telco_churn'" in _cli("client", "approve", "--config", str(partner), "--task", str(TELCO_TASK))
    StatisticsReply.from_config(_client(partner).get_properties(_stats("re-approved")))


def test_a_purpose_the_partners_policy_does_not_allow_is_refused(partner: Path) -> None:
    narrow = partner.parent / "partner-analytics-only.toml"
    narrow.write_text(partner.read_text().replace("[privacy]\n", '[privacy]\npurposes = ["aggregate_analytics"]\n'))
    result = CliRunner().invoke(app, ["client", "approve", "--config", str(narrow), "--task", str(TELCO_TASK)])
    assert result.exit_code == 1
    assert ("cannot approve task 'telco_churn' version 1.0.0" in " ".join(result.output.split())
            and "purpose 'churn_prediction' is not in this partner's privacy.purposes" in " ".join(result.output.split()))
    # The task was approved earlier; under the narrower policy its orders are refused, naming task and purpose.
    with pytest.raises(OrderRefused, match=r"no longer allows task 'telco_churn' .* for purpose 'churn_prediction'"):
        _client(narrow).get_properties(_stats("narrowed"))
    assert [r.reason for r in _events(partner, "order_refusal", "narrowed")] == ["purpose_not_allowed"]


def test_refusals_leave_a_log_that_verifies(partner: Path) -> None:
    with pytest.raises(OrderRefused):
        _client(partner).get_properties(_stats("verify", consent_as_of=datetime(2020, 1, 1, tzinfo=UTC)))
    with Ledger.open(load_partner_config(partner).ledger_url) as ledger:
        size = ledger.tree_size()
        kinds = {s.event.kind for s in ledger.events()}
    assert {"task_approval", "order_refusal", "usage", "consent"} <= kinds
    out = _cli("consent", "verify", "--ledger", load_partner_config(partner).ledger_url)
    assert "result │ OK" in out and f"entries checked │ {size}" in out, out


def test_an_order_of_another_protocol_version_is_refused_naming_both(partner: Path) -> None:
    client = _client(partner)
    newer = {**_stats("v2"), wire_key("protocol_version"): 3}
    with pytest.raises(ProtocolVersionMismatch, match="the coordinator speaks fedcrm protocol version 3, this "
                                                      "partner speaks version 2"):
        client.get_properties(newer)
    unversioned = {k: v for k, v in HelloOrder(run_id="old").to_config().items() if k != wire_key("protocol_version")}
    with pytest.raises(ProtocolVersionMismatch, match="speaks no protocol version.*this partner speaks version 2"):
        client.get_properties(unversioned)
