"""BG/NBD and Gamma-Gamma against the published CDNOW fits, closed forms and a simulation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate

from fedcrm.client.analytics.clv import (
    BGNBDFit,
    bgnbd_conditional_expected_purchases,
    bgnbd_expected_purchases,
    bgnbd_log_likelihood,
    bgnbd_p_alive,
    bgnbd_probability_of_purchase,
    customer_lifetime_value,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_expected_spend,
    holdout_comparison,
)
from fedcrm.client.transactions import holdout_summary, summarise_transactions
from fedcrm.errors import ModelFitError

DATA = Path(__file__).resolve().parents[2] / "datasets"
CAL_END, HOLD_END = "1997-09-30", "1998-06-30"

# Fader, Hardie & Lee (2005), Table/figure values for the 2,357-customer sample, weeks.
PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
# Maximum-likelihood fit on the full master file in days (datasets/README.md).
MASTER = {"r": 0.2516, "alpha": 33.52, "a": 0.7234, "b": 2.1611}
# Fader & Hardie (2013), "The Gamma-Gamma Model of Monetary Value", CDNOW sample.
PUBLISHED_GG = {"p": 6.25, "q": 3.74, "v": 15.44}


def read_sample() -> pd.DataFrame:
    names = ["master_id", "sample_id", "date", "number_of_cds", "dollar_value"]
    return pd.read_csv(DATA / "cdnow_sample.txt", sep=r"\s+", header=None, names=names, dtype=str).astype(
        {"number_of_cds": int, "dollar_value": float}
    )


def read_master() -> pd.DataFrame:
    return pd.read_csv(DATA / "cdnow_master.txt", sep=r"\s+", dtype={"customer_id": str, "date": str})


@pytest.fixture(scope="module")
def sample_weeks() -> pd.DataFrame:
    return summarise_transactions(
        read_sample(), customer="sample_id", date="date", amount="dollar_value",
        observation_end=CAL_END, time_unit="W",
    )


def test_sample_summary_has_the_papers_customer_counts(sample_weeks: pd.DataFrame) -> None:
    # The paper: 2,357 customers, 1,411 of them with no repeat purchase in the 39 weeks.
    assert len(sample_weeks) == 2357
    assert int((sample_weeks["frequency"] == 0).sum()) == 1411
    assert sample_weeks["T"].max() == pytest.approx(272 / 7)


def test_bgnbd_recovers_published_sample_fit_within_one_percent(sample_weeks: pd.DataFrame) -> None:
    fit = fit_bgnbd(sample_weeks["frequency"], sample_weeks["recency"], sample_weeks["T"], time_unit="W")
    for name, expected in PUBLISHED.items():
        assert getattr(fit, name) == pytest.approx(expected, rel=0.01), name
    # The paper reports LL = −9582.4 at the optimum.
    assert fit.log_likelihood == pytest.approx(-9582.4, abs=0.1)


def test_bgnbd_on_sample_in_days_scales_alpha_only(sample_weeks: pd.DataFrame) -> None:
    fit = fit_bgnbd(sample_weeks["frequency"], sample_weeks["recency"] * 7, sample_weeks["T"] * 7)
    assert fit.alpha == pytest.approx(PUBLISHED["alpha"] * 7, rel=0.01)
    for name in ("r", "a", "b"):
        assert getattr(fit, name) == pytest.approx(PUBLISHED[name], rel=0.01), name


def test_bgnbd_master_file_fit_and_holdout_match_reference() -> None:
    master = read_master()
    cal = summarise_transactions(
        master, customer="customer_id", date="date", amount="dollar_value", observation_end=CAL_END
    )
    fit = fit_bgnbd(cal["frequency"], cal["recency"], cal["T"])
    for name, expected in MASTER.items():
        assert getattr(fit, name) == pytest.approx(expected, rel=0.005), name
    hold = holdout_summary(master, CAL_END, HOLD_END, customer="customer_id", date="date")
    assert len(hold) == 23570
    table = holdout_comparison(fit, cal, hold["holdout_purchase_days"], hold.attrs["holdout_days"])
    assert int(table["actual"].sum()) == 19684
    assert table["predicted"].sum() == pytest.approx(16874, rel=0.002)
    assert list(table.index) == list(range(8))


def test_log_likelihood_without_repeat_purchase_is_the_closed_form() -> None:
    r, alpha, a, b, T = 0.5, 3.0, 0.8, 2.0, np.array([1.0, 10.0, 39.0])
    ll = bgnbd_log_likelihood(r, alpha, a, b, np.zeros(3), np.zeros(3), T)
    np.testing.assert_allclose(ll, r * np.log(alpha) - r * np.log(alpha + T), rtol=1e-12)


def test_log_likelihood_matches_numerical_integration_over_lambda_and_p() -> None:
    r, alpha, a, b = 0.7, 4.0, 0.9, 2.5
    x, t_x, T = 3, 20.0, 35.0

    def lam_moment(s: float) -> float:
        # E[λ^x e^{−λs}] under λ ~ Gamma(r, α), numerically (scipy.special is not used here).
        f = lambda lam: lam**x * np.exp(-lam * s) * lam ** (r - 1) * np.exp(-alpha * lam)
        return integrate.quad(f, 0, np.inf, epsabs=0, epsrel=1e-11)[0] * alpha**r / math.gamma(r)

    alive_part, dropped_part = lam_moment(T), lam_moment(t_x)

    def over_lambda(p: float) -> float:
        # The individual likelihood (eq. 3), already integrated over λ, times the Beta density.
        beta_pdf = p ** (a - 1) * (1 - p) ** (b - 1) * math.gamma(a + b) / (math.gamma(a) * math.gamma(b))
        return ((1 - p) ** x * alive_part + p * (1 - p) ** (x - 1) * dropped_part) * beta_pdf

    value, _ = integrate.quad(over_lambda, 0, 1, epsabs=1e-14, epsrel=1e-9, limit=200)
    assert bgnbd_log_likelihood(r, alpha, a, b, x, t_x, T) == pytest.approx(np.log(value), abs=1e-6)


def _simulate(fit: BGNBDFit, n: int, holdout: float, seed: int) -> pd.DataFrame:
    """Simulate the BG/NBD story: Poisson purchases, dropout with prob. p after each purchase."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(fit.r, 1 / fit.alpha, n)
    p = rng.beta(fit.a, fit.b, n)
    T = rng.uniform(4, 39, n)
    horizon = T + holdout
    now, x, t_x, y = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    died_in_calibration = np.zeros(n, bool)
    active = np.ones(n, bool)
    while active.any():
        idx = np.flatnonzero(active)
        now[idx] += rng.exponential(1 / lam[idx])
        beyond = now[idx] > horizon[idx]
        active[idx[beyond]] = False
        got = idx[~beyond]
        in_cal = now[got] <= T[got]
        x[got[in_cal]] += 1
        t_x[got[in_cal]] = now[got[in_cal]]
        y[got[~in_cal]] += 1
        dies = rng.random(len(got)) < p[got]
        died_in_calibration[got[dies & in_cal]] = True
        active[got[dies]] = False
    return pd.DataFrame({"x": x, "t_x": t_x, "T": T, "y": y, "alive": ~died_in_calibration})


def test_expectations_agree_with_a_monte_carlo_simulation_of_the_process() -> None:
    fit = BGNBDFit(**PUBLISHED, log_likelihood=0.0, customers=0, time_unit="W")
    holdout = 39.0
    sim = _simulate(fit, 60_000, holdout, seed=11)
    sim["pred"] = bgnbd_conditional_expected_purchases(fit, holdout, sim["x"], sim["t_x"], sim["T"])
    sim["p_alive"] = bgnbd_p_alive(fit, sim["x"], sim["t_x"], sim["T"])
    sim["p_buy"] = bgnbd_probability_of_purchase(fit, holdout, sim["x"], sim["t_x"], sim["T"])
    sim["bought"] = sim["y"] > 0
    # E[Y | data] is the conditional mean, so within each x-bucket the residual y − pred has
    # mean zero; its standard error is sd(residual)/√n. Four standard errors make a false
    # failure a ~6e-5 event per check (and the seed is fixed, so the test is deterministic).
    for _, group in sim.groupby(sim["x"].clip(upper=5)):
        for actual, predicted in (("y", "pred"), ("alive", "p_alive"), ("bought", "p_buy")):
            resid = group[actual].astype(float) - group[predicted]
            se = resid.std(ddof=1) / np.sqrt(len(group))
            assert abs(resid.mean()) < 4 * se + 1e-12, (actual, group["x"].iloc[0])
    # Unconditional E[X(t)] against the calibration-period counts of the customers with T ≥ 38.
    late = sim[sim["T"] >= 38]
    expected = np.mean([bgnbd_expected_purchases(fit, t) for t in late["T"]])
    assert abs(late["x"].mean() - expected) < 4 * late["x"].std(ddof=1) / np.sqrt(len(late))


def test_fit_recovers_parameters_of_simulated_customers() -> None:
    truth = BGNBDFit(r=0.8, alpha=5.0, a=0.6, b=3.0, log_likelihood=0.0, customers=0)
    sim = _simulate(truth, 20_000, 0.0, seed=3)
    fit = fit_bgnbd(sim["x"], sim["t_x"], sim["T"])
    # ~20k customers identify r and α to a few percent; a and b less tightly (dropout is
    # only seen through gaps), hence the wider tolerance.
    assert fit.r == pytest.approx(truth.r, rel=0.08)
    assert fit.alpha == pytest.approx(truth.alpha, rel=0.1)
    assert fit.a == pytest.approx(truth.a, rel=0.25)
    assert fit.b == pytest.approx(truth.b, rel=0.3)


def test_p_alive_is_one_without_repeat_purchase_and_falls_with_silence() -> None:
    fit = BGNBDFit(**PUBLISHED, log_likelihood=0.0, customers=0, time_unit="W")
    assert bgnbd_p_alive(fit, 0, 0, 30)[()] == 1.0
    recent, silent = bgnbd_p_alive(fit, [4, 4], [29, 5], [30, 30])
    assert 0 < silent < recent < 1


def test_gamma_gamma_recovers_published_cdnow_fit(sample_weeks: pd.DataFrame) -> None:
    gg = fit_gamma_gamma(sample_weeks["frequency"], sample_weeks["monetary_value"])
    assert gg.customers == 946
    for name, expected in PUBLISHED_GG.items():
        assert getattr(gg, name) == pytest.approx(expected, rel=0.01), name


def test_gamma_gamma_expected_spend_shrinks_towards_population_mean(sample_weeks: pd.DataFrame) -> None:
    gg = fit_gamma_gamma(sample_weeks["frequency"], sample_weeks["monetary_value"])
    pop = gg.population_mean_spend
    assert gamma_gamma_expected_spend(gg, 0, 0.0) == pytest.approx(pop)
    own = np.array([5.0, 200.0])
    few = gamma_gamma_expected_spend(gg, [1, 1], own)
    many = gamma_gamma_expected_spend(gg, [50, 50], own)
    # Between the customer's own mean and the population mean, closer to its own with more data.
    assert own[0] < many[0] < few[0] < pop < few[1] < many[1] < own[1]


def test_gamma_gamma_needs_repeat_buyers() -> None:
    with pytest.raises(ModelFitError, match="repeat purchases"):
        fit_gamma_gamma([0, 0, 1], [0.0, 0.0, 10.0])


def test_clv_without_discount_is_spend_times_expected_purchases(sample_weeks: pd.DataFrame) -> None:
    s = sample_weeks
    bg = fit_bgnbd(s["frequency"], s["recency"], s["T"], time_unit="W")
    gg = fit_gamma_gamma(s["frequency"], s["monetary_value"])
    args = (bg, gg, s["frequency"], s["recency"], s["T"], s["monetary_value"])
    flat = customer_lifetime_value(*args, months=6, monthly_discount_rate=0.0)
    expected = gamma_gamma_expected_spend(gg, s["frequency"], s["monetary_value"]) * (
        bgnbd_conditional_expected_purchases(bg, 6 * 30 / 7, s["frequency"], s["recency"], s["T"])
    )
    np.testing.assert_allclose(flat, expected, rtol=1e-10)
    discounted = customer_lifetime_value(*args, months=6, monthly_discount_rate=0.05)
    longer = customer_lifetime_value(*args, months=12, monthly_discount_rate=0.05)
    assert np.all(discounted < flat) and np.all(longer > discounted)


def test_fit_rejects_recency_beyond_T() -> None:
    with pytest.raises(ModelFitError, match="recency"):
        fit_bgnbd([1, 2], [5.0, 12.0], [10.0, 10.0])
