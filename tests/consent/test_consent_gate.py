"""The one gate: minimum necessary columns, covered subjects as of a time and a tree size, audit records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from fedcrm.consent.events import RefusalEvent, UsageEvent, subject_fingerprint
from fedcrm.consent.gate import ConsentedView, UsageContext, gate
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.records import make_consent
from fedcrm.errors import ConsentError, PurposeNotAllowed, VocabularyError

T0 = datetime(2025, 3, 1, tzinfo=UTC)
SCHEMA = {
    "customer_id": "user.unique_id",
    "gender": "user.demographic.gender",
    "senior": "user.demographic.age_range",
    "partner": "user.demographic.household",
    "tenure": "user.behavior.service_subscription",
    "payment_method": "user.financial",
    "monthly_charges": "user.financial.billing",
    "churn": "user.behavior.service_subscription",
    "orders_90d": "user.behavior.purchase_history",
    "notes": "",
}
CHURN_COLS = ["tenure", "payment_method", "monthly_charges", "senior", "partner", "churn"]


def pseudo(n: int) -> str:
    return f"1234abcd:{n:040x}"


def customers(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject": [pseudo(i) for i in range(n)],
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "gender": ["F" if i % 2 else "M" for i in range(n)],
            "senior": [i % 5 == 0 for i in range(n)],
            "partner": [i % 3 == 0 for i in range(n)],
            "tenure": [i % 72 for i in range(n)],
            "payment_method": ["card"] * n,
            "monthly_charges": [20.0 + i % 80 for i in range(n)],
            "churn": [i % 4 == 0 for i in range(n)],
            "orders_90d": [i % 7 for i in range(n)],
            "notes": ["x"] * n,
        }
    )


def withdraw(n: int, day: float, *, purpose: str = "churn_prediction", category: str = "user") -> object:
    when = T0 + timedelta(days=day)
    return make_consent(
        subject=pseudo(n), purpose=purpose, category=category, action="withdraw", effective_at=when,
        recorded_at=when, source="test", notice_version="v1", receipt_id=f"w-{n}-{day}-{purpose}",
    )


def grant(n: int, day: float, *, purpose: str = "purchase_propensity", expires_day: float | None = None) -> object:
    when = T0 + timedelta(days=day)
    return make_consent(
        subject=pseudo(n), purpose=purpose, category="user.behavior", action="grant", effective_at=when,
        recorded_at=when, source="test", notice_version="v1", receipt_id=f"g-{n}-{day}-{purpose}",
        expires_at=None if expires_day is None else T0 + timedelta(days=expires_day),
    )


USE = UsageContext(job_id="run-7", partner="telco-a", model_version="run-7:1", stage="fit")


def last_event(ledger: Ledger):
    return ledger.events(ledger.tree_size() - 1)[0].event


def test_out_of_purpose_column_is_refused_by_name_and_the_refusal_is_recorded(ledger: Ledger) -> None:
    before = ledger.tree_size()
    with pytest.raises(PurposeNotAllowed) as err:
        gate(customers(20), SCHEMA, "churn_prediction", T0, [*CHURN_COLS, "gender"], ledger=ledger, use=USE)
    message = str(err.value)
    assert "'gender'" in message and "user.demographic.gender" in message and "churn_prediction" in message
    assert ledger.tree_size() == before + 1
    refusal = last_event(ledger)
    assert isinstance(refusal, RefusalEvent)
    assert (refusal.column, refusal.category, refusal.purpose, refusal.job_id) == (
        "gender", "user.demographic.gender", "churn_prediction", "run-7"
    )
    assert not any(isinstance(s.event, UsageEvent) for s in ledger.events())


def test_column_without_a_category_is_refused(ledger: Ledger) -> None:
    with pytest.raises(PurposeNotAllowed, match="'notes'.*no data category"):
        gate(customers(5), SCHEMA, "aggregate_analytics", T0, ["notes"], ledger=ledger, use=USE)
    with pytest.raises(PurposeNotAllowed, match="'unmapped'"):
        gate(customers(5).assign(unmapped=1), SCHEMA, "aggregate_analytics", T0, ["unmapped"], ledger=ledger, use=USE)
    kinds = [type(s.event) for s in ledger.events()]
    assert kinds == [RefusalEvent, RefusalEvent]


def test_customer_id_is_not_needed_for_churn_and_is_refused(ledger: Ledger) -> None:
    with pytest.raises(PurposeNotAllowed, match="user.unique_id"):
        gate(customers(5), SCHEMA, "churn_prediction", T0, ["customer_id", "tenure"], ledger=ledger, use=USE)


def test_unknown_purpose_writes_nothing(ledger: Ledger) -> None:
    with pytest.raises(VocabularyError, match="unknown purpose 'upselling'"):
        gate(customers(5), SCHEMA, "upselling", T0, ["tenure"], ledger=ledger, use=USE)
    assert ledger.tree_size() == 0


def test_view_holds_only_covered_subjects_and_requested_columns_and_records_the_use(ledger: Ledger) -> None:
    ledger.append([withdraw(3, day=-10), withdraw(4, day=+10), withdraw(5, day=-1, category="user.financial.billing")])
    frame = customers(10)
    view = gate(frame, SCHEMA, "churn_prediction", T0, CHURN_COLS, ledger=ledger, use=USE)

    expected = {pseudo(i) for i in range(10)} - {pseudo(3), pseudo(5)}  # 4 withdrew only after T0
    assert view.subjects == expected
    assert list(view.frame.columns) == ["subject", *CHURN_COLS]
    assert set(view.frame["subject"]) == expected and len(view) == 8
    assert view.columns == tuple(CHURN_COLS) and view.purpose == "churn_prediction" and view.at == T0
    assert view.tree_size == 3 and view.n_excluded == 2 and view.use == USE
    assert view.fingerprint == subject_fingerprint(expected)

    usage = last_event(ledger)
    assert isinstance(usage, UsageEvent)
    assert ledger.tree_size() == 4
    assert (usage.tree_size_read, usage.n_subjects, usage.subject_fingerprint) == (3, 8, view.fingerprint)
    assert (usage.job_id, usage.partner, usage.model_version, usage.stage) == ("run-7", "telco-a", "run-7:1", "fit")
    assert usage.columns == tuple(CHURN_COLS)
    # The subject set is stored with the record: who was used is answerable later.
    assert [i for i, _ in ledger.uses_including(pseudo(0))] == [3]
    assert ledger.uses_including(pseudo(3)) == []


def test_opt_in_purpose_needs_a_grant_in_force(ledger: Ledger) -> None:
    ledger.append([grant(1, day=-5), grant(2, day=-5, expires_day=-1), grant(3, day=+1), grant(4, day=-3)])
    ledger.append([withdraw(4, day=-2, purpose="purchase_propensity", category="user.behavior.purchase_history")])
    view = gate(customers(6), SCHEMA, "purchase_propensity", T0, ["orders_90d"], ledger=ledger, use=USE)
    assert view.subjects == {pseudo(1)}


def test_several_rows_per_subject_are_kept_together(ledger: Ledger) -> None:
    ledger.append([withdraw(1, day=-1)])
    frame = pd.concat([customers(3), customers(3)], ignore_index=True)
    view = gate(frame, SCHEMA, "churn_prediction", T0, ["tenure"], ledger=ledger, use=USE)
    assert len(view) == 4 and view.subjects == {pseudo(0), pseudo(2)}
    assert last_event(ledger).n_subjects == 2


def test_late_arriving_withdrawal_never_changes_what_a_past_use_used(ledger: Ledger) -> None:
    first = gate(customers(6), SCHEMA, "churn_prediction", T0, ["tenure"], ledger=ledger, use=USE)
    assert pseudo(2) in first.subjects and first.tree_size == 0
    # A withdrawal effective *before* T0 arrives only now (recorded late by the call centre).
    ledger.append([withdraw(2, day=-3)])

    # The past use still says it included subject 2, read at tree size 0 ...
    uses = ledger.uses_including(pseudo(2))
    assert [(u.model_version, u.tree_size_read) for _, u in uses] == [("run-7:1", 0)]
    # ... and re-deciding that use from the ledger as of its tree size gives the same set.
    from fedcrm.consent.policy import evaluate_subjects

    events = ledger.consent_events(upto_size=first.tree_size)
    again = evaluate_subjects(
        events, subjects=first.subjects, purpose="churn_prediction", categories=["user.behavior.service_subscription"],
        at=T0, tree_size=first.tree_size,
    )
    assert again.covered == first.subjects

    # A new use with the same as-of time reads the larger tree and leaves subject 2 out.
    second = gate(customers(6), SCHEMA, "churn_prediction", T0, ["tenure"], ledger=ledger, use=USE)
    assert pseudo(2) not in second.subjects and second.tree_size == 2


def test_consent_counted_only_from_its_effective_time(ledger: Ledger) -> None:
    ledger.append([withdraw(1, day=0)])
    before = gate(customers(3), SCHEMA, "churn_prediction", T0 - timedelta(seconds=1), ["tenure"], ledger=ledger, use=USE)
    at_time = gate(customers(3), SCHEMA, "churn_prediction", T0, ["tenure"], ledger=ledger, use=USE)
    assert pseudo(1) in before.subjects and pseudo(1) not in at_time.subjects


def test_only_the_gate_can_make_a_view_and_the_view_is_read_only(ledger: Ledger) -> None:
    with pytest.raises(ConsentError, match="only be made by"):
        ConsentedView(
            object(), frame=customers(1), subjects=frozenset(), columns=(), purpose="churn_prediction", at=T0,
            tree_size=0, fingerprint="0" * 64, use=USE, requested=1,
        )
    view = gate(customers(4), SCHEMA, "churn_prediction", T0, ["tenure"], ledger=ledger, use=USE)
    copy = view.frame
    copy.loc[:, "tenure"] = -1
    copy.drop(index=0, inplace=True)
    assert (view.frame["tenure"] >= 0).all() and len(view.frame) == 4
    with pytest.raises(AttributeError):
        view.purpose = "aggregate_analytics"  # type: ignore[misc]


def test_bad_frames_and_naive_times_are_refused_before_anything_is_written(ledger: Ledger) -> None:
    with pytest.raises(ConsentError, match="no 'subject' column"):
        gate(customers(2).drop(columns="subject"), SCHEMA, "churn_prediction", T0, ["tenure"], ledger=ledger, use=USE)
    with pytest.raises(ConsentError, match=r"\['contract'\] are not in the frame"):
        gate(customers(2), SCHEMA, "churn_prediction", T0, ["contract"], ledger=ledger, use=USE)
    with pytest.raises(ConsentError, match="no time zone"):
        gate(customers(2), SCHEMA, "churn_prediction", datetime(2025, 1, 1), ["tenure"], ledger=ledger, use=USE)
    assert ledger.tree_size() == 0


def test_schema_may_be_any_mapping(ledger: Ledger) -> None:
    from types import MappingProxyType

    view = gate(customers(3), MappingProxyType(SCHEMA), "churn_prediction", T0, ["tenure"], ledger=ledger, use=USE)
    assert len(view.subjects) == 3


def test_bundled_churn_policy_on_the_real_telco_partner_config_leaves_out_gender(tmp_path) -> None:
    """Minimum necessary on real data: partner A's Telco export, mapped by its own partner config."""
    import shutil
    from pathlib import Path

    from fedcrm.client.config import load_partner_config
    from fedcrm.client.ingest import load_customers
    from fedcrm.client.pseudonymise import create_key
    from fedcrm.consent.checkpoint import generate_signing_key

    source = Path(__file__).resolve().parents[2] / "datasets" / "partners" / "telco" / "iid" / "A"
    partner = tmp_path / "A"
    shutil.copytree(source, partner)
    create_key(partner / "partner.key")
    generate_signing_key(partner / "ledger.key")
    config = load_partner_config(partner / "partner.toml")
    frame = load_customers(config)
    # The ingested table names columns by task feature; the config maps each to its data category.
    schema = {feature: config.columns[column].category for feature, column in config.feature_columns().items()}
    assert schema["gender"] == "user.demographic.gender"
    features = [c for c in schema if c != "gender"]

    with Ledger.open(config.ledger_url, signing_key_path=partner / "ledger.key", origin="fedcrm/A") as led:
        view = gate(frame, schema, "churn_prediction", T0, features, ledger=led, use=USE)
        assert len(view.subjects) == frame["subject"].nunique() and "gender" not in view.frame.columns
        with pytest.raises(PurposeNotAllowed, match="'gender'.*user.demographic.gender.*churn_prediction"):
            gate(frame, schema, "churn_prediction", T0, [*features, "gender"], ledger=led, use=USE)
        assert isinstance(last_event(led), RefusalEvent)
