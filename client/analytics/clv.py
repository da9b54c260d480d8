"""Customer lifetime value: BG/NBD purchase model and Gamma-Gamma spend model.

Hand-written on scipy on purpose. The well-kept options were tried on this stack
(Python 3.11, pandas 3; see shared/notes/libraries.md): ``lifetimes`` 0.11.3 is
unmaintained since 2020 and its data helpers break on pandas 3 and without
``pkg_resources``; ``btyd`` does not import on 3.11; ``pymc-marketing`` is frozen at
0.19.2 on 3.11 and weighs 789 MB for what is, here, a four-parameter maximum-likelihood
fit. The models below are short closed forms from the papers, and the tests check them
against the published CDNOW fit and a Monte-Carlo simulation.

References
----------
- P. S. Fader, B. G. S. Hardie, K. L. Lee (2005), "'Counting Your Customers' the Easy
  Way: An Alternative to the Pareto/NBD Model", Marketing Science 24(2):275-284 (BG/NBD).
- P. S. Fader, B. G. S. Hardie, K. L. Lee (2005), "RFM and CLV: Using Iso-Value Curves
  for Customer Base Analysis", Journal of Marketing Research 42(4):415-430 (Gamma-Gamma).
- P. S. Fader, B. G. S. Hardie (2013), "The Gamma-Gamma Model of Monetary Value", note.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, hyp2f1

from fedcrm.errors import ModelFitError

FloatArray = NDArray[np.float64]


class BGNBDFit(BaseModel):
    """Fitted BG/NBD parameters: purchase rate λ ~ Gamma(r, α), dropout p ~ Beta(a, b)."""

    model_config = ConfigDict(frozen=True)

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    customers: int
    time_unit: str = "D"
    iterations: int = 0


class GammaGammaFit(BaseModel):
    """Fitted Gamma-Gamma spend parameters: spend ~ Gamma(p, ν), ν ~ Gamma(q, v)."""

    model_config = ConfigDict(frozen=True)

    p: float
    q: float
    v: float
    log_likelihood: float
    customers: int

    @property
    def population_mean_spend(self) -> float:
        """E[spend per transaction] over the population, p·v/(q−1) (infinite when q ≤ 1)."""
        return self.p * self.v / (self.q - 1.0) if self.q > 1.0 else float("inf")


# --- BG/NBD ----------------------------------------------------------------------------


def bgnbd_log_likelihood(
    r: float, alpha: float, a: float, b: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> FloatArray:
    """Per-customer BG/NBD log-likelihood (Fader, Hardie & Lee 2005, eq. 6).

    ``x`` repeat purchases, the last at ``t_x``, observed for ``T`` (same time unit as α).
    For x = 0 the second term of the likelihood is absent: a customer with no repeat
    purchase cannot have dropped out after one.
    """
    x, t_x, T = _arrays(x, t_x, T)
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    has = x > 0
    # b + x − 1 is only meaningful for x > 0; b − 1 may be negative, so mask before the log.
    safe = np.where(has, b + x - 1.0, 1.0)
    a4 = np.where(has, np.log(a) - np.log(safe) - (r + x) * np.log(alpha + t_x), -np.inf)
    return a1 + a2 + np.logaddexp(a3, a4)


def fit_bgnbd(
    frequency: ArrayLike,
    recency: ArrayLike,
    T: ArrayLike,
    *,
    time_unit: str = "D",
    initial: tuple[float, float, float, float] | None = None,
) -> BGNBDFit:
    """Maximum-likelihood BG/NBD fit over customers' (x, t_x, T).

    Optimises log-parameters (keeps them positive without bounds) with Nelder-Mead,
    which needs no gradient and is robust on this smooth four-parameter surface;
    identical (x, t_x, T) rows are merged with weights so large exports fit fast.
    """
    x, t_x, TT = _arrays(frequency, recency, T)
    _check_rfm(x, t_x, TT)
    keys, weights = np.unique(np.column_stack([x, t_x, TT]), axis=0, return_counts=True)
    ux, ut, uT = keys[:, 0], keys[:, 1], keys[:, 2]
    n = float(weights.sum())

    def nll(theta: FloatArray) -> float:
        r, alpha, a, b = np.exp(theta)
        ll = bgnbd_log_likelihood(r, alpha, a, b, ux, ut, uT)
        value = -float(np.dot(weights, ll)) / n
        return value if np.isfinite(value) else 1e100

    start = np.log(initial) if initial else np.log([1.0, max(float(np.mean(TT)), 1e-3) / 4, 1.0, 1.0])
    res = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000, "maxfev": 40000})
    if not res.success or not np.all(np.isfinite(res.x)):
        raise ModelFitError(f"BG/NBD fit did not converge on {int(n)} customers: {res.message}")
    r, alpha, a, b = (float(v) for v in np.exp(res.x))
    return BGNBDFit(
        r=r, alpha=alpha, a=a, b=b, log_likelihood=-float(res.fun) * n, customers=int(n),
        time_unit=time_unit, iterations=int(res.nit),
    )


def bgnbd_p_alive(fit: BGNBDFit, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray:
    """P(customer still active at T | x, t_x, T) (Fader, Hardie & Lee 2005, eq. 11)."""
    x, t_x, T = _arrays(x, t_x, T)
    return 1.0 / (1.0 + _death_odds(fit, x, t_x, T))


def bgnbd_probability_of_purchase(fit: BGNBDFit, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray:
    """P(at least one purchase in the next ``t`` | x, t_x, T).

    An active customer's rate has the posterior Gamma(r + x, α + T), and dropout can only
    follow a purchase, so the chance is P(alive) · (1 − ((α+T)/(α+T+t))^(r+x)). Unlike
    P(alive) alone, this is low for a customer who bought once long ago (BG/NBD keeps
    such customers "alive" with a small rate).
    """
    x, t_x, T = _arrays(x, t_x, T)
    no_purchase_if_alive = np.exp((fit.r + x) * (np.log(fit.alpha + T) - np.log(fit.alpha + T + t)))
    return bgnbd_p_alive(fit, x, t_x, T) * (1.0 - no_purchase_if_alive)


def bgnbd_expected_purchases(fit: BGNBDFit, t: float) -> float:
    """E[X(t)]: expected repeat purchases of a new customer in (0, t] (eq. 7)."""
    return float(_conditional_numerator(fit, t, np.zeros(1), np.zeros(1))[0])


def bgnbd_conditional_expected_purchases(
    fit: BGNBDFit, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> FloatArray:
    """E[Y(t) | x, t_x, T]: expected purchases in the next ``t`` time units (eq. 10)."""
    x, t_x, T = _arrays(x, t_x, T)
    if t < 0:
        raise ValueError(f"t must be ≥ 0, got {t}")
    return _conditional_numerator(fit, t, x, T) / (1.0 + _death_odds(fit, x, t_x, T))


def _conditional_numerator(fit: BGNBDFit, t: float, x: FloatArray, T: FloatArray) -> FloatArray:
    """(a+b+x−1)/(a−1) · [1 − ((α+T)/(α+T+t))^(r+x) · ₂F₁(r+x, b+x; a+b+x−1; z)].

    Evaluated through Euler's transformation ₂F₁(A,B;C;z) = (1−z)^(C−A−B) ₂F₁(C−A,C−B;C;z):
    the bracket becomes 1 − (1−z)^(a−1) ₂F₁(a+b−1−r, a−1; a+b+x−1; z), whose first two
    arguments no longer grow with x. The direct form overflows for heavy buyers (large x,
    z near 1) where the transformed series stays well-behaved.
    """
    r, alpha, a, b = fit.r, fit.alpha, fit.a, fit.b
    z = t / (alpha + T + t)
    c = a + b + x - 1.0
    bracket = 1.0 - (1.0 - z) ** (a - 1.0) * hyp2f1(a + b - 1.0 - r, a - 1.0, c, z)
    return c / (a - 1.0) * bracket


def _death_odds(fit: BGNBDFit, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:
    """δ(x>0) · a/(b+x−1) · ((α+T)/(α+t_x))^(r+x): odds that the customer has dropped out."""
    has = x > 0
    safe = np.where(has, fit.b + x - 1.0, 1.0)
    log_ratio = (fit.r + x) * (np.log(fit.alpha + T) - np.log(fit.alpha + t_x))
    return np.where(has, fit.a / safe * np.exp(np.minimum(log_ratio, 700.0)), 0.0)


# --- Gamma-Gamma -----------------------------------------------------------------------


def gamma_gamma_log_likelihood(p: float, q: float, v: float, x: ArrayLike, m: ArrayLike) -> FloatArray:
    """Per-customer Gamma-Gamma log-likelihood of the mean spend ``m`` over ``x`` transactions.

    The density of the mean of x Gamma(p, ν) spends with ν ~ Gamma(q, v) (Fader & Hardie 2013).
    """
    x, m = np.asarray(x, float), np.asarray(m, float)
    px = p * x
    return (
        gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v)
        + (px - 1.0) * np.log(m) + px * np.log(x) - (px + q) * np.log(x * m + v)
    )


def fit_gamma_gamma(frequency: ArrayLike, monetary_value: ArrayLike) -> GammaGammaFit:
    """Fit the Gamma-Gamma model on customers with a repeat purchase and positive mean spend.

    Customers with frequency 0 carry no spend information beyond their first purchase,
    which the convention leaves out; non-positive means (returns) have no Gamma density.
    """
    x = np.asarray(frequency, float)
    m = np.asarray(monetary_value, float)
    keep = (x > 0) & (m > 0) & np.isfinite(m)
    x, m = x[keep], m[keep]
    if len(x) < 3:
        raise ModelFitError(f"Gamma-Gamma needs customers with repeat purchases; {len(x)} have one")

    def nll(theta: FloatArray) -> float:
        p, q, v = np.exp(theta)
        value = -float(np.mean(gamma_gamma_log_likelihood(p, q, v, x, m)))
        return value if np.isfinite(value) else 1e100

    start = np.log([1.0, 2.0, float(np.mean(m))])
    res = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000, "maxfev": 40000})
    if not res.success or not np.all(np.isfinite(res.x)):
        raise ModelFitError(f"Gamma-Gamma fit did not converge on {len(x)} customers: {res.message}")
    p, q, v = (float(val) for val in np.exp(res.x))
    return GammaGammaFit(p=p, q=q, v=v, log_likelihood=-float(res.fun) * len(x), customers=len(x))


def gamma_gamma_expected_spend(fit: GammaGammaFit, frequency: ArrayLike, monetary_value: ArrayLike) -> FloatArray:
    """E[spend per transaction | x, m_x] = p(v + x·m_x)/(p·x + q − 1) (Fader, Hardie & Lee 2005).

    A weighted average of the population mean and the customer's own mean; customers with
    x = 0 get the population mean.
    """
    x = np.asarray(frequency, float)
    m = np.where(x > 0, np.asarray(monetary_value, float), 0.0)
    return fit.p * (fit.v + x * m) / (fit.p * x + fit.q - 1.0)


# --- CLV -------------------------------------------------------------------------------


def customer_lifetime_value(
    bgnbd: BGNBDFit,
    gamma_gamma: GammaGammaFit,
    frequency: ArrayLike,
    recency: ArrayLike,
    T: ArrayLike,
    monetary_value: ArrayLike,
    *,
    months: int = 12,
    monthly_discount_rate: float = 0.01,
    days_per_month: float = 30.0,
) -> FloatArray:
    """Discounted expected spend over the next ``months`` months, per customer.

    The formula ``lifetimes`` uses: Σ_{i=1..months} spend · (E[Y(i)] − E[Y(i−1)]) /
    (1 + d)^i, with E[Y] the BG/NBD conditional expectation over i months and spend the
    Gamma-Gamma conditional mean. ``days_per_month`` 30 matches lifetimes in days.
    """
    if months < 1:
        raise ValueError(f"months must be at least 1, got {months}")
    if monthly_discount_rate <= -1:
        raise ValueError(f"monthly_discount_rate must be > −1, got {monthly_discount_rate}")
    x, t_x, TT = _arrays(frequency, recency, T)
    spend = gamma_gamma_expected_spend(gamma_gamma, x, monetary_value)
    step = days_per_month / {"D": 1.0, "W": 7.0}.get(bgnbd.time_unit, 1.0)
    total = np.zeros_like(x)
    previous = np.zeros_like(x)
    for i in range(1, months + 1):
        cumulative = bgnbd_conditional_expected_purchases(bgnbd, i * step, x, t_x, TT)
        total += spend * (cumulative - previous) / (1.0 + monthly_discount_rate) ** i
        previous = cumulative
    return total


def holdout_comparison(
    fit: BGNBDFit,
    calibration: pd.DataFrame,
    actual: pd.Series,
    holdout_length: float,
    *,
    max_bucket: int = 7,
) -> pd.DataFrame:
    """Predicted vs actual holdout purchases by calibration frequency bucket 0..max_bucket+.

    ``calibration`` has ``frequency``, ``recency`` and ``T``; ``actual`` holds holdout
    purchase counts for the same index; ``holdout_length`` is in the fit's time unit.
    Returns one row per bucket: customers, actual and predicted totals and means.
    """
    joined = calibration[["frequency", "recency", "T"]].join(actual.rename("actual"), how="inner")
    joined["predicted"] = bgnbd_conditional_expected_purchases(
        fit, holdout_length, joined["frequency"], joined["recency"], joined["T"]
    )
    bucket = joined["frequency"].clip(upper=max_bucket).astype(int)
    table = joined.groupby(bucket).agg(
        customers=("actual", "size"), actual=("actual", "sum"), predicted=("predicted", "sum")
    )
    table.index.name = "frequency_bucket"
    table["actual_mean"] = table["actual"] / table["customers"]
    table["predicted_mean"] = table["predicted"] / table["customers"]
    return table


def _arrays(*values: ArrayLike) -> tuple[FloatArray, ...]:
    arrays = tuple(np.asarray(v, dtype=float) for v in values)
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    return tuple(np.broadcast_to(a, shape) for a in arrays)


def _check_rfm(x: FloatArray, t_x: FloatArray, T: FloatArray) -> None:
    if x.size == 0:
        raise ModelFitError("BG/NBD needs at least one customer")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(t_x)) and np.all(np.isfinite(T))):
        raise ModelFitError("BG/NBD input has missing or infinite values")
    if np.any(x < 0) or np.any(t_x < 0) or np.any(t_x > T + 1e-9):
        raise ModelFitError("BG/NBD input must satisfy frequency ≥ 0 and 0 ≤ recency ≤ T")
