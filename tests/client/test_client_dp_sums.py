"""Gaussian noise on released sums (statistics round, segment profiles): really applied, calibrated, accounted,
refused over budget before any data is read, and what leaves carries no exact per-partner statistic."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path

import dp_accounting
import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict
from scipy.optimize import brentq
from scipy.stats import norm

from fedcrm.client.config import load_partner_config
from fedcrm.client.dp_sums import PROFILES, STATISTICS, GaussianRelease, noise_multiplier_for
from fedcrm.client.federated.profiles import profile_sums
from fedcrm.client.flower_app import PartnerClient
from fedcrm.client.ingest import load_customers
from fedcrm.client.partner_session import PartnerSession, RoundOrder
from fedcrm.client.stats import local_statistics
from fedcrm.consent import budget
from fedcrm.consent.ledger import Ledger
from fedcrm.errors import DpBoundsMissing, PrivacyBudgetExceeded
from fedcrm.protocol import ROWS_KEY, StatisticsOrder, StatisticsReply, TaskSchema, load_task_schema, stat_key
from tests.federation import TELCO_TASK, add_dp_required_purpose, approve_task, copy_partners, forbid_customer_data, fresh_partner, spend_earlier

#: Public domain bounds of the Telco task's numeric features (what a task author would declare).
BOUNDS = {"tenure_months": (0, 72), "monthly_charges": (0, 150), "total_charges": (0, 9000)}


def bounded_task_file(directory: Path, source: Path = TELCO_TASK) -> Path:
    """A Telco task (churn by default) with public clipping bounds on its numeric features."""
    text = source.read_text()
    for name, (low, high) in BOUNDS.items():
        old = f"- name: {name}\n  type: numeric\n"
        assert old in text
        text = text.replace(old, f"{old}  bounds: [{low}, {high}]\n")
    path = directory / f"{source.stem}_bounded.yaml"
    path.write_text(text)
    return path


def analytic_epsilon(noise_multiplier: float, delta: float) -> float:
    """ε of one Gaussian release with sensitivity 1 (Balle & Wang 2018, Thm. 8), solved with scipy only."""
    def gap(eps: float) -> float:
        a, b = 1 / (2 * noise_multiplier), eps * noise_multiplier
        return norm.cdf(a - b) - math.exp(eps) * norm.cdf(-a - b) - delta
    return float(brentq(gap, 1e-9, 50.0, xtol=1e-12))


@pytest.fixture(scope="module")
def partner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("dpsums")
    task = bounded_task_file(tmp)
    (config,) = copy_partners(tmp, names=("B",), egress="full")
    approve_task(config, task)
    return config.parent


@pytest.fixture
def partner(partner_dir: Path, tmp_path: Path) -> Path:
    """A fresh copy of the initialised partner (its own ledger, its own egress journal) per test."""
    return fresh_partner(partner_dir, tmp_path)


@pytest.fixture(scope="module")
def task(partner_dir: Path) -> TaskSchema:
    return load_task_schema(partner_dir.parent / "telco_churn_bounded.yaml")


def _release(z: float = 2.0, config=None) -> GaussianRelease:  # noqa: ANN001
    return GaussianRelease(config=config, mechanism=STATISTICS, purpose="churn_prediction", run_id="r",  # type: ignore[arg-type]
                           server_round=0, epsilon=1.0, delta=1e-5, noise_multiplier=z)


def _round(task: TaskSchema, run_id: str = "r1") -> RoundOrder:
    return RoundOrder(run_id=run_id, server_round=0, stage="stats", at=datetime.now(UTC), schema_hash=task.sha256(),
                      purpose=task.purpose)


def _spends(config: Path) -> list:
    with Ledger.open(load_partner_config(config).ledger_url) as ledger:
        return [e for _, e in budget.spends(ledger)]


def _exact_clipped(config: Path, task: TaskSchema) -> dict[str, float]:
    """The partner's exact statistics of clipped values, computed without the framework's DP code."""
    session = PartnerSession(config)
    train = session.split(load_customers(session.config), validation=False)
    for name, (low, high) in BOUNDS.items():
        if name in train.columns:
            train[name] = train[name].clip(low, high)
    return local_statistics(train, task, min_count=session.config.privacy.min_count, partner=session.name)


def test_the_noise_has_the_calibrated_standard_deviation_per_cell() -> None:
    values = {"count": 100.0, "sum": 3000.0, "sumsq": 120000.0}
    sensitivity = {"count": 1.0, "sum": 72.0, "sumsq": 72.0 * 72.0}
    release = _release(z=2.0)
    a = release.noise(values, sensitivity, units=3, rng=np.random.default_rng(1))
    b = release.noise(values, sensitivity, units=3, rng=np.random.default_rng(1))
    assert a == b and all(a[k] != values[k] for k in values)  # seeded: reproducible; and noised
    draws = pd.DataFrame([release.noise(values, sensitivity, units=3, rng=np.random.default_rng(s))
                          for s in range(4000)])
    for cell, delta in sensitivity.items():
        expected = 2.0 * math.sqrt(3) * delta
        assert draws[cell].std() == pytest.approx(expected, rel=0.05)
        assert draws[cell].mean() == pytest.approx(values[cell], abs=4 * expected / math.sqrt(4000))


def test_the_noise_multiplier_is_the_analytic_gaussian_one() -> None:
    z = noise_multiplier_for(0.5, 1e-5)
    assert analytic_epsilon(z, 1e-5) == pytest.approx(0.5, rel=1e-4)
    assert noise_multiplier_for(1.0, 1e-5) < z < noise_multiplier_for(0.25, 1e-5)


def test_noised_statistics_differ_are_clipped_and_their_epsilon_matches_an_independent_computation(
        partner: Path, task: TaskSchema) -> None:
    session = PartnerSession(partner)
    exact = _exact_clipped(partner, task)
    plain = session.statistics(task, _round(task, "plain")).cells  # no DP asked, purpose allows: exact, unclipped
    assert _spends(partner) == []
    noised = session.statistics(task, _round(task, "private"), dp_noise=True).cells
    assert set(noised) <= set(exact) and ROWS_KEY in noised
    assert all(noised[c] != exact[c] and noised[c] != plain.get(c) for c in noised)
    (spend,) = _spends(partner)
    config = load_partner_config(partner)
    assert (spend.mechanism, spend.run_id, spend.server_round, spend.purpose) == (
        STATISTICS, "private", 0, "churn_prediction")
    (release,) = spend.accountant_state["releases"]
    z = release["noise_multiplier"]
    held = [n for n in task.numeric_features if n in config.feature_columns()]
    assert release["units"] == 1 + 3 * len(held)
    assert spend.accountant_state["bounds"] == {n: list(BOUNDS[n]) for n in held}
    assert spend.delta == 1e-5 and spend.epsilon == spend.epsilon_spent
    assert spend.epsilon == pytest.approx(config.privacy.statistics_epsilon, rel=1e-6)
    assert spend.epsilon == pytest.approx(analytic_epsilon(z, spend.delta), rel=1e-4)  # scipy, not dp-accounting
    pld = dp_accounting.pld.PLDAccountant()
    pld.compose(dp_accounting.GaussianDpEvent(z))
    assert pld.get_epsilon(spend.delta) == pytest.approx(spend.epsilon, rel=0.02)  # a second accountant agrees
    # the noise is as large as the calibration says (the count's Δ is 1): within 6 standard deviations
    std = z * math.sqrt(release["units"])
    assert abs(noised[ROWS_KEY] - exact[ROWS_KEY]) < 6 * std
    with Ledger.open(config.ledger_url) as ledger:
        assert ledger.verify().ok
        status = budget.budget_status(ledger, "churn_prediction", datetime.now(UTC))
    assert status.spent == pytest.approx(spend.epsilon)


def test_an_over_budget_statistics_release_is_refused_before_any_data_is_read(
        partner: Path, task: TaskSchema, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_partner_config(partner)
    size = spend_earlier(partner, 9.8)
    forbid_customer_data(monkeypatch)
    client = PartnerClient(Context(run_id=1, node_id=1, node_config={"partner-config": str(partner)},
                                   state=RecordDict(), run_config={}))
    order = StatisticsOrder(run_id="greedy", server_round=0, task_schema=task, task_schema_sha256=task.sha256(),
                            dp_noise=True)
    with pytest.raises(PrivacyBudgetExceeded, match=r"partner B.*noised stats release.*ε = 0\.5 .*churn_prediction"
                                                    r".*remaining budget ε = 0\.2"):
        client.get_properties(dict(order.to_config()))
    with Ledger.open(config.ledger_url) as led:
        new = [s.event for s in led.events(size)]
    assert [e.kind for e in new] == ["order_refusal"]
    assert (new[0].reason, new[0].stage, new[0].job_id) == ("privacy_budget", "stats", "greedy")
    assert not (partner.parent / "work" / "egress" / "journal.jsonl").exists(), "nothing was sent"


def test_a_noised_release_without_public_bounds_fails_naming_the_features(partner: Path, task: TaskSchema) -> None:
    unbounded = load_task_schema(TELCO_TASK)
    order = RoundOrder(run_id="r", server_round=0, stage="stats", at=datetime.now(UTC),
                       schema_hash=unbounded.sha256(), purpose=unbounded.purpose)
    with pytest.raises(DpBoundsMissing, match=r"tenure_months.*bounds: \[low, high\]"):
        PartnerSession(partner).statistics(unbounded, order, dp_noise=True)
    assert _spends(partner) == [], "nothing is spent on a release that did not happen"


def test_a_purpose_that_requires_dp_noises_the_statistics_unasked(partner: Path, tmp_path: Path) -> None:
    add_dp_required_purpose(partner)
    task_file = tmp_path / "task.yaml"
    task_file.write_text(bounded_task_file(tmp_path).read_text().replace("purpose: churn_prediction",
                                                                        "purpose: churn_private"))
    task = load_task_schema(task_file)
    approve_task(partner, task_file)
    client = PartnerClient(Context(run_id=1, node_id=1, node_config={"partner-config": str(partner)},
                                   state=RecordDict(), run_config={}))
    order = StatisticsOrder(run_id="unasked", server_round=0, task_schema=task, task_schema_sha256=task.sha256())
    assert order.dp_noise is False
    reply = StatisticsReply.from_config(client.get_properties(dict(order.to_config())))
    exact = _exact_clipped(partner, task)
    assert all(reply.cells[c] != exact[c] for c in reply.cells)
    (spend,) = _spends(partner)
    assert (spend.mechanism, spend.purpose) == (STATISTICS, "churn_private")


def test_what_leaves_with_dp_on_carries_no_exact_statistic_of_the_partner(partner: Path, task: TaskSchema) -> None:
    """Wire capture of the statistics reply in the clear (a plain run): only noised cells, never an exact one."""
    client = PartnerClient(Context(run_id=1, node_id=1, node_config={"partner-config": str(partner)},
                                   state=RecordDict(), run_config={}))
    order = StatisticsOrder(run_id="wire", server_round=0, task_schema=task, task_schema_sha256=task.sha256(),
                            dp_noise=True)
    reply = StatisticsReply.from_config(client.get_properties(dict(order.to_config())))
    assert reply.dp_epsilon == 0.5
    exact = _exact_clipped(partner, task)
    session = PartnerSession(partner)
    unclipped = local_statistics(session.split(load_customers(session.config), validation=False), task,
                                 min_count=session.config.privacy.min_count, partner=session.name)
    sent = str(dict(order.to_config())) + str(reply.model_dump())
    # Every number on the wire, as a whole token: a noised count such as 1070.357 is not the exact 1070 (a
    # substring test would flag it, and another cell's noised count lands next to the exact one often).
    numbers = {float(t) for t in re.findall(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])", sent)}
    for cells in (exact, unclipped):
        for cell, value in cells.items():
            assert reply.cells.get(cell) != value
            if len(f"{value:g}") >= 4:  # shorter numbers (0, 1, 72) also stand in the task schema itself
                assert float(value) not in numbers, f"{cell} = {value} left"


def test_noised_profiles_cover_every_cell_are_clipped_and_recorded(partner: Path, task: TaskSchema) -> None:
    config = load_partner_config(partner)
    rng = np.random.default_rng(0)
    n = 3000  # every cell far above the minimum count and the noise (std ≈ 20 customers at ε = 0.5)
    frame = pd.DataFrame({"subject": [f"k:{i:04x}" for i in range(n)],
                          "tenure_months": rng.integers(0, 200, n).astype(float),  # beyond the bound of 72
                          "senior_citizen": rng.integers(0, 2, n).astype(float),
                          "contract": rng.choice(["Month-to-month", "One year", "Two year", "??"], n)})
    labels = rng.integers(0, 2, n)
    exact = profile_sums(frame, labels, task, 2, min_count=10, histogram_edges={"tenure_months": (12.0, 24.0)})
    release = GaussianRelease(config=config, mechanism=PROFILES, purpose="customer_segmentation", run_id="seg",
                              server_round=3, epsilon=0.5, delta=1e-5, noise_multiplier=noise_multiplier_for(0.5, 1e-5))
    noised = profile_sums(frame, labels, task, 2, min_count=10, histogram_edges={"tenure_months": (12.0, 24.0)},
                          dp=release, rng=np.random.default_rng(5))
    assert set(noised.cells) == set(exact.cells)  # every cell is well above the minimum here
    assert all(noised.cells[c] != exact.cells[c] for c in exact.cells)
    tenure_sum = noised.cells["profile.0.tenure_months.sum"] / noised.cells["profile.0.tenure_months.count"]
    assert tenure_sum < 72 + 10, "values are clipped to the public bound before summing"
    (spend,) = _spends(partner)
    (r,) = spend.accountant_state["releases"]
    assert (spend.mechanism, spend.server_round, spend.purpose) == (PROFILES, 3, "customer_segmentation")
    assert r["units"] == 1 + 3 + 2 + 1 + 1  # segment, numeric, boolean, categorical, histogram
    assert spend.epsilon == pytest.approx(analytic_epsilon(r["noise_multiplier"], 1e-5), rel=1e-4)
    # a second profile release of the same run adds its ε (basic composition)
    profile_sums(frame, labels, task, 2, min_count=10, dp=release)
    spends = _spends(partner)
    assert spends[-1].epsilon == pytest.approx(2 * spends[0].epsilon) and spends[-1].epsilon_spent == pytest.approx(
        spends[0].epsilon)


def test_the_preflight_counts_the_noised_statistics_round_with_dp_sgd(partner: Path, partner_dir: Path) -> None:
    from fedcrm.client.check import check_partner

    config = load_partner_config(partner)
    with Ledger.open(config.ledger_url, signing_key_path=config.ledger_key_path) as led:
        budget.record_spend(led, purpose="churn_prediction", run_id="earlier", server_round=1, epsilon=6.8,
                            delta=1e-5, mechanism="dp-sgd", accountant_state={}, at=datetime.now(UTC))
    task_file = partner_dir.parent / "telco_churn_bounded.yaml"
    alone = check_partner(partner, task_file, dp_mode="record", planned_epsilon=3.0)
    assert not [f for f in alone.errors if f.kind == "privacy"], "3 fits in the 3.2 left"
    both = check_partner(partner, task_file, dp_mode="record", planned_epsilon=3.0, dp_statistics=True)
    (error,) = [f for f in both.errors if f.kind == "privacy"]
    assert "partner B: the run's planned spend of ε = 3.5 (DP-SGD 3 + noised statistics round 0.5)" in error.message
    assert "remaining budget ε = 3.2" in error.message
    # the coordinator's preflight passes [run.dp] statistics on to the partner's check (a subprocess, as in a run)
    from fedcrm.coordinator.check import check_partners, preflight_message
    from fedcrm.coordinator.run_config import DpConfig

    (result,) = check_partners(task_file, [(None, partner)],
                               dp=DpConfig(mode="record", target_epsilon=3.0, statistics=True))
    assert not result.ok and "ε = 3.5 (DP-SGD 3 + noised statistics round 0.5)" in preflight_message([result])
    unbounded = check_partner(partner, TELCO_TASK, dp_mode="record", planned_epsilon=1.0, dp_statistics=True)
    (error,) = [f for f in unbounded.errors if f.kind == "privacy"]
    assert "public clipping bounds" in error.message and "tenure_months" in error.message


def test_statistics_without_dp_are_unchanged_exact(partner: Path, task: TaskSchema) -> None:
    cells = PartnerSession(partner).statistics(task, _round(task)).cells
    session = PartnerSession(partner)
    train = session.split(load_customers(session.config), validation=False)
    assert cells[stat_key("tenure_months", "sum")] == float(train["tenure_months"].dropna().sum())
    assert _spends(partner) == []


def test_shifting_by_the_bounds_centre_is_exact_post_processing(task: TaskSchema) -> None:
    """Without noise the DP path returns exactly the clipped sums in the feature's units (no bias from the shift)."""
    class Unrecorded(GaussianRelease):
        def record(self, **_: object) -> None:  # type: ignore[override]
            return None

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"subject": [f"k:{i:04x}" for i in range(500)],
                          "tenure_months": rng.uniform(-10, 90, 500), "monthly_charges": rng.uniform(0, 150, 500)})
    silent = Unrecorded(config=None, mechanism=STATISTICS, purpose="churn_prediction", run_id="r",  # type: ignore[arg-type]
                        server_round=0, epsilon=1.0, delta=1e-5, noise_multiplier=0.0)
    cells = local_statistics(frame, task, min_count=10, partner="A", dp=silent)
    clipped = frame.assign(tenure_months=frame["tenure_months"].clip(0, 72))
    exact = local_statistics(clipped, task, min_count=10, partner="A")
    assert set(cells) == set(exact)
    for cell, value in exact.items():
        assert cells[cell] == pytest.approx(value, rel=1e-12, abs=1e-6)
