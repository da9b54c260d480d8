"""Policy semantics: categories (parent/child), opt-in vs opt-out bases, expiry, withdrawal, time."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcrm.consent.events import ConsentEvent
from fedcrm.consent.policy import Rule, check_category, evaluate, evaluate_subjects, require_categories
from fedcrm.errors import PurposeNotAllowed

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def pseudo(name: str) -> str:
    return "0badc0de:" + hashlib.sha256(name.encode()).hexdigest()


ALICE, BOB = pseudo("alice"), pseudo("bob")


def ev(
    subject: str,
    action: str,
    *,
    purpose: str = "purchase_propensity",
    category: str = "user.behavior.purchase_history",
    basis: str = "consent",
    day: int = 0,
    expires_day: int | None = None,
) -> ConsentEvent:
    return ConsentEvent(
        receipt_id=f"r-{subject[-6:]}-{action}-{day}",
        subject=subject,
        purpose=purpose,
        category=category,
        action=action,
        legal_basis=basis,
        effective_at=T0 + timedelta(days=day),
        recorded_at=T0 + timedelta(days=day),
        source="test",
        notice_version="v1",
        expires_at=None if expires_day is None else T0 + timedelta(days=expires_day),
    )


def at(day: float) -> datetime:
    return T0 + timedelta(days=day)


def indexed(*events: ConsentEvent) -> list[tuple[int, ConsentEvent]]:
    return list(enumerate(events))


# --- the purpose's categories --------------------------------------------------------------------


def test_purpose_allows_children_of_its_categories() -> None:
    decision = check_category("churn_prediction", "user.financial.billing")
    assert decision.allowed and decision.rule == Rule.CATEGORY_ALLOWED
    assert "child of 'user.financial'" in decision.reason


def test_churn_purpose_refuses_gender_naming_the_column_category_and_purpose() -> None:
    assert not check_category("churn_prediction", "user.demographic.gender").allowed
    with pytest.raises(PurposeNotAllowed) as err:
        require_categories("churn_prediction", {"tenure": "user.behavior.service_subscription", "gender": "user.demographic.gender"})
    assert "'gender'" in str(err.value)
    assert "user.demographic.gender" in str(err.value)
    assert "churn_prediction" in str(err.value)


def test_a_parent_category_is_not_allowed_by_a_child_listed_in_the_purpose() -> None:
    # purchase_propensity lists user.behavior.purchase_history only: user.behavior is broader.
    assert not check_category("purchase_propensity", "user.behavior").allowed


# --- opt-in (consent) ----------------------------------------------------------------------------


def test_opt_in_without_any_record_is_denied() -> None:
    d = evaluate([], subject=ALICE, purpose="purchase_propensity", category="user.behavior.purchase_history", at=at(5))
    assert not d.allowed and d.rule == Rule.OPT_IN_NO_GRANT and d.event_index is None


def test_opt_in_grant_in_force_names_the_event() -> None:
    events = indexed(ev(BOB, "grant"), ev(ALICE, "grant", day=1))
    d = evaluate(events, subject=ALICE, purpose="purchase_propensity", category="user.behavior.purchase_history", at=at(2))
    assert d.allowed and d.rule == Rule.OPT_IN_GRANT and d.event_index == 1


def test_grant_is_counted_from_its_effective_time_inclusive() -> None:
    events = indexed(ev(ALICE, "grant", day=3))
    kw = dict(subject=ALICE, purpose="purchase_propensity", category="user.behavior.purchase_history")
    assert not evaluate(events, at=at(2.99), **kw).allowed
    assert evaluate(events, at=at(3), **kw).allowed


def test_grant_on_a_parent_category_covers_the_child() -> None:
    events = indexed(ev(ALICE, "grant", category="user.behavior"))
    d = evaluate(events, subject=ALICE, purpose="purchase_propensity", category="user.behavior.purchase_history", at=at(1))
    assert d.allowed


def test_grant_on_a_sibling_category_does_not_cover() -> None:
    events = indexed(ev(ALICE, "grant", category="user.behavior.browsing_history"))
    d = evaluate(events, subject=ALICE, purpose="purchase_propensity", category="user.behavior.purchase_history", at=at(1))
    assert not d.allowed and d.rule == Rule.OPT_IN_NO_GRANT


def test_grant_for_another_purpose_does_not_cover() -> None:
    events = indexed(ev(ALICE, "grant", purpose="customer_segmentation", basis="consent"))
    d = evaluate(events, subject=ALICE, purpose="purchase_propensity", category="user.behavior.purchase_history", at=at(1))
    assert not d.allowed


def test_grant_recorded_under_another_legal_basis_is_not_consent() -> None:
    events = indexed(ev(ALICE, "grant", basis="contract"))
    d = evaluate(events, subject=ALICE, purpose="purchase_propensity", category="user.behavior.purchase_history", at=at(1))
    assert not d.allowed and d.rule == Rule.OPT_IN_NO_GRANT


def test_expired_grant_is_denied_from_its_expiry_on() -> None:
    events = indexed(ev(ALICE, "grant", day=0, expires_day=10))
    kw = dict(subject=ALICE, purpose="purchase_propensity", category="user.behavior.purchase_history")
    assert evaluate(events, at=at(9.9), **kw).allowed
    d = evaluate(events, at=at(10), **kw)
    assert not d.allowed and d.rule == Rule.OPT_IN_EXPIRED and d.event_index == 0


def test_expired_child_grant_does_not_hide_a_parent_grant_still_in_force() -> None:
    events = indexed(
        ev(ALICE, "grant", category="user.behavior", day=0),
        ev(ALICE, "grant", category="user.behavior.purchase_history", day=1, expires_day=2),
    )
    d = evaluate(events, subject=ALICE, purpose="purchase_propensity", category="user.behavior.purchase_history", at=at(5))
    assert d.allowed and d.event_index == 0


def test_withdrawal_stops_coverage_from_its_effective_time() -> None:
    events = indexed(ev(ALICE, "grant", day=0), ev(ALICE, "withdraw", day=4))
    kw = dict(subject=ALICE, purpose="purchase_propensity", category="user.behavior.purchase_history")
    assert evaluate(events, at=at(3), **kw).allowed
    d = evaluate(events, at=at(4), **kw)
    assert not d.allowed and d.rule == Rule.OPT_IN_WITHDRAWN and d.event_index == 1


def test_withdrawal_of_the_parent_withdraws_the_child_and_regrant_restores() -> None:
    events = indexed(
        ev(ALICE, "grant", day=0),
        ev(ALICE, "withdraw", category="user.behavior", day=1),
        ev(ALICE, "grant", day=2),
    )
    kw = dict(subject=ALICE, purpose="purchase_propensity", category="user.behavior.purchase_history")
    assert not evaluate(events, at=at(1.5), **kw).allowed
    assert evaluate(events, at=at(2), **kw).event_index == 2


def test_events_are_ordered_by_effective_time_not_ledger_position() -> None:
    # The withdrawal was recorded first but takes effect after the grant.
    events = indexed(ev(ALICE, "withdraw", day=5), ev(ALICE, "grant", day=1))
    kw = dict(subject=ALICE, purpose="purchase_propensity", category="user.behavior.purchase_history")
    assert evaluate(events, at=at(3), **kw).allowed
    assert not evaluate(events, at=at(6), **kw).allowed


def test_only_events_below_the_tree_size_read_count() -> None:
    events = indexed(ev(ALICE, "grant", day=0), ev(ALICE, "withdraw", day=1))
    kw = dict(subject=ALICE, purpose="purchase_propensity", category="user.behavior.purchase_history", at=at(2))
    assert not evaluate(events, **kw).allowed
    assert evaluate(events, tree_size=1, **kw).allowed


# --- opt-out (legitimate interest, contract) -----------------------------------------------------


CHURN = dict(purpose="churn_prediction", category="user.behavior.service_subscription")


def test_legitimate_interest_covers_without_any_record() -> None:
    d = evaluate([], subject=ALICE, at=at(1), **CHURN)
    assert d.allowed and d.rule == Rule.OPT_OUT_NO_OBJECTION


def test_objection_under_legitimate_interest_denies_and_names_the_event() -> None:
    events = indexed(ev(BOB, "withdraw", basis="legitimate_interest", **CHURN), ev(ALICE, "withdraw", day=2, basis="legitimate_interest", **CHURN))
    assert evaluate(events, subject=ALICE, at=at(1), **CHURN).allowed
    d = evaluate(events, subject=ALICE, at=at(2), **CHURN)
    assert not d.allowed and d.rule == Rule.OPT_OUT_WITHDRAWN and d.event_index == 1


def test_withdrawal_of_a_parent_category_counts_as_objection_to_the_child() -> None:
    events = indexed(ev(ALICE, "withdraw", purpose="churn_prediction", category="user", basis="legitimate_interest"))
    assert not evaluate(events, subject=ALICE, at=at(1), purpose="churn_prediction", category="user.financial.billing").allowed


def test_withdrawal_of_a_child_does_not_withdraw_a_column_of_the_parent_category() -> None:
    events = indexed(ev(ALICE, "withdraw", purpose="churn_prediction", category="user.financial.billing", basis="legitimate_interest"))
    kw = dict(subject=ALICE, at=at(1), purpose="churn_prediction")
    assert evaluate(events, category="user.financial", **kw).allowed
    assert not evaluate(events, category="user.financial.billing", **kw).allowed


def test_regrant_after_objection_restores_opt_out_coverage_until_it_expires() -> None:
    events = indexed(
        ev(ALICE, "withdraw", day=1, basis="legitimate_interest", **CHURN),
        ev(ALICE, "grant", day=3, expires_day=6, basis="legitimate_interest", **CHURN),
    )
    assert evaluate(events, subject=ALICE, at=at(4), **CHURN).rule == Rule.OPT_OUT_REGRANTED
    assert not evaluate(events, subject=ALICE, at=at(7), **CHURN).allowed


def test_any_withdrawal_is_honoured_whatever_basis_it_cites() -> None:
    events = indexed(ev(ALICE, "withdraw", basis="consent", **CHURN))
    assert not evaluate(events, subject=ALICE, at=at(1), **CHURN).allowed


def test_contract_basis_is_opt_out(tmp_path) -> None:
    from fedcrm.consent.taxonomy import load_vocabulary

    extra = tmp_path / "site.yaml"
    extra.write_text(
        "purposes:\n- key: billing_support\n  name: B\n  legal_basis: contract\n  retention_days: 30\n"
        "  data_categories: [user.financial.billing]\n",
        encoding="utf-8",
    )
    vocab = load_vocabulary(extra)
    kw = dict(subject=ALICE, purpose="billing_support", category="user.financial.billing", vocabulary=vocab)
    assert evaluate([], at=at(1), **kw).allowed
    events = indexed(ev(ALICE, "withdraw", purpose="billing_support", category="user.financial", basis="contract"))
    assert not evaluate(events, at=at(1), **kw).allowed


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="tz-aware"):
        evaluate([], subject=ALICE, at=datetime(2024, 1, 1), **CHURN)


# --- many subjects at once agree with one at a time ----------------------------------------------


def test_evaluate_subjects_requires_every_category_and_explains() -> None:
    events = indexed(
        ev(ALICE, "withdraw", purpose="churn_prediction", category="user.financial.billing", basis="legitimate_interest"),
    )
    cov = evaluate_subjects(
        events,
        subjects=[ALICE, BOB],
        purpose="churn_prediction",
        categories=["user.behavior.service_subscription", "user.financial.billing"],
        at=at(1),
    )
    assert cov.covered == {BOB}
    d = cov.decision(ALICE)
    assert not d.allowed and d.category == "user.financial.billing" and d.event_index == 0


def test_evaluate_subjects_refuses_a_category_outside_the_purpose() -> None:
    with pytest.raises(PurposeNotAllowed, match="user.demographic.gender"):
        evaluate_subjects([], subjects=[ALICE], purpose="churn_prediction", categories=["user.demographic.gender"], at=at(1))


SUBJECTS = [pseudo(f"s{i}") for i in range(4)]
_event = st.builds(
    lambda s, action, purpose, category, basis, day, exp: ev(
        s, action, purpose=purpose, category=category, basis=basis, day=day, expires_day=None if exp is None else day + exp
    ),
    st.sampled_from(SUBJECTS),
    st.sampled_from(["grant", "withdraw"]),
    st.sampled_from(["purchase_propensity", "churn_prediction"]),
    st.sampled_from(["user", "user.behavior", "user.behavior.purchase_history", "user.behavior.service_subscription", "user.financial"]),
    st.sampled_from(["consent", "legitimate_interest", "contract"]),
    st.integers(0, 6),
    st.one_of(st.none(), st.integers(0, 4)),
)


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(_event, max_size=14),
    purpose=st.sampled_from(["purchase_propensity", "churn_prediction"]),
    day=st.integers(0, 8),
    size=st.one_of(st.none(), st.integers(0, 14)),
)
def test_vectorised_coverage_matches_single_subject_evaluation(events, purpose, day, size) -> None:
    category = "user.behavior.purchase_history" if purpose == "purchase_propensity" else "user.behavior.service_subscription"
    pairs = indexed(*events)
    cov = evaluate_subjects(pairs, subjects=SUBJECTS, purpose=purpose, categories=[category], at=at(day), tree_size=size)
    one_by_one = {
        s for s in SUBJECTS if evaluate(pairs, subject=s, purpose=purpose, category=category, at=at(day), tree_size=size).allowed
    }
    assert cov.covered == one_by_one
